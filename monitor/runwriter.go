package monitor

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/nonqueue/nonqueue/internal/batch"
)

// RunWriter records runs in the background, several per statement. A busy
// process ends many runs a second; one multi-row INSERT is one commit on
// the primary and one transaction for every replica to apply, instead of
// one per run (River batches its job completions for the same reason). A
// run is written at most MaxDelay after it ends; Close writes what is left.
// Writes are best effort, as History's are: a failure is logged, never
// retried into a growing backlog.
type RunWriter struct {
	h        *History
	log      *slog.Logger
	maxDelay time.Duration
	done     chan struct{}

	mu     sync.Mutex // guards closed and sends on in
	closed bool
	in     chan *Run
}

// Batching limits of a RunWriter: how long a run may wait for company, and
// how many rows one statement carries.
const (
	DefaultRunDelay = 100 * time.Millisecond
	maxRunBatch     = 128
)

// NewRunWriter starts a writer; maxDelay ≤ 0 means DefaultRunDelay.
func NewRunWriter(h *History, log *slog.Logger, maxDelay time.Duration) *RunWriter {
	if maxDelay <= 0 {
		maxDelay = DefaultRunDelay
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	w := &RunWriter{h: h, log: log, maxDelay: maxDelay, in: make(chan *Run, maxRunBatch), done: make(chan struct{})}
	go w.loop()
	return w
}

// Record queues r, stamping its end time if unset. It blocks only while
// a full batch is being written. After Close it writes r at once.
func (w *RunWriter) Record(r *Run) {
	if r.FinishedAt.IsZero() {
		r.FinishedAt = time.Now()
	}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		w.write([]*Run{r})
		return
	}
	w.in <- r
	w.mu.Unlock()
}

// Close writes the queued runs and stops the writer; ctx bounds the wait.
// It is idempotent.
func (w *RunWriter) Close(ctx context.Context) error {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		close(w.in)
	}
	w.mu.Unlock()
	select {
	case <-w.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (w *RunWriter) loop() {
	defer close(w.done)
	batch.Run(w.in, maxRunBatch, w.maxDelay, w.write)
}

func (w *RunWriter) write(runs []*Run) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.h.RecordRuns(ctx, runs); err != nil {
		w.log.WarnContext(ctx, "record runs", "runs", len(runs), "err", err)
	}
}
