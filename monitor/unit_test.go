package monitor_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
)

// testLogger sends a service's log lines to t.Log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) { w.t.Helper(); w.t.Log(string(p)); return len(p), nil }

// TestGateNoSample: before any sample the gate is closed with ErrNoSample
// and retries after one sample interval; Stop is safe before Start.
func TestGateNoSample(t *testing.T) {
	t.Parallel()
	g := &monitor.Gate{}
	backoff, err := g.Check()
	if !errors.Is(err, monitor.ErrNoSample) || backoff != monitor.DefaultSampleInterval {
		t.Fatalf("Check = %v, %v; want ErrNoSample after %v", backoff, err, monitor.DefaultSampleInterval)
	}
	if g.Status() != (monitor.ReplicaStatus{}) {
		t.Fatalf("status %+v before any sample", g.Status())
	}
	if err := g.Stop(context.Background()); err != nil {
		t.Fatalf("Stop before Start: %v", err)
	}
	// A gate without a pool or a valid schema refuses to start.
	if err := g.Start(context.Background()); !errors.Is(err, monitor.ErrConfig) {
		t.Fatalf("Start without a replica: %v, want ErrConfig", err)
	}
	hb := &monitor.Heartbeat{}
	if err := hb.Stop(context.Background()); err != nil {
		t.Fatalf("heartbeat Stop before Start: %v", err)
	}
	if err := hb.Start(context.Background()); !errors.Is(err, monitor.ErrConfig) {
		t.Fatalf("heartbeat Start without a primary: %v, want ErrConfig", err)
	}
}

// TestGateHold: a hold closes the gate for its duration over a shorter
// back-off (here no sample's), reporting ErrReplicaBehind and the reason;
// a shorter hold does not cut a longer one short; once over, the sample's
// verdict is back.
func TestGateHold(t *testing.T) {
	t.Parallel()
	g := &monitor.Gate{}
	why := errors.New("gtid wait timed out")
	g.Hold(0, errors.New("no hold"))
	if _, err := g.Check(); !errors.Is(err, monitor.ErrNoSample) {
		t.Fatalf("Check after a zero hold = %v; want ErrNoSample", err)
	}
	g.Hold(400*time.Millisecond, why)
	g.Hold(time.Millisecond, errors.New("shorter"))
	d, err := g.Check()
	if !errors.Is(err, monitor.ErrReplicaBehind) || !errors.Is(err, why) || d <= 200*time.Millisecond || d > 400*time.Millisecond {
		t.Fatalf("Check during a 400ms hold = %v, %v; want up to 400ms and ErrReplicaBehind wrapping the reason", d, err)
	}
	time.Sleep(d + 50*time.Millisecond)
	if _, err := g.Check(); !errors.Is(err, monitor.ErrNoSample) {
		t.Fatalf("Check after the hold = %v; want the sample's verdict, ErrNoSample", err)
	}
}

// TestGateConfigValidate: each case names what it proves.
func TestGateConfigValidate(t *testing.T) {
	t.Parallel()
	def := monitor.GateConfig{}.WithDefaults()
	with := func(f func(*monitor.GateConfig)) monitor.GateConfig { c := def; f(&c); return c }
	cases := []struct {
		name  string
		cfg   monitor.GateConfig
		field string // "" = valid
	}{
		{"defaults are valid", def, ""},
		{"zero config needs WithDefaults", monitor.GateConfig{}, "lag.max_lag"},
		{"negative max lag", with(func(c *monitor.GateConfig) { c.MaxLag = -time.Second }), "lag.max_lag"},
		{"zero stopped backoff", with(func(c *monitor.GateConfig) { c.StoppedBackoff = 0 }), "lag.stopped_backoff"},
		{"negative behind backoff", with(func(c *monitor.GateConfig) { c.BehindBackoff = -1 }), "lag.behind_backoff"},
		{"zero sample interval", with(func(c *monitor.GateConfig) { c.SampleInterval = 0 }), "lag.sample_interval"},
		{"sampling as slow as the limit cannot see lag", with(func(c *monitor.GateConfig) { c.SampleInterval = c.MaxLag }), "lag.sample_interval"},
		{"sampling just under the limit is allowed", with(func(c *monitor.GateConfig) { c.SampleInterval = c.MaxLag - time.Millisecond }), ""},
		{"a tight limit with fast sampling", monitor.GateConfig{MaxLag: 100 * time.Millisecond, SampleInterval: 10 * time.Millisecond}.WithDefaults(), ""},
	}
	for _, c := range cases {
		err := c.cfg.Validate()
		if c.field == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		var ce *monitor.ConfigError
		if !errors.As(err, &ce) || !errors.Is(err, monitor.ErrConfig) || ce.Field != c.field {
			t.Errorf("%s: %v, want a ConfigError on %s", c.name, err, c.field)
		}
	}
	if d := (monitor.GateConfig{}).WithDefaults(); d.MaxLag != 2*time.Second || d.StoppedBackoff != time.Minute ||
		d.BehindBackoff != 2*time.Second || d.SampleInterval != 250*time.Millisecond {
		t.Errorf("defaults %+v", d)
	}
}

// TestRecordRunsNone: no runs is no statement (the History has no pool and
// an invalid schema, either of which would fail a write) and no error.
func TestRecordRunsNone(t *testing.T) {
	t.Parallel()
	h := &monitor.History{Schema: "not a schema"}
	if err := h.RecordRuns(context.Background(), nil); err != nil {
		t.Fatalf("RecordRuns(nil) = %v", err)
	}
	if err := h.RecordRuns(context.Background(), []*monitor.Run{}); err != nil {
		t.Fatalf("RecordRuns(empty) = %v", err)
	}
}

// TestRunWriterLogsFailures: a batch that cannot be written is logged and
// dropped; Close still returns once the writer is done.
func TestRunWriterLogsFailures(t *testing.T) {
	t.Parallel()
	var log testdb.SyncBuffer
	h := &monitor.History{Schema: "not a schema"}
	w := monitor.NewRunWriter(h, slog.New(slog.NewTextHandler(&log, nil)), time.Hour)
	for i := range 3 {
		w.Record(&monitor.Run{TopicID: int64(i + 1), Outcome: monitor.OutcomeDone, StartedAt: time.Now()})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if s := log.String(); !strings.Contains(s, "record runs") || !strings.Contains(s, "runs=3") {
		t.Fatalf("log: %q, want one failed batch of 3 runs", s)
	}
}
