// Package cleanup gives cleanup steps (unlock, release a lock or a claim,
// drop staging tables, restore a session, record a state) a context that
// outlives the caller's cancellation: a worker shutting down, or a run whose
// context ended, must still undo what it started, but never hang on it.
package cleanup

import (
	"context"
	"time"
)

// Timeout bounds every cleanup step run after the caller's context may
// have ended.
const Timeout = 10 * time.Second

// Context returns a context that keeps ctx's values but not its
// cancellation, and ends after Timeout.
func Context(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), Timeout)
}
