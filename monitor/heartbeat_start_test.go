package monitor_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/netsim"
	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
)

// TestHeartbeatStartRidesOutUnreachablePrimary: a lag heartbeat started
// while the primary resets every connection (restarting) starts anyway,
// logs the failed first write, and writes its row once the primary
// answers; one started on a schema without the table still fails at once.
func TestHeartbeatStartRidesOutUnreachablePrimary(t *testing.T) {
	b := setup(t, false)
	n, err := netsim.New(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	mc := env.Primary(b.name)
	link, err := n.Add("primary", mc.Addr, netsim.MySQL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := link.Proxy().Toxics.AddToxicJson(strings.NewReader(`{"name":"reset","type":"reset_peer","stream":"downstream","toxicity":1,"attributes":{"timeout":0}}`)); err != nil {
		t.Fatal(err)
	}
	mc.Addr = link.Addr()
	hb := &monitor.Heartbeat{Primary: testdb.Open(t, mc), Schema: b.name, WriterID: b.writerID, Interval: 100 * time.Millisecond, Logger: testLogger(t)}
	if err := hb.Start(b.ctx); err != nil {
		t.Fatalf("start while the primary resets connections: %v, want a start and a later write", err)
	}
	t.Cleanup(func() { hb.Stop(context.Background()) })
	if err := link.Proxy().Toxics.RemoveToxic(context.Background(), "reset"); err != nil {
		t.Fatal(err)
	}
	testdb.WaitFor(t, 20*time.Second, "the heartbeat row once the primary answers", func() bool {
		var n int
		if err := b.primary.QueryRowContext(b.ctx, "SELECT COUNT(*) FROM heartbeat WHERE id = ?", b.writerID).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	})

	// Permanent: the schema has no heartbeat table.
	bad := &monitor.Heartbeat{Primary: b.primary, Schema: "mysql", WriterID: b.writerID, Interval: 100 * time.Millisecond, Logger: testLogger(t)}
	if err := bad.Start(b.ctx); err == nil {
		bad.Stop(context.Background())
		t.Fatal("start without a heartbeat table succeeded, want the server's error")
	}
}
