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
type idlePark struct {
	mu      sync.Mutex
	idle    bool          // the last claim found nothing due
	probing bool          // an instance holds the probe
	wake    chan struct{} // closed when a claim finds work
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
