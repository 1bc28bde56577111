package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/transfer"
)

// TestLoadConfigSwapKeys: [results] lock_wait, swap_tries and swap_backoff
// reach the transfer configuration; left out they take the defaults; a
// zero written in the file, a lock wait that is not whole seconds or a
// value out of range is refused by key.
func TestLoadConfigSwapKeys(t *testing.T) {
	t.Parallel()
	const base = "[primary]\nuser = \"nq\"\n[results]\nschema = \"influencer\"\ntables = [\"Dynamics_{id}\"]\n"
	c, err := LoadConfig(writeFile(t, base+"lock_wait = \"2s\"\nswap_tries = 5\nswap_backoff = \"3s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if tc := c.transferConfig(); tc.LockWait != 2*time.Second || tc.SwapTries != 5 || tc.SwapBackoff != 3*time.Second {
		t.Fatalf("transfer config: lock wait %v, tries %d, backoff %v", tc.LockWait, tc.SwapTries, tc.SwapBackoff)
	}
	c, err = LoadConfig(writeFile(t, base))
	if err != nil {
		t.Fatal(err)
	}
	if tc := c.transferConfig(); tc.LockWait != transfer.DefaultLockWait || tc.SwapTries != transfer.DefaultSwapTries || tc.SwapBackoff != transfer.DefaultSwapBackoff {
		t.Fatalf("defaults: lock wait %v, tries %d, backoff %v", tc.LockWait, tc.SwapTries, tc.SwapBackoff)
	}
	for body, key := range map[string]string{
		"lock_wait = \"0s\"\n":      "results.lock_wait",
		"lock_wait = \"1500ms\"\n":  "results.lock_wait",
		"lock_wait = \"5m\"\n":      "results.lock_wait",
		"swap_tries = 0\n":          "results.swap_tries",
		"swap_tries = -3\n":         "results.swap_tries",
		"swap_backoff = \"0s\"\n":   "results.swap_backoff",
		"swap_backoff = \"10ms\"\n": "results.swap_backoff",
		"swap_backoff = \"-1s\"\n":  "results.swap_backoff",
	} {
		_, err := LoadConfig(writeFile(t, base+body))
		var ce *ConfigError
		var te *transfer.ConfigError
		switch {
		case errors.As(err, &ce) && ce.Key == key, errors.As(err, &te) && te.Field == key:
			t.Logf("%s→ %v", body, err)
		default:
			t.Errorf("%s: LoadConfig = %v, want an error on %s", strings.TrimSpace(body), err, key)
		}
	}
}
