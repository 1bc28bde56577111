package worker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/netsim"
	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/worker"
)

// TestRegisterWaitsForPrimary: a pool whose registry writes cannot reach
// the primary at start (every connection reset, as while the primary
// restarts) waits and registers once it can, instead of failing the
// process; then its instances do their work.
func TestRegisterWaitsForPrimary(t *testing.T) {
	b := setup(t, 10*time.Second)
	b.addTopics(t, 1, 2)
	n, err := netsim.New(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	mc := b.env.Primary(b.db)
	link, err := n.Add("primary", mc.Addr, netsim.MySQL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := link.Proxy().Toxics.AddToxicJson(strings.NewReader(`{"name":"reset","type":"reset_peer","stream":"downstream","toxicity":1,"attributes":{"timeout":0}}`)); err != nil {
		t.Fatal(err)
	}
	mc.Addr = link.Addr()
	mc.InterpolateParams = true
	via := testdb.Open(t, mc)
	b.depsTweak = func(d *worker.Deps) { d.History = &monitor.History{Primary: via, Schema: b.db} }
	p := b.startPool(t, 0, 2, nil)
	time.Sleep(2 * time.Second)
	select {
	case err := <-p.done:
		t.Fatalf("the pool gave up while the primary was unreachable: %v", err)
	default:
	}
	if n := b.count(t, "SELECT COUNT(*) FROM instance"); n != 0 {
		t.Fatalf("%d instances registered through a network that resets every connection", n)
	}
	if err := link.Proxy().Toxics.RemoveToxic(context.Background(), "reset"); err != nil {
		t.Fatal(err)
	}
	testdb.WaitFor(t, 60*time.Second, "both instances registered and both topics done", func() bool {
		return b.count(t, "SELECT COUNT(*) FROM instance") == 2 && b.count(t, "SELECT COUNT(*) FROM run WHERE outcome = 'done'") == 2
	})
}
