package worker

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/monitor"
)

// awaitThrottle waits, before a publish, while the primary throttle is
// closed, at most its PublishWait; the claim's heartbeat goes on meanwhile.
// The instance shows as throttled (with the topic) while it waits. The
// error wraps monitor.ErrThrottled when the wait ran out, or is the
// context's.
func (in *Instance) awaitThrottle(ctx context.Context, topicID int64) error {
	th := in.deps.Throttle
	if th == nil {
		return nil
	}
	wait := th.Config.WithDefaults().PublishWait
	deadline := time.Now().Add(wait)
	waited := false
	for {
		backoff, err := th.Check()
		if err == nil {
			if waited {
				in.setState(ctx, monitor.StateRunning, topicID, 0, 0)
			}
			return nil
		}
		if !time.Now().Before(deadline) {
			return fmt.Errorf("publish held back for %v: %w", wait, err)
		}
		waited = true
		in.setStateReason(ctx, monitor.StateThrottled, throttleReason(err), topicID)
		t := time.NewTimer(min(backoff, time.Until(deadline)))
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for the primary throttle to publish: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// admit is the publish's admission (transfer.ShipParams.AdmitFunc): a
// publish slot taken on the publish session, its window recorded in run.
// Nil when publishes are not capped.
func (in *Instance) admit(run *monitor.Run) func(context.Context, *sql.Conn) (func(context.Context) error, error) {
	slots := in.deps.Slots
	if slots == nil || slots.Max <= 0 {
		return nil
	}
	return func(ctx context.Context, conn *sql.Conn) (func(context.Context) error, error) {
		slot, err := slots.Acquire(ctx, conn)
		if err != nil || slot == nil {
			return nil, err
		}
		run.PublishFrom = slot.Since
		return func(ctx context.Context) error {
			at, err := slot.Release(ctx)
			run.PublishTo = at
			return err
		}, nil
	}
}

// throttleReason is the registry's reason for a closed throttle:
// its reasons joined by ",".
func throttleReason(err error) string {
	var te *monitor.ThrottledError
	if errors.As(err, &te) {
		return strings.Join(te.Reasons, ",")
	}
	return ""
}
