package monitor

import (
	"context"
	"log/slog"
	"time"

	"github.com/nonqueue/nonqueue/internal/batch"
)

// RunWriter records runs in the background, several per statement. A busy
// process ends many runs a second; one multi-row INSERT is one commit on
// the primary and one transaction for every replica to apply, instead of
// one per run (River batches its job completions for the same reason). A
// run is written at most maxDelay after it ends; Close writes what is left.
// Writes are best effort, as History's are: a failure is logged, never
// retried into a growing backlog.
type RunWriter struct {
	h   *History
	log *slog.Logger
	b   *batch.Batcher[*Run]
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
	w := &RunWriter{h: h, log: log}
	w.b = batch.Start(maxRunBatch, maxDelay, w.write)
	return w
}

// Record queues r, stamping its end time if unset. It blocks only while
// a full batch is being written. After Close it writes r at once.
func (w *RunWriter) Record(r *Run) {
	if r.FinishedAt.IsZero() {
		r.FinishedAt = time.Now()
	}
	w.b.Add(r)
}

// Close writes the queued runs and stops the writer; ctx bounds the wait.
// It is idempotent.
func (w *RunWriter) Close(ctx context.Context) error { return w.b.Close(ctx) }

func (w *RunWriter) write(runs []*Run) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.h.RecordRuns(ctx, runs); err != nil {
		w.log.WarnContext(ctx, "record runs", "runs", len(runs), "err", err)
	}
}
