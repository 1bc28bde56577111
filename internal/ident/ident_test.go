package ident

import (
	"errors"
	"testing"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"topic", "TopicFilter", "influencerRecalcDate", "a_1", "_x"} {
		if err := Validate(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a.b", "a`b", "x y", "t;DROP", "123", "é", "a-b",
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"} { // 65 chars
		if err := Validate(bad); !errors.Is(err, ErrInvalid) {
			t.Errorf("%q accepted (%v)", bad, err)
		}
	}
}

func TestQuote(t *testing.T) {
	t.Parallel()
	if got := Qualified("app", "Topic`Filter"); got != "`app`.`Topic``Filter`" {
		t.Fatalf("got %s", got)
	}
}
