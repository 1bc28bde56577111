package follow_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/testdb"
)

// cpuTime is this process's user and system CPU time so far.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkFollowThroughput: how many row changes a second a follower
// reads, maps and requests, and its CPU per 1,000. The rows (inserts of
// 1,000 rows a statement, over 1,000 topics) are written while no
// follower runs; then the clock runs from the follower's start at its
// saved position until it has saved the primary's position. Nothing else
// runs in the process meanwhile, so the process's CPU time is the
// follower's (the binlog decoding, the mapping, the request commits'
// client side). Run with -benchtime=1x; rows per run: followBenchRows.
//
//	go test -run '^$' -bench BenchmarkFollowThroughput -benchtime 1x ./worker/follow/
func BenchmarkFollowThroughput(b *testing.B) {
	// Bulk writes (1,000 rows a transaction) and single-row transactions,
	// which add a GTID and a commit event per row.
	for _, c := range []struct{ rows, perTx int }{{followBenchRows, 1000}, {followBenchRows / 5, 1}} {
		b.Run(fmt.Sprintf("rows_per_tx=%d", c.perTx), func(b *testing.B) { followThroughput(b, c.rows, c.perTx) })
	}
}

func followThroughput(b *testing.B, rows, perTx int) {
	bb := setup(b)
	for range b.N {
		f, stop := bb.start(b, fast("tput"), bb.rules(0))
		testdb.WaitFor(b, 30*time.Second, "follower active", func() bool { return f.Stats().Active })
		bb.waitCaughtUp(b, "tput", time.Minute)
		stop()
		var next atomic.Int64
		var wg sync.WaitGroup
		var werr atomic.Value
		for range 16 {
			wg.Go(func() {
				for {
					i := next.Add(int64(perTx)) - int64(perTx)
					if i >= int64(rows) {
						return
					}
					vals := make([]string, 0, perTx)
					for j := range int64(perTx) {
						vals = append(vals, fmt.Sprintf("(%d, 'x')", 1+(i+j)%1000))
					}
					if _, err := bb.primary.ExecContext(bb.ctx, "INSERT INTO post (topic, body) VALUES "+strings.Join(vals, ",")); err != nil {
						werr.Store(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if err, _ := werr.Load().(error); err != nil {
			b.Fatal(err)
		}
		if err := env.WaitReplicas(bb.ctx, bb.primary); err != nil {
			b.Fatal(err)
		}
		cpu0, t0 := cpuTime(b), time.Now()
		f, stop = bb.start(b, fast("tput"), bb.rules(0))
		bb.waitCaughtUp(b, "tput", 5*time.Minute)
		el, cpu := time.Since(t0), cpuTime(b)-cpu0
		stop()
		st := f.Stats()
		if st.Events < uint64(rows) {
			b.Fatalf("follower read %d row changes, want %d", st.Events, rows)
		}
		b.ReportMetric(float64(st.Events)/el.Seconds(), "events/s")
		b.ReportMetric(float64(cpu.Milliseconds())/float64(st.Events)*1000, "cpu-ms/1000events")
		b.ReportMetric(el.Seconds(), "s-catch-up")
	}
}

// followBenchRows is the rows of one throughput run.
const followBenchRows = 200_000

// BenchmarkFollowDelay: commit on the primary to request visible, at
// followDelayRate changes a second with after = 0s, for followDelayFor.
// Each change inserts a row for a topic of its own with the primary's
// NOW(6); the request sets that topic's due date to the primary's NOW(6)
// when it commits, so due − created is the delay, on one clock. Reports
// p50, p99 and max.
//
//	go test -run '^$' -bench BenchmarkFollowDelay -benchtime 1x ./worker/follow/
func BenchmarkFollowDelay(b *testing.B) {
	bb := setup(b)
	if _, err := bb.primary.ExecContext(bb.ctx, "ALTER TABLE post ADD COLUMN created DATETIME(6) NULL"); err != nil {
		b.Fatal(err)
	}
	n := int(followDelayRate * followDelayFor.Seconds())
	for from := topics + 1; from <= topics+n; from += 1000 {
		var vals []string
		for id := from; id < from+1000 && id <= topics+n; id++ {
			vals = append(vals, fmt.Sprintf("(%d)", id))
		}
		if _, err := bb.primary.ExecContext(bb.ctx, "INSERT INTO topic (id) VALUES "+strings.Join(vals, ",")); err != nil {
			b.Fatal(err)
		}
	}
	for range b.N {
		f, stop := bb.start(b, fast("delay"), bb.rules(0))
		testdb.WaitFor(b, 30*time.Second, "follower active", func() bool { return f.Stats().Active })
		// Writers pace themselves to followDelayRate in all.
		const writers = 16
		var next atomic.Int64
		next.Store(topics)
		start := time.Now()
		var wg sync.WaitGroup
		var werr atomic.Value
		for range writers {
			wg.Go(func() {
				for {
					id := next.Add(1)
					k := id - topics
					if k > int64(n) {
						return
					}
					if d := time.Until(start.Add(time.Duration(float64(k) / followDelayRate * float64(time.Second)))); d > 0 {
						time.Sleep(d)
					}
					if _, err := bb.primary.ExecContext(context.Background(), "INSERT INTO post (topic, body, created) VALUES (?, 'd', NOW(6))", id); err != nil {
						werr.Store(err)
						return
					}
				}
			})
		}
		wg.Wait()
		rate := float64(n) / time.Since(start).Seconds()
		if err, _ := werr.Load().(error); err != nil {
			b.Fatal(err)
		}
		bb.waitCaughtUp(b, "delay", 2*time.Minute)
		stop()
		rows, err := bb.primary.QueryContext(bb.ctx, `SELECT TIMESTAMPDIFF(MICROSECOND, p.created, t.due) FROM post p JOIN topic t ON t.id = p.topic
 WHERE p.created IS NOT NULL AND t.request_version > 0`)
		if err != nil {
			b.Fatal(err)
		}
		var us []int64
		for rows.Next() {
			var v int64
			if err := rows.Scan(&v); err != nil {
				b.Fatal(err)
			}
			us = append(us, v)
		}
		rows.Close()
		if len(us) != n {
			b.Fatalf("%d of %d changes requested", len(us), n)
		}
		slices.Sort(us)
		pct := func(p float64) float64 { return float64(us[min(len(us)-1, int(p*float64(len(us))))]) / 1000 }
		b.ReportMetric(rate, "changes/s")
		b.ReportMetric(pct(0.5), "p50-ms")
		b.ReportMetric(pct(0.99), "p99-ms")
		b.ReportMetric(float64(us[len(us)-1])/1000, "max-ms")
	}
}

const (
	followDelayRate = 2000.0
	followDelayFor  = 20 * time.Second
)
