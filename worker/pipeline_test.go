package worker_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/worker"
)

// TestPipeline: with [worker] pipeline on, one instance claims its next
// topic while the last one is still being shipped (its run ends after the
// next run's claim), yet never holds more than two claims (a run starts
// only after the run two before it ended); every topic is computed once
// and published. Off, runs of an instance never overlap.
func TestPipeline(t *testing.T) {
	for _, pipeline := range []bool{true, false} {
		t.Run(fmt.Sprint("pipeline=", pipeline), func(t *testing.T) {
			b := setup(t, 30*time.Second)
			const n = 12
			b.addTopics(t, 1, n)
			p := b.startPool(t, 0, 1, func(wc *worker.Config, _ *monitor.GateConfig) { wc.Pipeline = &pipeline })
			var runs []*monitor.Run
			deadline := time.After(90 * time.Second)
			for len(runs) < n {
				select {
				case r := <-p.runs:
					if r.Outcome != monitor.OutcomeDone {
						t.Fatalf("topic %d: outcome %s: %s", r.TopicID, r.Outcome, r.Error)
					}
					runs = append(runs, r)
				case <-deadline:
					t.Fatalf("%d of %d runs done in 90s", len(runs), n)
				}
			}
			p.stop(t)
			slices.SortFunc(runs, func(a, b *monitor.Run) int { return a.StartedAt.Compare(b.StartedAt) })
			end := func(r *monitor.Run) time.Time {
				v, ok := p.ended.Load(r)
				if !ok {
					t.Fatalf("topic %d: no end recorded", r.TopicID)
				}
				return v.(time.Time)
			}
			overlaps := 0
			for k := 0; k+1 < len(runs); k++ {
				if runs[k+1].StartedAt.Before(end(runs[k])) {
					overlaps++
				}
				if k+2 < len(runs) && runs[k+2].StartedAt.Before(end(runs[k])) {
					t.Errorf("topic %d was claimed before topic %d's run, two runs earlier, ended: three claims held at once",
						runs[k+2].TopicID, runs[k].TopicID)
				}
			}
			t.Logf("pipeline=%v: %d of %d consecutive runs overlapped; first claim to last end %v", pipeline,
				overlaps, len(runs)-1, end(runs[len(runs)-1]).Sub(runs[0].StartedAt).Round(time.Millisecond))
			switch {
			case pipeline && overlaps < len(runs)-3:
				t.Errorf("pipelined: only %d of %d next claims were made while the last topic was shipped", overlaps, len(runs)-1)
			case !pipeline && overlaps != 0:
				t.Errorf("not pipelined: %d runs began before the last one ended", overlaps)
			}
			if left := b.count(t, "SELECT COUNT(*) FROM topic WHERE required > 0 OR running <> 0"); left != 0 {
				t.Errorf("%d topics left requested or running", left)
			}
			for _, r := range runs {
				if c := b.count(t, fmt.Sprintf("SELECT COUNT(*) FROM S_%d", r.TopicID)); c != 1 {
					t.Errorf("topic %d: published S_%d has %d rows, want 1", r.TopicID, r.TopicID, c)
				}
			}
		})
	}
}
