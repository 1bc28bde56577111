package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/monitor/dashboard"
	"github.com/nonqueue/nonqueue/queue"
)

// opsBundle is a database with nonqueue's schema and a configuration file
// pointing at it (and at replica 1), for status and dashboard.
type opsBundle struct {
	name string
	q    *queue.Queue
	ctx  context.Context
	path string
}

func setupOps(t *testing.T, extra string) *opsBundle {
	t.Helper()
	name := env.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	q, err := queue.Open(ctx, env.Primary(""), queue.Config{Schema: name, MetaSchema: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	if err := q.ApplySchema(ctx); err != nil {
		t.Fatal(err)
	}
	body := serversTOML(0, name) + extra
	path := filepath.Join(t.TempDir(), "nonqueue.toml")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return &opsBundle{name: name, q: q, ctx: ctx, path: path}
}

// seed requests topics 1..5 (3 due now, 2 later), claims one for instance
// 100101, registers that instance and records a done and a failed run.
func (b *opsBundle) seed(t *testing.T) {
	t.Helper()
	if _, err := b.q.Request(b.ctx, &queue.RequestParams{IDs: []int64{1, 2, 3}, Scope: queue.ScopeFull, Create: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.q.Request(b.ctx, &queue.RequestParams{IDs: []int64{4, 5}, Scope: queue.ScopePartial, Create: true, Delay: time.Hour}); err != nil {
		t.Fatal(err)
	}
	c, err := b.q.Claim(b.ctx, &queue.ClaimParams{InstanceID: 100101})
	if err != nil {
		t.Fatal(err)
	}
	h := &monitor.History{Primary: b.q.DB(), Schema: b.name}
	if err := h.Register(b.ctx, monitor.InstanceInfo{ID: 100101, Host: "w1", PID: 7, Version: "test", ReplicaServerID: 1001}); err != nil {
		t.Fatal(err)
	}
	h.SetState(b.ctx, 100101, monitor.StateRunning, c.TopicID, 0, 0)
	for _, o := range []string{monitor.OutcomeDone, monitor.OutcomeFailed} {
		if err := h.RecordRun(b.ctx, &monitor.Run{TopicID: 9, InstanceID: 100101, Outcome: o, StartedAt: time.Now(), Proc: time.Millisecond, Bytes: 2048}); err != nil {
			t.Fatal(err)
		}
	}
}

// TestStatus: the terminal overview as aligned tables, and as JSON.
func TestStatus(t *testing.T) {
	t.Parallel()
	b := setupOps(t, "")
	b.seed(t)
	out, err := run(t, "status", "--config", b.path)
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	for _, want := range []string{
		"topics 5, required 5",
		"STATE      TOPICS", "due        2", "running    1", "scheduled  2", "idle       0",
		"PRIORITY  SCOPE    DUE  BACKOFF  SCHEDULED",
		"last hour  1     1",
		"RUNNING TOPIC  INSTANCE",
		"100101", "w1", "running",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status output lacks %q:\n%s", want, out)
		}
	}
	out, err = run(t, "status", "--config", b.path, "--json")
	if err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	var s dashboard.Summary
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, out)
	}
	if s.Topics.Total != 5 || s.Topics.States[queue.TopicDue] != 2 || s.Hour.Done != 1 || s.Hour.Failed != 1 || len(s.Instances) != 1 {
		t.Errorf("status --json: %+v", s)
	}
	for _, args := range [][]string{
		{"status"}, // no config
		{"status", "--config", "/nonexistent.toml"}, // unreadable config
		{"status", "--config", b.path, "--no-such"}, // unknown flag
	} {
		if out, err := run(t, args...); err == nil {
			t.Errorf("%v succeeded:\n%s", args, out)
		}
	}
}

// TestStatusSchemaMissing: a database without nonqueue's tables is an
// error that names what failed, not a panic or an empty table.
func TestStatusSchemaMissing(t *testing.T) {
	t.Parallel()
	b := setupOps(t, "")
	db := testdb.Open(t, env.Primary(b.name))
	if _, err := db.ExecContext(b.ctx, "DROP TABLE run"); err != nil {
		t.Fatal(err)
	}
	out, err := run(t, "status", "--config", b.path)
	if err == nil || !strings.Contains(err.Error(), "run") {
		t.Fatalf("status without the run table: %v\n%s", err, out)
	}
}
