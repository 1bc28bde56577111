package queue_test

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/queue"
)

// BenchmarkClaim measures claim throughput with 1, 8 and 32 concurrent
// claimers over 10,000 due topics (more if b.N is larger, so no claimer
// ever runs dry), in two shapes: claims alone, and claim+finish (each
// claimer finishes what it claimed before its next claim, as a worker
// does). It reports claims/s and the share of lost compare-and-sets.
// Run: make bench-claim (-benchtime 10000x: exactly the 10,000 topics).
func BenchmarkClaim(b *testing.B) {
	for _, finish := range []bool{false, true} {
		for _, claimers := range []int{1, 8, 32} {
			name := fmt.Sprintf("claim/claimers=%d", claimers)
			if finish {
				name = fmt.Sprintf("claim+finish/claimers=%d", claimers)
			}
			b.Run(name, func(b *testing.B) { benchClaim(b, claimers, finish) })
		}
	}
}

func benchClaim(b *testing.B, claimers int, finish bool) {
	bd := setup(b, nil)
	bd.seed(b, dueTopics(max(10000, b.N))...)
	bd.db.ExecContext(bd.ctx, "ANALYZE TABLE topic")
	// Warm the pool so connection setup is not timed.
	var warm sync.WaitGroup
	for range claimers {
		warm.Add(1)
		go func() { defer warm.Done(); bd.q.DB().PingContext(bd.ctx) }()
	}
	warm.Wait()
	before := bd.q.Stats()
	var left atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	var failed atomic.Value
	b.ResetTimer()
	start := time.Now()
	for i := range claimers {
		wg.Add(1)
		go func(inst int64) {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				c, err := bd.q.Claim(bd.ctx, &queue.ClaimParams{InstanceID: inst})
				if err != nil {
					if !errors.Is(err, queue.ErrNoneDue) {
						failed.Store(err)
					} else {
						failed.Store(fmt.Errorf("ran dry with %d claims left", left.Load()))
					}
					return
				}
				if finish {
					if err := bd.q.Finish(bd.ctx, c); err != nil {
						failed.Store(err)
						return
					}
				}
			}
		}(int64(101 + i))
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	st := bd.q.Stats()
	won, lost := st.Won-before.Won, st.Lost-before.Lost
	b.ReportMetric(float64(won)/elapsed.Seconds(), "claims/s")
	b.ReportMetric(100*float64(lost)/float64(max(1, won+lost)), "lost_cas_%")
}
