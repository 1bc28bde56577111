package worker

import (
	"context"
	"sync"
	"time"
)

// idlePark makes a process's idle cost on the primary per process, not per
// instance: while nothing is due, one instance at a time (the prober)
// claims every IdleWait and the others park; a claim that finds work wakes
// them all, and their claims are combined into one statement by the
// queue's claim batching. A newly due topic is therefore picked up within
// IdleWait plus a claim, as before, while an idle process sends one claim
// per IdleWait whatever its instance count.
//
// While idle, the prober does not claim either: it probes (Instance.probe),
// one read that says whether a claim would find work and carries the
// process's other idle questions, and claims only when it would. The
// process's periodic services ask the park whether they may rest
// (Pool.Run wires them): the pause watch (the probe reads the pauses),
// the lag heartbeat (the probe's position proves the lag), the reaper
// (the probe looks for expired leases).
type idlePark struct {
	mu      sync.Mutex
	idle    bool          // the last claim found nothing due
	probing bool          // an instance holds the probe
	wake    chan struct{} // closed when a claim finds work
	// The last probe: when it answered, and whether it saw an expired
	// lease.
	probedAt time.Time
	expired  bool
}

// isIdle reports whether the last claim found nothing due.
func (p *idlePark) isIdle() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.idle
}

// probed records a probe's answer about expired leases.
func (p *idlePark) probed(expired bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.probedAt, p.expired = time.Now(), expired
}

// restReaper reports whether the reaper may skip a pass: the process is
// idle and a probe within the window saw no expired lease.
func (p *idlePark) restReaper(window time.Duration) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.idle && !p.expired && !p.probedAt.IsZero() && time.Since(p.probedAt) < window
}

func newIdlePark() *idlePark { return &idlePark{wake: make(chan struct{})} }

// enter says whether the caller should claim now. While the process is
// idle and another instance probes, it parks until work is found, ctx is
// done or maxPark passes (the prober may be held by the gate or gone),
// and returns false: the caller loops and checks its gates again.
func (p *idlePark) enter(ctx context.Context, maxPark time.Duration) (claim, prober bool) {
	p.mu.Lock()
	if !p.idle {
		p.mu.Unlock()
		return true, false
	}
	if !p.probing {
		p.probing = true
		p.mu.Unlock()
		return true, true
	}
	wake := p.wake
	p.mu.Unlock()
	t := time.NewTimer(maxPark)
	defer t.Stop()
	select {
	case <-wake:
	case <-ctx.Done():
	case <-t.C:
	}
	return false, false
}

// leave records a claim's outcome: found says it got a topic.
func (p *idlePark) leave(prober, found bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if prober {
		p.probing = false
	}
	if found {
		if p.idle {
			p.idle = false
			close(p.wake)
			p.wake = make(chan struct{})
		}
		return
	}
	p.idle = true
}
