package monitor

import (
	"errors"
	"fmt"
)

// Sentinel errors. Callers test them with errors.Is; the errors returned
// wrap them with details (lag, limit, GTID positions).
var (
	// ErrReplicaStopped: a replication thread (IO or SQL) is not running,
	// or replication is not configured at all. The gate backs off for
	// GateConfig.StoppedBackoff.
	ErrReplicaStopped = errors.New("replica stopped")
	// ErrReplicaBehind: the measured lag is over the limit, or the lag is
	// unknown (no heartbeat row on the replica, a failed or stale sample).
	// The gate backs off for GateConfig.BehindBackoff.
	ErrReplicaBehind = errors.New("replica behind")
	// ErrGTIDTimeout: the replica did not reach the primary's position
	// within the wait's timeout; the caller should release its claim so a
	// fresher replica takes the topic.
	ErrGTIDTimeout = errors.New("replica did not reach the primary's GTID position in time")
	// ErrNoSample: the gate has not sampled the replica yet, so it is
	// closed (fail closed, as gh-ost opens its throttler only after a first
	// sample).
	ErrNoSample = errors.New("replica not sampled yet")
	// ErrSharedDomain: the replica writes its own binary log events in the
	// primary's GTID domain, so a crash during a worker's DDL can stop its
	// replication (see CheckLocalDomain). A warning, not a refusal: the
	// setting is common and only a crash at the wrong moment hurts.
	ErrSharedDomain = errors.New("replica shares the primary's GTID domain")
	// ErrPaused: an operator's pause covers everything this process may
	// claim (PauseWatch.Check); instances claim nothing and look again
	// after one sample interval.
	ErrPaused = errors.New("paused")
	// ErrPauseUnknown: the pauses on the primary could not be read for
	// longer than the stale bound, or not yet at all; the pause watch
	// fails closed, like the lag gate.
	ErrPauseUnknown = errors.New("pause state unknown")
	// ErrBadPause: a pause or resume was asked with an invalid value (a
	// reason too long, a negative duration, a priority out of range).
	ErrBadPause = errors.New("invalid pause")
	// ErrNoPauseTable: the pause table does not exist on the primary
	// (schema apply has not run since the upgrade); nobody can have paused.
	ErrNoPauseTable = errors.New("no pause table on the primary: run nonqueue schema apply")
	// ErrPauseNotFound: no pause in force has this id.
	ErrPauseNotFound = errors.New("no such pause in force")
	// ErrThrottled is wrapped by Throttle.Check's verdict while the
	// primary is too busy (or its load is unknown): nobody claims or
	// publishes.
	ErrThrottled = errors.New("primary throttled")
	// ErrNoPublishSlot: every publish slot stayed taken for the whole wait
	// (PublishSlots.Wait); the caller gives its claim back without
	// counting an attempt.
	ErrNoPublishSlot = errors.New("no publish slot free")
	// ErrConfig is wrapped by every *ConfigError.
	ErrConfig = errors.New("invalid monitor configuration")
)

// ConfigError names the configuration field that is wrong and why. Monitor
// configuration holds no secret, so the message may show the value.
type ConfigError struct {
	Field string
	Err   error
}

func (e *ConfigError) Error() string { return fmt.Sprintf("monitor: %s: %v", e.Field, e.Err) }

// Unwrap lets errors.Is find ErrConfig and the cause.
func (e *ConfigError) Unwrap() []error { return []error{ErrConfig, e.Err} }
