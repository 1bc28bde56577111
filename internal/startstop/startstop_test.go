package startstop

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestLoop: Stop before Start is a no-op, a second Start fails while
// running, Stop waits for the goroutine, and the loop can start again.
func TestLoop(t *testing.T) {
	t.Parallel()
	var l Loop
	if err := l.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{}, 2)
	run := func(ctx context.Context) { <-ctx.Done(); exited <- struct{}{} }
	for range 2 {
		if err := l.Start(context.Background(), run); err != nil {
			t.Fatal(err)
		}
		if err := l.Start(context.Background(), run); !errors.Is(err, ErrStarted) {
			t.Fatalf("second Start: %v", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := l.Stop(ctx); err != nil {
			t.Fatal(err)
		}
		cancel()
		select {
		case <-exited:
		default:
			t.Fatal("Stop returned before the goroutine did")
		}
	}
}
