package dashboard_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/nonqueue/nonqueue/monitor"
)

// TestThrottledShown: instances that report themselves throttled in the
// registry (as workers do, History.SetStateReason) show on the overview,
// counted per reason, and on the replicas page with their reasons; once
// they report running again, the overview's notice is gone.
func TestThrottledShown(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	for _, id := range []int64{100101, 100102} {
		if err := b.hist.Register(b.ctx, monitor.InstanceInfo{ID: id, Host: "h", PID: 1, Version: "v", ReplicaServerID: 1001}); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.hist.SetStateReason(b.ctx, 100101, monitor.StateThrottled, "threads_running,throttle_url", 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	if err := b.hist.SetStateReason(b.ctx, 100102, monitor.StateThrottled, "throttle_url", 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	c := b.client(t)
	expect(t, "overview", c.get("/"), http.StatusOK, `id="throttled"`,
		`data-reason="threads_running">threads_running: 1 instances`, `data-reason="throttle_url">throttle_url: 2 instances`)
	expect(t, "replicas", c.get("/replicas"), http.StatusOK,
		`throttled <span class="bad reason" data-reason="threads_running,throttle_url">(threads_running,throttle_url)</span>`)
	for _, id := range []int64{100101, 100102} {
		if err := b.hist.SetState(b.ctx, id, monitor.StateRunning, 7, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	if r := c.get("/"); r.status != http.StatusOK || contains(r.body, `id="throttled"`) || contains(r.body, "data-reason") {
		t.Errorf("overview still shows a throttle after the instances run again:\n%s", snippet(r.body))
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
