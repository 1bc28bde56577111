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
		for _, shape := range []struct{ claimers, queues int }{{1, 1}, {8, 1}, {32, 1}, {32, 4}} {
			name := fmt.Sprintf("claim/claimers=%d", shape.claimers)
			if finish {
				name = fmt.Sprintf("claim+finish/claimers=%d", shape.claimers)
			}
			if shape.queues > 1 {
				name += fmt.Sprintf(",queues=%d", shape.queues)
			}
			b.Run(name, func(b *testing.B) { benchClaim(b, shape.claimers, shape.queues, finish) })
		}
	}
}

// benchClaim runs claimers goroutines over queues Queues, each with its own
// pool, as instances spread over that many worker processes would: claims
// are combined within a Queue, never across.
func benchClaim(b *testing.B, claimers, queues int, finish bool) {
	bd := setup(b, nil)
	bd.seed(b, dueTopics(max(10000, b.N))...)
	bd.db.ExecContext(bd.ctx, "ANALYZE TABLE topic")
	qs := []*queue.Queue{bd.q}
	for range queues - 1 {
		q, err := queue.Open(bd.ctx, env.Primary(""), bd.cfg)
		if err != nil {
			b.Fatalf("open queue: %v", err)
		}
		b.Cleanup(func() { q.Close() })
		qs = append(qs, q)
	}
	// Warm the pools so connection setup is not timed.
	var warm sync.WaitGroup
	for i := range claimers {
		warm.Add(1)
		go func() { defer warm.Done(); qs[i%queues].DB().PingContext(bd.ctx) }()
	}
	warm.Wait()
	stats := func() (s queue.ClaimStats) {
		for _, q := range qs {
			st := q.Stats()
			s.Won, s.Lost, s.Empty = s.Won+st.Won, s.Lost+st.Lost, s.Empty+st.Empty
		}
		return s
	}
	before := stats()
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
				q := qs[int(inst-101)%queues]
				c, err := q.Claim(bd.ctx, &queue.ClaimParams{InstanceID: inst})
				if err != nil {
					if !errors.Is(err, queue.ErrNoneDue) {
						failed.Store(err)
					} else {
						failed.Store(fmt.Errorf("ran dry with %d claims left", left.Load()))
					}
					return
				}
				if finish {
					if err := q.Finish(bd.ctx, c); err != nil {
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
	st := stats()
	won, lost := st.Won-before.Won, st.Lost-before.Lost
	b.ReportMetric(float64(won)/elapsed.Seconds(), "claims/s")
	b.ReportMetric(100*float64(lost)/float64(max(1, won+lost)), "lost_cas_%")
}
