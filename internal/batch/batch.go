// Package batch groups items that arrive one at a time into batches, so a
// background writer turns many small statements into one.
package batch

import "time"

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
