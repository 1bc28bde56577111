package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"syscall"
	"time"

	"github.com/nonqueue/nonqueue/internal/netsim"
)

// faultKind is one kind of fault: how often it is picked, and what it
// does. inject returns the target it hit, a note, and a revert to run
// after the fault's span (nil for an instantaneous fault); an error means
// nothing was injected.
type faultKind struct {
	name   string
	weight int
	inject func(ctx context.Context, rng *rand.Rand) (target, note string, span time.Duration, revert func(context.Context) error, err error)
}

// faults runs the fault schedule and keeps what was injected.
type faults struct {
	s      *soak
	mu     sync.Mutex
	busy   map[string]bool // targets with a fault in force
	sbMu   sync.Mutex      // sandbox restarts write sandbox.json
	kinds  []faultKind
	active sync.WaitGroup
}

func (f *faults) injected() int {
	n := 0
	for _, x := range f.s.log.faults {
		if x.Err == "" {
			n++
		}
	}
	return n
}

// claim marks target busy; false if a fault is already in force on it.
func (f *faults) claim(target string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.busy[target] {
		return false
	}
	f.busy[target] = true
	return true
}

func (f *faults) free(target string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.busy, target)
}

// errBusy: every target of a kind has a fault in force; another kind is
// picked.
var errBusy = errors.New("target busy")

// span returns a duration uniform in [lo, hi].
func span(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)+1))
}

// runFaults injects a fault every FaultEvery/4 to FaultEvery until ctx
// ends: first every kind once in a random order, then kinds at random by
// weight. Each fault runs in its own goroutine for its span, so faults
// overlap. It returns once every fault has been reverted.
func (s *soak) runFaults(ctx context.Context) *faults {
	f := &faults{s: s, busy: map[string]bool{}}
	f.kinds = f.allKinds()
	rng := rand.New(rand.NewPCG(uint64(s.opt.Seed), 7))
	order := rng.Perm(len(f.kinds))
	total := 0
	for _, k := range f.kinds {
		total += k.weight
	}
	for i := 0; ctx.Err() == nil; i++ {
		if err := sleepCtx(ctx, span(rng, s.opt.FaultEvery/4, s.opt.FaultEvery)); err != nil {
			break
		}
		frng := rand.New(rand.NewPCG(uint64(s.opt.Seed), uint64(1000+i)))
		if len(order) > 0 {
			j := order[0]
			order = order[1:]
			// A kind whose targets are all busy comes back later.
			if !f.start(ctx, f.kinds[j], frng) {
				order = append(order, j)
			}
			continue
		}
		n := rng.IntN(total)
		for _, k := range f.kinds {
			if n -= k.weight; n < 0 {
				f.start(ctx, k, frng)
				break
			}
		}
	}
	f.active.Wait()
	return f
}

// start injects one fault of kind k and, in the background, reverts it
// after its span or as soon as ctx ends. It reports false when every
// target of k was busy (nothing injected, nothing recorded).
func (f *faults) start(ctx context.Context, k faultKind, rng *rand.Rand) bool {
	s := f.s
	at, wall := s.elapsed(), stamp()
	target, note, d, revert, err := k.inject(ctx, rng)
	if errors.Is(err, errBusy) {
		return false
	}
	rec := Fault{Kind: k.name, Target: target, At: round1(at), Wall: wall, Note: note}
	if err != nil {
		rec.Err = err.Error()
		s.info("%6.1fs  %-16s %-9s FAILED: %v", at, k.name, target, err)
		s.log.fault(rec)
		return true
	}
	if revert == nil {
		rec.For = round1(s.elapsed() - at)
		s.info("%6.1fs  %-16s %-9s %s (%.1fs)", at, k.name, target, note, rec.For)
		s.log.fault(rec)
		return true
	}
	s.info("%6.1fs  %-16s %-9s %s for %v", at, k.name, target, note, d.Round(100*time.Millisecond))
	f.active.Add(1)
	go func() {
		defer f.active.Done()
		_ = sleepCtx(ctx, d)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if err := revert(rctx); err != nil {
			rec.Err = "revert: " + err.Error()
			s.info("%6.1fs  %-16s %-9s revert FAILED: %v", s.elapsed(), k.name, target, err)
		}
		rec.For = round1(s.elapsed() - at)
		s.log.fault(rec)
	}()
	return true
}

func round1(x float64) float64 { return float64(int(x*10+0.5)) / 10 }

// pick returns a free target among names, claimed, or errBusy.
func (f *faults) pick(rng *rand.Rand, names ...string) (string, error) {
	for _, i := range rng.Perm(len(names)) {
		if f.claim(names[i]) {
			return names[i], nil
		}
	}
	return "", errBusy
}

func (f *faults) workerNames() []string {
	var n []string
	for k := range f.s.sb.Replicas {
		n = append(n, fmt.Sprintf("worker%d", k+1))
	}
	return n
}

func (f *faults) replicaNames() []string {
	var n []string
	for _, r := range f.s.sb.Replicas {
		n = append(n, r.Name)
	}
	return n
}

// index returns K-1 for a name ending in the digit K.
func index(name string) int { return int(name[len(name)-1] - '1') }

// allKinds lists the faults of the soak (docs: bench/soak/README.md).
func (f *faults) allKinds() []faultKind {
	s := f.s
	return []faultKind{
		{"worker_kill", 3, func(ctx context.Context, rng *rand.Rand) (string, string, time.Duration, func(context.Context) error, error) {
			t, err := f.pick(rng, f.workerNames()...)
			if err != nil {
				return "", "", 0, nil, err
			}
			s.wmu.Lock()
			w := s.workers[index(t)]
			pid := w.proc.Pid()
			w.killed = true
			err = syscall.Kill(pid, syscall.SIGKILL)
			if err != nil {
				w.killed = false
			}
			s.wmu.Unlock()
			if err != nil {
				f.free(t)
				return t, "", 0, nil, err
			}
			w.proc.Wait(10 * time.Second)
			return t, fmt.Sprintf("SIGKILL pid %d, restarted after", pid), span(rng, 500*time.Millisecond, 3*time.Second), func(ctx context.Context) error {
				defer f.free(t)
				return s.startWorker(ctx, index(t))
			}, nil
		}},
		{"worker_stop", 3, func(ctx context.Context, rng *rand.Rand) (string, string, time.Duration, func(context.Context) error, error) {
			t, err := f.pick(rng, f.workerNames()...)
			if err != nil {
				return "", "", 0, nil, err
			}
			s.wmu.Lock()
			pid := s.workers[index(t)].proc.Pid()
			s.wmu.Unlock()
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				f.free(t)
				return t, "", 0, nil, err
			}
			// Past the lease half the time: the claims are reaped and the
			// resumed worker must find them gone.
			return t, fmt.Sprintf("SIGSTOP pid %d, SIGCONT after", pid), span(rng, time.Second, s.opt.Lease+5*time.Second), func(context.Context) error {
				defer f.free(t)
				return syscall.Kill(pid, syscall.SIGCONT)
			}, nil
		}},
		{"stop_slave", 2, func(ctx context.Context, rng *rand.Rand) (string, string, time.Duration, func(context.Context) error, error) {
			t, err := f.pick(rng, f.replicaNames()...)
			if err != nil {
				return "", "", 0, nil, err
			}
			db := s.replicas[index(t)]
			if _, err := db.ExecContext(ctx, "STOP SLAVE"); err != nil {
				f.free(t)
				return t, "", 0, nil, err
			}
			return t, "STOP SLAVE, START SLAVE after", span(rng, time.Second, 6*time.Second), func(ctx context.Context) error {
				defer f.free(t)
				_, err := db.ExecContext(ctx, "START SLAVE")
				return err
			}, nil
		}},
		{"replica_restart", 1, func(ctx context.Context, rng *rand.Rand) (string, string, time.Duration, func(context.Context) error, error) {
			t, err := f.pick(rng, f.replicaNames()...)
			if err != nil {
				return "", "", 0, nil, err
			}
			defer f.free(t)
			f.sbMu.Lock()
			defer f.sbMu.Unlock()
			return t, "mariadbd stopped (SIGTERM) and started", 0, nil, s.sb.Restart(context.WithoutCancel(ctx), t, false)
		}},
		{"primary_restart", 1, func(ctx context.Context, rng *rand.Rand) (string, string, time.Duration, func(context.Context) error, error) {
			t, err := f.pick(rng, "primary")
			if err != nil {
				return "", "", 0, nil, err
			}
			defer f.free(t)
			f.sbMu.Lock()
			defer f.sbMu.Unlock()
			return t, "mariadbd stopped (SIGTERM) and started", 0, nil, s.sb.Restart(context.WithoutCancel(ctx), t, false)
		}},
		{"sshd_stop", 2, func(ctx context.Context, rng *rand.Rand) (string, string, time.Duration, func(context.Context) error, error) {
			t, err := f.pick(rng, "sshd")
			if err != nil {
				return "", "", 0, nil, err
			}
			f.sbMu.Lock()
			resume, err := s.sb.PauseSSH()
			f.sbMu.Unlock()
			if err != nil {
				f.free(t)
				return t, "", 0, nil, err
			}
			return t, "SIGSTOP sshd and its sessions, SIGCONT after", span(rng, time.Second, 12*time.Second), func(context.Context) error {
				defer f.free(t)
				resume()
				return nil
			}, nil
		}},
		{"sshd_restart", 1, func(ctx context.Context, rng *rand.Rand) (string, string, time.Duration, func(context.Context) error, error) {
			t, err := f.pick(rng, "sshd")
			if err != nil {
				return "", "", 0, nil, err
			}
			defer f.free(t)
			f.sbMu.Lock()
			defer f.sbMu.Unlock()
			return t, "sshd and its sessions killed, started again", 0, nil, s.sb.RestartSSH(context.WithoutCancel(ctx))
		}},
		{"net_timeout", 2, func(ctx context.Context, rng *rand.Rand) (string, string, time.Duration, func(context.Context) error, error) {
			return f.toxic(rng, "timeout", []int{0, 1000, 2000, 3000}[rng.IntN(4)], span(rng, time.Second, 5*time.Second))
		}},
		{"net_reset", 2, func(ctx context.Context, rng *rand.Rand) (string, string, time.Duration, func(context.Context) error, error) {
			return f.toxic(rng, "reset_peer", 0, span(rng, 200*time.Millisecond, 2*time.Second))
		}},
		{"operator_release", 2, func(ctx context.Context, rng *rand.Rand) (string, string, time.Duration, func(context.Context) error, error) {
			return s.operatorRelease(ctx)
		}},
		{"long_query", 2, func(ctx context.Context, rng *rand.Rand) (string, string, time.Duration, func(context.Context) error, error) {
			return s.longQuery(ctx, rng)
		}},
	}
}

// toxic adds a toxiproxy toxic (timeout, reset_peer) to one of the
// network's links for d.
func (f *faults) toxic(rng *rand.Rand, typ string, timeoutMS int, d time.Duration) (string, string, time.Duration, func(context.Context) error, error) {
	links := map[string]*netsim.Link{"net-mysql": f.s.route.MySQL, "net-ssh": f.s.route.SSH}
	t, err := f.pick(rng, "net-mysql", "net-ssh")
	if err != nil {
		return "", "", 0, nil, err
	}
	l := links[t]
	name := "soak_" + typ
	js := fmt.Sprintf(`{"name":%q,"type":%q,"stream":"downstream","toxicity":1,"attributes":{"timeout":%d}}`, name, typ, timeoutMS)
	if _, err := l.Proxy().Toxics.AddToxicJson(bytes.NewReader([]byte(js))); err != nil {
		f.free(t)
		return t, "", 0, nil, err
	}
	return t, fmt.Sprintf("toxiproxy %s (timeout %d ms), removed after", typ, timeoutMS), d, func(ctx context.Context) error {
		defer f.free(t)
		return l.Proxy().Toxics.RemoveToxic(ctx, name)
	}, nil
}

// operatorRelease takes back a running claim as an operator does: on the
// dashboard, from the topic's page, with the claim the page shows (a
// claim that moved before the form was sent is refused and recorded as a
// fault that did nothing).
func (s *soak) operatorRelease(ctx context.Context) (string, string, time.Duration, func(context.Context) error, error) {
	var id int64
	err := s.primary.QueryRowContext(ctx, "SELECT topicFilterId FROM app.TopicFilter WHERE influencerRunning <> 0 ORDER BY RAND() LIMIT 1").Scan(&id)
	if err != nil {
		return "topic", "", 0, nil, fmt.Errorf("find a running topic: %w", err)
	}
	t := fmt.Sprintf("topic%d", id)
	_, note, err := s.op.release(ctx, id)
	return t, note, 0, nil, err
}

// longQuery holds a result table open for a while with a slow query, as a
// report on the primary would: publishes of that topic wait and retry.
func (s *soak) longQuery(ctx context.Context, rng *rand.Rand) (string, string, time.Duration, func(context.Context) error, error) {
	id := int64(1 + rng.IntN(s.opt.Topics))
	// A running topic publishes soon: hold its table.
	_ = s.primary.QueryRowContext(ctx, "SELECT topicFilterId FROM app.TopicFilter WHERE influencerRunning <> 0 ORDER BY RAND() LIMIT 1").Scan(&id)
	d := span(rng, 2*time.Second, 20*time.Second)
	t := fmt.Sprintf("topic%d", id)
	qctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() {
		_, err := s.primary.ExecContext(qctx, fmt.Sprintf("SELECT /* soak long query */ SLEEP(%.1f), (SELECT COUNT(*) FROM influencer.Post_%d), (SELECT COUNT(*) FROM influencer.Dynamics_%d)",
			d.Seconds(), id, id))
		done <- err
	}()
	// The query ends by itself; a primary restart may cut it short,
	// which is a fault too.
	return t, "SELECT SLEEP over both result tables", d + 100*time.Millisecond, func(context.Context) error {
		defer cancel()
		select {
		case err := <-done:
			_ = err // cut short by a restart or not, the query held the tables
		case <-time.After(time.Second):
		}
		return nil
	}, nil
}
