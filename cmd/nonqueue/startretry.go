package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/nonqueue/nonqueue/internal/transient"
	"github.com/nonqueue/nonqueue/transfer"
	"github.com/nonqueue/nonqueue/worker"
)

// The wait between start-up tries doubles from startBackoffMin to
// startBackoffMax; each wait is drawn from its upper half, so hosts that
// booted together do not knock on the primary together.
const (
	startBackoffMin = time.Second
	startBackoffMax = 30 * time.Second
	// startTryTimeout bounds one try: a host that drops packets would
	// otherwise hold a dial for the kernel's two minutes.
	startTryTimeout = 30 * time.Second
)

// errStartTimeout is returned when the servers stayed unreachable for the
// whole [worker] start_timeout.
var errStartTimeout = errors.New("servers still unreachable at the end of the start timeout")

// openWithRetry calls open until it succeeds, fails with an error that
// retrying cannot cure (transientStartErr), ctx ends, or timeout passes
// (0: never). Each failed try is logged at WARN with its error, which names
// the server it tried to reach (no password is in it), and the wait before
// the next. open must close whatever it opened when it fails. When ctx ends,
// it returns ctx's error: the caller is stopping, not failing.
func openWithRetry[T any](ctx context.Context, log *slog.Logger, what string, timeout time.Duration, open func(context.Context) (T, error)) (T, error) {
	var zero T
	start := time.Now()
	wait := startBackoffMin
	for try := 1; ; try++ {
		tctx, cancel := context.WithTimeout(ctx, startTryTimeout)
		v, err := open(tctx)
		cancel()
		if err == nil {
			if try > 1 {
				log.InfoContext(ctx, what+": servers reachable", "tries", try, "waited", time.Since(start).Round(time.Millisecond))
			}
			return v, nil
		}
		if ctx.Err() != nil {
			return zero, ctx.Err()
		}
		if !transientStartErr(err) {
			return zero, err
		}
		d := wait/2 + rand.N(wait/2+1)
		if timeout > 0 {
			left := timeout - time.Since(start)
			if left <= 0 {
				return zero, fmt.Errorf("%w (%v): %w", errStartTimeout, timeout, err)
			}
			d = min(d, left) // the last try at the timeout
		}
		log.WarnContext(ctx, what+": cannot reach the servers; retrying", "err", err, "try", try, "retry_in", d.Round(time.Millisecond))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return zero, ctx.Err()
		case <-t.C:
		}
		wait = min(2*wait, startBackoffMax)
	}
}

// transientStartErr reports whether a failure to open a worker's or a
// follower's connections may cure itself: a server or sshd not up yet,
// restarting or busy, a network not up yet, a timeout. Everything else is
// permanent and reported at once: a bad configuration, access denied, an
// unknown database or table, an SSH host key that is wrong or unknown, an
// SSH login refused, a key file missing, or an error this does not know.
func transientStartErr(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	// Permanent whatever they wrap.
	if errors.Is(err, transfer.ErrHostKey) || errors.Is(err, transfer.ErrConfig) || errors.Is(err, worker.ErrConfig) {
		return false
	}
	if _, ok := errors.AsType[*ConfigError](err); ok {
		return false
	}
	return transient.Is(err)
}
