package batch

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

func TestRunFlushesFullBatchesAndTheRestOnClose(t *testing.T) {
	in := make(chan int, 10)
	for i := range 7 {
		in <- i
	}
	close(in)
	var got [][]int
	Run(in, 3, time.Hour, func(b []int) { got = append(got, slices.Clone(b)) })
	want := [][]int{{0, 1, 2}, {3, 4, 5}, {6}}
	if len(got) != len(want) {
		t.Fatalf("batches %v, want %v", got, want)
	}
	for i := range want {
		if !slices.Equal(got[i], want[i]) {
			t.Fatalf("batches %v, want %v", got, want)
		}
	}
}

func TestRunFlushesAfterMaxDelay(t *testing.T) {
	in := make(chan int)
	flushed := make(chan []int, 2)
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(in, 100, 20*time.Millisecond, func(b []int) { flushed <- slices.Clone(b) })
	}()
	in <- 1
	in <- 2
	select {
	case b := <-flushed:
		if !slices.Equal(b, []int{1, 2}) {
			t.Fatalf("batch %v, want [1 2]", b)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a partial batch was not flushed after its delay")
	}
	close(in)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its input closed")
	}
	if len(flushed) != 0 {
		t.Fatalf("an empty batch was flushed: %v", <-flushed)
	}
}

func TestBatcherFlushesOnCloseAndAfter(t *testing.T) {
	var mu sync.Mutex
	var got []int
	flush := func(b []int) { mu.Lock(); got = append(got, b...); mu.Unlock() }
	b := Start(10, time.Hour, flush)
	b.Add(1, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(ctx); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	b.Add(3) // a straggler: flushed at once, no panic
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(got, []int{1, 2, 3}) {
		t.Fatalf("flushed %v, want [1 2 3]", got)
	}
}
