package format

import (
	"testing"
	"unicode/utf8"
)

func TestThousands(t *testing.T) {
	for in, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -100: "-100", -1000000: "-1,000,000"} {
		if got := Thousands(in); got != want {
			t.Errorf("Thousands(%d) = %q, want %q", in, got, want)
		}
	}
}

func TestBytes(t *testing.T) {
	for in, want := range map[int64]string{0: "0 B", 512: "512 B", 1536: "1.5 KiB", 5 << 30: "5.0 GiB", 3 << 50: "3.0 PiB"} {
		if got := Bytes(in); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", in, got, want)
		}
	}
}

func TestTruncate(t *testing.T) {
	if got := Truncate("abc", 5); got != "abc" {
		t.Errorf("short string changed: %q", got)
	}
	if got := Truncate("abcdef", 3); got != "abc" {
		t.Errorf("Truncate(abcdef, 3) = %q", got)
	}
	// "é" is 2 bytes: cutting inside it backs off to the rune's start.
	if got := Truncate("aé", 2); got != "a" || !utf8.ValidString(got) {
		t.Errorf("Truncate(aé, 2) = %q", got)
	}
	if got := Truncate("€€", 4); got != "€" {
		t.Errorf("Truncate(€€, 4) = %q", got)
	}
}
