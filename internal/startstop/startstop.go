// Package startstop is the lifecycle every nonqueue background service
// shares (lag heartbeat, lag gate, reaper): Start launches one goroutine
// and returns; Stop cancels it and waits, is idempotent and safe before
// Start, and the service may be started again afterwards. Modelled on
// River's rivershared/startstop.
package startstop

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// ErrStarted is returned by Start on a running service.
var ErrStarted = errors.New("already started")

// Loop holds one service's goroutine. The zero value is ready to use.
type Loop struct {
	mu     sync.Mutex
	cancel context.CancelFunc
	done   chan struct{}
}

// Start runs run(ctx) in a goroutine, where ctx is cancelled by Stop or by
// the caller's ctx. It fails with ErrStarted if the loop is running.
func (l *Loop) Start(ctx context.Context, run func(ctx context.Context)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cancel != nil {
		return ErrStarted
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	l.cancel, l.done = cancel, done
	go func() {
		defer close(done)
		run(ctx)
	}()
	return nil
}

// Stop cancels the goroutine and waits for it to return, or for ctx. It is
// idempotent and safe before Start.
func (l *Loop) Stop(ctx context.Context) error {
	l.mu.Lock()
	cancel, done := l.cancel, l.done
	l.cancel, l.done = nil, nil
	l.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("stop: %w", ctx.Err())
	}
}
