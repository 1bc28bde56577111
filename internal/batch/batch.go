// Package batch groups items that arrive one at a time into batches, so a
// background writer turns many small statements into one.
package batch

import (
	"context"
	"sync"
	"time"
)

// Run reads in until it is closed and calls flush with batches of at most
// max items. A batch starts with the first item that arrives and is flushed
// when it is full or maxDelay after that item, whichever comes first, so no
// item waits longer than maxDelay plus the flush before it. What is queued
// when in closes is flushed before Run returns. flush runs on Run's
// goroutine, one batch at a time.
func Run[T any](in <-chan T, max int, maxDelay time.Duration, flush func([]T)) {
	for first := range in {
		items := []T{first}
		timer := time.NewTimer(maxDelay)
		open := true
	collect:
		for len(items) < max {
			select {
			case it, ok := <-in:
				if !ok {
					open = false
					break collect
				}
				items = append(items, it)
			case <-timer.C:
				break collect
			}
		}
		timer.Stop()
		flush(items)
		if !open {
			return
		}
	}
}

// Batcher runs Run on its own goroutine behind a queue that is safe to use
// after Close: items added then are flushed at once, on the caller's
// goroutine, so a straggler is neither lost nor a panic on a closed channel.
type Batcher[T any] struct {
	flush func([]T)
	done  chan struct{}

	mu     sync.Mutex // guards closed and sends on in
	closed bool
	in     chan T
}

// Start starts a Batcher that flushes at most max items at a time, at most
// maxDelay after the first of them was added.
func Start[T any](max int, maxDelay time.Duration, flush func([]T)) *Batcher[T] {
	b := &Batcher[T]{flush: flush, done: make(chan struct{}), in: make(chan T, max)}
	go func() {
		defer close(b.done)
		Run(b.in, max, maxDelay, flush)
	}()
	return b
}

// Add queues items; it blocks only while a full batch is being flushed.
// After Close it flushes them itself.
func (b *Batcher[T]) Add(items ...T) {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		b.flush(items)
		return
	}
	for _, it := range items {
		b.in <- it
	}
	b.mu.Unlock()
}

// Close flushes what is queued and stops; ctx bounds the wait. It is
// idempotent.
func (b *Batcher[T]) Close(ctx context.Context) error {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.in)
	}
	b.mu.Unlock()
	select {
	case <-b.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
