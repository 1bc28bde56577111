package monitor

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestDecideThrottle: each configured check closes the throttle while it
// holds, fails closed without a sample, with a failed one and with a
// stale one, and a check not configured never closes it.
func TestDecideThrottle(t *testing.T) {
	now := time.Now()
	cfg := ThrottleConfig{MaxThreadsRunning: 10, URL: "http://freno/check", SampleInterval: time.Second}.WithDefaults()
	fresh := func(v int64) *throttleSample { return &throttleSample{value: v, at: now} }
	for _, c := range []struct {
		name           string
		cfg            ThrottleConfig
		threads, check *throttleSample
		want           []string
	}{
		{"both fine: open", cfg, fresh(10), fresh(200), nil},
		{"at the limit is fine, above is not", cfg, fresh(11), fresh(200), []string{ThrottleThreadsRunning}},
		{"only 200 opens: 429", cfg, fresh(2), fresh(429), []string{ThrottleURL}},
		{"only 200 opens: 204", cfg, fresh(2), fresh(204), []string{ThrottleURL}},
		{"both at once: both reasons", cfg, fresh(50), fresh(503), []string{ThrottleThreadsRunning, ThrottleURL}},
		{"no sample yet: closed", cfg, nil, nil, []string{ThrottleThreadsRunning, ThrottleURL}},
		{"failed samples: closed", cfg, &throttleSample{err: errors.New("down"), at: now}, &throttleSample{err: errors.New("timeout"), at: now},
			[]string{ThrottleThreadsRunning, ThrottleURL}},
		{"stale samples (collector stuck): closed", cfg, &throttleSample{value: 1, at: now.Add(-time.Minute)},
			&throttleSample{value: 200, at: now.Add(-time.Minute)}, []string{ThrottleThreadsRunning, ThrottleURL}},
		{"URL not configured: its missing sample does not matter", ThrottleConfig{MaxThreadsRunning: 10}.WithDefaults(), fresh(3), nil, nil},
		{"nothing configured: open", ThrottleConfig{}.WithDefaults(), nil, nil, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			v := decideThrottle(c.cfg, c.threads, c.check, now)
			var got []string
			if v != nil {
				got = v.Reasons
				if !errors.Is(v, ErrThrottled) {
					t.Errorf("%v does not wrap ErrThrottled", v)
				}
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("reasons %v, want %v (%v)", got, c.want, v)
			}
		})
	}
}

// TestThrottleConfigValidate: each bad value names its key.
func TestThrottleConfigValidate(t *testing.T) {
	for _, c := range []struct {
		cfg   ThrottleConfig
		field string // "" for valid
	}{
		{ThrottleConfig{}, ""},
		{ThrottleConfig{MaxThreadsRunning: 1, URL: "https://freno:9777/check/nonqueue/mysql/main", MaxConcurrentPublishes: 1}, ""},
		{ThrottleConfig{MaxThreadsRunning: -1}, "throttle.max_threads_running"},
		{ThrottleConfig{MaxConcurrentPublishes: -2}, "throttle.max_concurrent_publishes"},
		{ThrottleConfig{URL: "ftp://freno/check"}, "throttle.throttle_url"},
		{ThrottleConfig{URL: "freno:9777/check"}, "throttle.throttle_url"},
		{ThrottleConfig{URL: "http:///check"}, "throttle.throttle_url"},
		{ThrottleConfig{URL: "http://fr eno/"}, "throttle.throttle_url"},
	} {
		err := c.cfg.WithDefaults().Validate()
		var ce *ConfigError
		switch {
		case c.field == "" && err != nil:
			t.Errorf("%+v: %v", c.cfg, err)
		case c.field != "" && (!errors.As(err, &ce) || ce.Field != c.field):
			t.Errorf("%+v: %v, want an error on %s", c.cfg, err, c.field)
		}
	}
	for _, u := range []string{"http://nq:s3cret@fr eno/check", "ftp://nq:s3cret@freno/check"} {
		if err := (ThrottleConfig{URL: u}).WithDefaults().Validate(); err == nil || strings.Contains(err.Error(), "s3cret") {
			t.Errorf("%q: %v: want an error that does not show the password", u, err)
		}
	}
	if err := (ThrottleConfig{URLTimeout: -time.Second}).Validate(); err == nil {
		t.Error("negative timeout accepted")
	}
}
