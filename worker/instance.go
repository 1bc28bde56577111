package worker

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nonqueue/nonqueue/internal/cleanup"
	"github.com/nonqueue/nonqueue/internal/flavor"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/procs"
	"github.com/nonqueue/nonqueue/queue"
	"github.com/nonqueue/nonqueue/transfer"
)

// Deps are the parts an instance drives, shared by all instances of a
// process.
type Deps struct {
	Queue   *queue.Queue
	History *monitor.History
	Gate    *monitor.Gate
	// Pause, if set, is the operators' pauses as last read on the
	// primary: consulted before each claim, never queried per claim.
	Pause *monitor.PauseWatch
	// Throttle, if set, is the primary throttle (the Pool starts it),
	// checked before every claim and before every publish.
	Throttle *monitor.Throttle
	// Slots, if set, caps the publishes running at once on the primary.
	Slots   *monitor.PublishSlots
	Flavor  flavor.Flavor
	Primary *sql.DB // publish, GTID position
	Replica *sql.DB // the local replica: procedure, export, GTID wait
	Runner  *procs.Runner
	Shipper *transfer.Shipper
	// ReplicaDatadir is the local replica's @@datadir; ReplicaName is
	// recorded in the run history (host:port of the replica).
	ReplicaDatadir string
	ReplicaName    string
	Logger         *slog.Logger
	// Observer, if set, hears about every run (metrics, tests).
	Observer func(*monitor.Run)
	// StateFunc, if set, hears every instance state change (metrics).
	StateFunc func(instanceID int64, state string)
	// ReapedFunc, if set, hears every claim this process's reaper takes
	// back (metrics).
	ReapedFunc func(queue.Reaped)
}

// Instance is one worker loop with a stable id.
type Instance struct {
	ID     int64
	Number int
	cfg    Config
	deps   *Deps
	log    *slog.Logger

	// runs batches the run history (the pool's); nil records each run
	// right away.
	runs *monitor.RunWriter
	// dropper drops swapped-out tables on the primary in batches (the
	// pool's); nil drops them at once.
	dropper *transfer.Dropper

	// Registry bookkeeping, under stateMu: the instance's goroutine and
	// its shipment (waiting for the throttle to publish) both write it.
	stateMu               sync.Mutex
	lastState, lastReason string
	lastWrite             time.Time
	// Runs ended since the last registry write; a shipment ends its run
	// on its own goroutine.
	pendingRan, pendingFailed atomic.Int64
	serverID                  uint32 // the replica's, for the replication source record
	lastSource                uint32 // replication source last recorded

	// slot holds the one shipment an instance may have in flight while it
	// computes its next topic (Config.Pipeline); shipping counts them.
	slot     chan struct{}
	shipping sync.WaitGroup

	// park is the pool's idle park (nil: each instance polls on its own).
	park *idlePark
	// leases renews the leases of the pool's claims together (nil: each
	// run renews its own, Queue.Heartbeat).
	leases *queue.Leases
}

// registryRefresh is how often an instance whose state does not change
// refreshes its registry heartbeat.
const registryRefresh = 5 * time.Second

// errStop says the instance should stop looping (soft context done).
var errStop = errors.New("stopping")

// RunOnce makes one pass of the cycle: wait for the gate, claim, run,
// publish. soft stops new work; hard cancels work in flight. It returns
// whether a topic was processed (in any outcome) and an error only for
// failures of the coordination itself (primary unreachable), which the
// caller logs and backs off from. The topic's run is over when it returns.
func (in *Instance) RunOnce(soft, hard context.Context) (bool, error) {
	return in.runOnce(soft, hard, false)
}

// runOnce is RunOnce; with pipeline, a run whose procedure succeeded is
// shipped and published on its own goroutine once the instance's previous
// shipment is over, and runOnce returns without waiting for it (Wait does).
func (in *Instance) runOnce(soft, hard context.Context, pipeline bool) (bool, error) {
	if soft.Err() != nil {
		return false, errStop
	}
	if backoff, err := in.deps.Gate.Check(); err != nil {
		state := monitor.StateLagWait
		if errors.Is(err, monitor.ErrReplicaStopped) {
			state = monitor.StateStopped
		}
		in.setState(soft, state, 0, 0, 0)
		in.log.DebugContext(soft, "lag gate closed", "err", err, "backoff", backoff)
		sleep(soft, backoff)
		return false, nil
	}
	if backoff, err := in.deps.Throttle.Check(); err != nil {
		in.setStateReason(soft, monitor.StateThrottled, throttleReason(err), 0)
		in.log.DebugContext(soft, "primary throttled", "err", err, "backoff", backoff)
		sleep(soft, backoff)
		return false, nil
	}
	minPriority := in.cfg.MinPriority
	if pw := in.deps.Pause; pw != nil {
		// A pause of everything here: claim nothing (runs in flight go
		// on). A pause below a priority raises the claim's minimum.
		var backoff time.Duration
		var err error
		if minPriority, backoff, err = pw.Check(minPriority); err != nil {
			in.setState(soft, monitor.StatePaused, 0, 0, 0)
			in.log.DebugContext(soft, "paused", "err", err, "backoff", backoff)
			sleep(soft, backoff)
			return false, nil
		}
	}
	prober := false
	if in.park != nil {
		var claimNow bool
		if claimNow, prober = in.park.enter(soft, 2*in.cfg.IdleWait); !claimNow {
			in.setState(soft, monitor.StateIdle, 0, 0, 0)
			return false, nil
		}
	}
	if prober && in.deps.Pause != nil && in.park.isIdle() {
		// Idle: look before claiming.
		due, perr := in.probe(soft)
		if !due || perr != nil {
			defer in.park.leave(prober, false)
			if perr != nil {
				if soft.Err() != nil {
					return false, errStop
				}
				return false, perr
			}
			in.setState(soft, monitor.StateIdle, 0, 0, 0)
			sleep(soft, in.cfg.IdleWait)
			return false, nil
		}
		// The probe read the pauses too: claim with what they say now.
		var err error
		if minPriority, _, err = in.deps.Pause.Check(in.cfg.MinPriority); err != nil {
			defer in.park.leave(prober, false)
			return false, nil
		}
	}
	start := time.Now()
	// The claim runs on a context a shutdown does not cancel: a claim
	// UPDATE that commits on the server while the client gives up would
	// leave the topic marked running until its lease ran out.
	cctx, cancel := cleanup.Context(soft)
	claim, err := in.deps.Queue.Claim(cctx, &queue.ClaimParams{InstanceID: in.ID, MinPriority: minPriority})
	cancel()
	if in.park != nil {
		if errors.Is(err, queue.ErrNoneDue) {
			// The prober sleeps its IdleWait holding the probe, so the
			// process makes one claim per IdleWait.
			defer in.park.leave(prober, false)
		} else {
			in.park.leave(prober, err == nil)
		}
	}
	if err == nil && soft.Err() != nil {
		// Stopping: give it straight back, not counted as an attempt.
		rctx, cancel := cleanup.Context(soft)
		defer cancel()
		if _, rerr := in.deps.Queue.Release(rctx, claim, &queue.ReleaseParams{}); rerr != nil {
			in.log.ErrorContext(rctx, "release claim at shutdown", "topic_id", claim.TopicID, "err", rerr)
		}
		return false, errStop
	}
	if errors.Is(err, queue.ErrNoneDue) {
		in.setState(soft, monitor.StateIdle, 0, 0, 0)
		sleep(soft, in.cfg.IdleWait)
		return false, nil
	}
	if errors.Is(err, queue.ErrClaimLost) {
		// Taken back between the claim's two statements (this process
		// was paused past its lease): nothing was started, nothing to undo.
		in.log.WarnContext(soft, "claim lost before the run started", "err", err)
		return false, nil
	}
	if err != nil {
		if soft.Err() != nil {
			return false, errStop
		}
		return false, err
	}
	if backoff, gerr := in.deps.Gate.Check(); gerr != nil {
		// The gate closed while this claim was on its way: another
		// instance here found the replica behind (a GTID wait timed out,
		// Gate.Hold) or the lag rose. Give the topic straight back, not
		// counted, for a fresher replica; nothing was started.
		rctx, cancel := cleanup.Context(soft)
		defer cancel()
		if _, rerr := in.deps.Queue.Release(rctx, claim, &queue.ReleaseParams{}); rerr != nil {
			in.log.ErrorContext(rctx, "give back a claim made as the lag gate closed", "topic_id", claim.TopicID, "err", rerr)
		}
		in.log.DebugContext(soft, "lag gate closed during the claim; topic given back", "topic_id", claim.TopicID, "err", gerr)
		sleep(soft, backoff)
		return false, nil
	}
	if pw := in.deps.Pause; pw != nil && pw.Covers(claim.Priority) {
		// A pause arrived while this claim was on its way: give the topic
		// back, not counted; nothing was started.
		rctx, cancel := cleanup.Context(soft)
		defer cancel()
		if _, rerr := in.deps.Queue.Release(rctx, claim, &queue.ReleaseParams{}); rerr != nil {
			in.log.ErrorContext(rctx, "give back a claim made as a pause arrived", "topic_id", claim.TopicID, "err", rerr)
		}
		in.log.DebugContext(soft, "paused during the claim; topic given back", "topic_id", claim.TopicID)
		return false, nil
	}
	run := &monitor.Run{
		TopicID: claim.TopicID, InstanceID: in.ID, Replica: in.deps.ReplicaName, ClaimToken: claim.Token,
		Scope: claim.Scope, StartedAt: start, Claim: time.Since(start),
	}
	f := in.compute(hard, claim, run)
	switch {
	case f == nil:
		in.end(run)
	case !pipeline:
		in.ship(f)
		in.end(run)
	default:
		if in.slot == nil {
			in.slot = make(chan struct{}, 1)
		}
		// The previous shipment ends on its own (its steps are bounded,
		// and hard cancels them).
		in.slot <- struct{}{}
		in.shipping.Add(1)
		go func() {
			defer in.shipping.Done()
			defer func() { <-in.slot }()
			in.ship(f)
			in.end(run)
		}()
	}
	return true, nil
}

// probe is an idle process's look at the primary, in place of a claim:
// one statement (monitor.PauseWatch.ReadWith) reads the pauses covering
// this replica and, beside them, the priority of the topic a claim would
// take (queue.DueProbe), whether a lease has expired (queue.ExpiredProbe),
// the primary's GTID position, which proves the replica's lag to the
// gate without a heartbeat write (monitor.Gate.Prove), and, when the
// throttle watches it, the primary's Threads_running. It reports whether
// a claim would find a topic at or above the minimum priority that the
// pauses just read leave this process.
func (in *Instance) probe(ctx context.Context) (bool, error) {
	var (
		top     sql.NullInt64
		expired bool
		pos     sql.NullString
	)
	dueSQL, dueArgs := in.deps.Queue.DueProbe(in.cfg.MinPriority)
	extras := []monitor.Scalar{
		{SQL: dueSQL, Args: dueArgs, Dest: &top},
		{SQL: in.deps.Queue.ExpiredProbe(), Dest: &expired},
	}
	var threads sql.NullInt64
	if in.deps.Flavor != nil {
		extras = append(extras, monitor.Scalar{SQL: in.deps.Flavor.PrimaryPosExpr(), Dest: &pos})
		if in.deps.Throttle.ProbesThreadsRunning() {
			extras = append(extras, monitor.Scalar{SQL: in.deps.Flavor.ThreadsRunningExpr(), Dest: &threads})
		}
	}
	start := time.Now()
	if err := in.deps.Pause.ReadWith(ctx, extras...); err != nil {
		return false, fmt.Errorf("probe for due topics: %w", err)
	}
	in.deps.Gate.Prove(pos.String, start)
	if threads.Valid {
		in.deps.Throttle.FeedThreadsRunning(ctx, threads.Int64, start)
	}
	in.park.probed(expired)
	// Paused (perr): nothing to claim; the next pass says so.
	minPriority, _, perr := in.deps.Pause.Check(in.cfg.MinPriority)
	return perr == nil && top.Valid && top.Int64 >= minPriority, nil
}

// Wait returns once the instance's shipment in flight, if any, is over.
func (in *Instance) Wait() { in.shipping.Wait() }

// end records a run that reached its outcome. Its counters travel with
// the next registry write (a state change or the refresh).
func (in *Instance) end(run *monitor.Run) {
	in.record(run)
	in.pendingRan.Add(1)
	if run.Outcome != monitor.OutcomeDone {
		in.pendingFailed.Add(1)
	}
}

// inflight is a run whose procedure succeeded, on its way to the primary:
// the claim, the run's context (cancelled when the lease is lost), the
// replica session that holds the topic's tables, and stop, which ends the
// claim's lease heartbeat.
type inflight struct {
	claim *queue.Claim
	run   *monitor.Run
	ctx   context.Context
	rs    *transfer.ReplicaSession
	log   *slog.Logger
	stop  func()
}

// compute takes a claimed topic through the GTID wait and the procedure.
// It returns the run, still holding its claim, its heartbeat and its
// replica session, for ship; or nil when the run already reached its
// outcome (released, failed or lost), recorded in run.
func (in *Instance) compute(hard context.Context, claim *queue.Claim, run *monitor.Run) (f *inflight) {
	log := in.log.With("topic_id", claim.TopicID, "claim_token", claim.Token, "scope", claim.Scope)
	in.setState(hard, monitor.StateRunning, claim.TopicID, 0, 0)

	// The run's own context: cancelled by hard shutdown or when the lease
	// is lost (the heartbeat finds the claim gone).
	ctx, cancel := context.WithCancelCause(hard)
	stop := in.keepLease(ctx, cancel, claim, log)
	defer func() {
		if f == nil {
			stop()
		}
	}()

	// Causal wait: the procedure must see every write committed on the
	// primary before the claim.
	t0 := time.Now()
	var err error
	if claim.PrimaryPos != "" {
		err = monitor.WaitForPosition(ctx, in.deps.Flavor, in.deps.Replica, claim.PrimaryPos, in.cfg.GTIDWait)
	} else {
		_, err = monitor.WaitForPrimary(ctx, in.deps.Flavor, in.deps.Primary, in.deps.Replica, in.cfg.GTIDWait)
	}
	run.LagWait = time.Since(t0)
	if err != nil {
		in.giveUp(ctx, claim, run, log, err, errors.Is(err, monitor.ErrGTIDTimeout))
		return nil
	}

	// The procedure, on the local replica, on the run's one session there:
	// it holds the topic's replica lock from the call to the drop of the
	// result tables, so an older, lost run of the topic on this replica can
	// no longer touch them (docs/design.md, "One run per topic per
	// replica"; see transfer.LockReplica).
	t0 = time.Now()
	fence := func(ctx context.Context) error { return in.deps.Queue.Holds(ctx, claim) }
	rs, err := in.deps.Shipper.LockReplica(ctx, &transfer.ReplicaLockParams{
		TopicID: claim.TopicID, Replica: in.deps.Replica,
		Primary: in.deps.Primary, LockName: in.deps.Queue.LockName(claim.TopicID), Fence: fence,
	})
	if err != nil {
		run.Proc = time.Since(t0)
		// Busy: an older run's session that could not be ended holds the
		// tables; not the topic's fault, and another replica may take it.
		in.giveUp(ctx, claim, run, log, fmt.Errorf("replica: %w", err), errors.Is(err, transfer.ErrResultsBusy))
		return nil
	}
	// One log per topic, rewritten by each run (the run history keeps
	// every run's figures; a failed run's log is kept beside it as
	// <topic>.failed.log): the directory stays as big as the topic table.
	res, err := in.deps.Runner.Run(ctx, &procs.RunParams{
		TopicID: claim.TopicID, Scope: claim.Scope,
		LogPath: filepath.Join(in.cfg.LogDir, fmt.Sprintf("%d.log", claim.TopicID)),
		Label:   fmt.Sprintf("claim token %d, instance %d", claim.Token, in.ID),
		Conn:    rs.Conn(),
	})
	run.Proc = time.Since(t0)
	if res != nil {
		run.LogPath = res.LogPath
	}
	if err != nil {
		in.dropLocal(rs, log)
		in.giveUp(ctx, claim, run, log, fmt.Errorf("procedure: %w", err), false)
		return nil
	}
	return &inflight{claim: claim, run: run, ctx: ctx, rs: rs, log: log, stop: stop}
}

// ship ships and publishes a computed run's results, finishes its claim
// and ends the run: its replica session, then its heartbeat.
func (in *Instance) ship(f *inflight) {
	defer f.stop()
	defer f.rs.Close()
	ctx, claim, run, rs, log := f.ctx, f.claim, f.run, f.rs, f.log
	fence := func(ctx context.Context) error { return in.deps.Queue.Holds(ctx, claim) }

	// Yield to the primary: no publish while the throttle is closed.
	if err := in.awaitThrottle(ctx, claim.TopicID); err != nil {
		in.dropLocal(rs, log)
		in.giveUp(ctx, claim, run, log, err, errors.Is(err, monitor.ErrThrottled))
		return
	}

	// Ship and publish; the finish happens under the publish lock, right
	// after the swap, so the reaper cannot take the claim in between.
	finished := false
	ship, err := in.deps.Shipper.Ship(ctx, &transfer.ShipParams{
		TopicID: claim.TopicID, Token: claim.Token,
		Replica: in.deps.Replica, ReplicaDatadir: in.deps.ReplicaDatadir,
		Primary: in.deps.Primary, LockName: in.deps.Queue.LockName(claim.TopicID),
		// Under the topic lock a read proves the claim (see Queue.Holds),
		// sent with the lock when the pool allows (HoldsQuery).
		Fence: fence, FenceQuery: in.deps.Queue.HoldsQuery(claim),
		Commit: func(ctx context.Context) error {
			err := in.deps.Queue.Finish(ctx, claim)
			finished = err == nil
			return err
		},
		DropReplica:    true,
		Dropper:        in.dropper,
		ReplicaSession: rs,
		AdmitFunc:      in.admit(run),
	})
	if ship != nil {
		run.Bytes, run.Transfer, run.Publish = ship.Bytes, ship.TransferTime, ship.PublishTime
	}
	if err != nil {
		in.dropLocal(rs, log) // the shipment may have stopped before its own drop
	}
	if err != nil && !finished {
		in.giveUp(ctx, claim, run, log, fmt.Errorf("transfer: %w", err), errors.Is(err, monitor.ErrNoPublishSlot))
		return
	}
	if err != nil {
		log.WarnContext(ctx, "published and finished, cleanup failed", "err", err)
	}
	run.Outcome = monitor.OutcomeDone
	log.DebugContext(ctx, "topic done", "bytes", run.Bytes, "proc", run.Proc, "transfer", run.Transfer, "publish", run.Publish)
}

// giveUp releases the claim after a failed step, recording why. notFault
// releases without counting an attempt (replica behind). A lost claim is
// left alone: it is someone else's now.
func (in *Instance) giveUp(ctx context.Context, claim *queue.Claim, run *monitor.Run, log *slog.Logger, err error, notFault bool) {
	if cause := context.Cause(ctx); errors.Is(cause, queue.ErrClaimLost) || errors.Is(err, queue.ErrClaimLost) || errors.Is(err, transfer.ErrFenced) {
		run.Outcome, run.Error, run.Err = monitor.OutcomeLost, err.Error(), err
		log.WarnContext(ctx, "claim lost during the run; nothing published", "err", err)
		return
	}
	cctx, cancel := cleanup.Context(ctx)
	defer cancel()
	shutdown := ctx.Err() != nil
	p := &queue.ReleaseParams{Error: err.Error()}
	switch {
	case shutdown:
		p.Error = "released at shutdown: " + err.Error()
		run.Outcome = monitor.OutcomeReleased
	case notFault:
		run.Outcome = monitor.OutcomeReleased
		if errors.Is(err, monitor.ErrGTIDTimeout) {
			// This replica proved itself behind: back it off (every
			// instance of the process, through the shared gate), not the
			// topic, which stays due for fresher replicas.
			in.deps.Gate.Hold(in.cfg.GTIDBackoff, err)
			log.WarnContext(cctx, "replica behind the claim's position; no claims from this replica for a while", "backoff", in.cfg.GTIDBackoff)
		}
	default:
		p.CountAttempt = true
		p.Backoff = in.cfg.Backoff(claim.Attempts + 1)
		run.Outcome = monitor.OutcomeFailed
	}
	run.Error, run.Err = err.Error(), err
	parked, rerr := in.deps.Queue.Release(cctx, claim, p)
	if rerr != nil {
		if errors.Is(rerr, queue.ErrClaimLost) {
			run.Outcome = monitor.OutcomeLost
		}
		log.ErrorContext(cctx, "release failed", "err", rerr, "cause", err)
		return
	}
	if parked {
		run.Outcome = monitor.OutcomeParked
	}
	log.WarnContext(cctx, "topic released", "outcome", run.Outcome, "err", err, "backoff", p.Backoff)
}

// dropLocal drops a failed run's result tables on the replica through its
// session, then ends the session (freeing the topic's replica lock). When
// the session is gone (a newer claim's run killed it), the tables are that
// run's and stay.
func (in *Instance) dropLocal(rs *transfer.ReplicaSession, log *slog.Logger) {
	ctx, cancel := cleanup.Context(context.Background())
	defer cancel()
	if err := rs.Drop(ctx); err != nil {
		log.WarnContext(ctx, "drop result tables on the replica", "err", err)
	}
	rs.Close()
}

func (in *Instance) record(run *monitor.Run) {
	if in.runs != nil {
		in.runs.Record(run)
	} else {
		ctx, cancel := cleanup.Context(context.Background())
		defer cancel()
		if err := in.deps.History.RecordRun(ctx, run); err != nil {
			in.log.WarnContext(ctx, "record run", "err", err)
		}
	}
	if in.deps.Observer != nil {
		in.deps.Observer(run)
	}
}

func (in *Instance) setState(ctx context.Context, state string, topicID int64, ran, failed int) {
	in.writeState(ctx, state, "", topicID, ran, failed)
}

// setStateReason records a waiting state and why (the throttle reasons).
func (in *Instance) setStateReason(ctx context.Context, state, reason string, topicID int64) {
	in.writeState(ctx, state, reason, topicID, 0, 0)
}

func (in *Instance) writeState(ctx context.Context, state, reason string, topicID int64, ran, failed int) {
	in.stateMu.Lock()
	defer in.stateMu.Unlock()
	pendingRan, pendingFailed := in.pendingRan.Swap(0), in.pendingFailed.Swap(0)
	ran += int(pendingRan)
	failed += int(pendingFailed)
	// A busy instance stays "running" from topic to topic: its row is
	// written when the state changes and refreshed every registryRefresh
	// (with the counters and the topic of the moment), not once per topic.
	// The topic table says which topic an instance holds right now.
	// Counters not written go back for the next write.
	unwritten := func() {
		in.pendingRan.Add(pendingRan)
		in.pendingFailed.Add(pendingFailed)
	}
	if state == in.lastState && reason == in.lastReason && time.Since(in.lastWrite) < registryRefresh {
		unwritten()
		return
	}
	if in.park != nil && state == monitor.StateIdle && state == in.lastState && reason == in.lastReason &&
		pendingRan == 0 && pendingFailed == 0 {
		// An idle row with nothing new: the pool refreshes its idle rows
		// in one statement (refreshIdle).
		return
	}
	if in.deps.StateFunc != nil && state != in.lastState {
		in.deps.StateFunc(in.ID, state)
	}
	ctx, cancel := cleanup.Context(ctx)
	defer cancel()
	if err := in.deps.History.SetStateReason(ctx, in.ID, state, reason, topicID, ran, failed); err != nil {
		in.log.DebugContext(ctx, "registry", "err", err)
		unwritten()
		return
	}
	in.lastState, in.lastReason, in.lastWrite = state, reason, time.Now()
	// Where the replica replicates from, for the dashboard's tree: written
	// when the gate's sample first shows it or shows it changed.
	if src := in.deps.Gate.Status().SourceServerID; src != 0 && src != in.lastSource {
		if err := in.deps.History.SetSource(ctx, in.serverID, src); err != nil {
			in.log.DebugContext(ctx, "registry", "err", err)
			return
		}
		in.lastSource = src
	}
}

// sleep waits d or until ctx is done.
func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// keepLease keeps claim's lease for the run of ctx: with the pool's
// keeper, with the others' in one statement per beat; alone, with a
// heartbeat of its own every HeartbeatInterval. A lost claim cancels the
// run (cancel, with ErrClaimLost). The returned stop ends the run's
// context and the keeping.
func (in *Instance) keepLease(ctx context.Context, cancel context.CancelCauseFunc, claim *queue.Claim, log *slog.Logger) (stop func()) {
	if in.leases != nil {
		release := in.leases.Keep(claim, cancel)
		return func() { release(); cancel(nil) }
	}
	hbDone := make(chan struct{})
	go func() {
		defer close(hbDone)
		t := time.NewTicker(in.cfg.HeartbeatInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				err := in.deps.Queue.Heartbeat(ctx, claim)
				if errors.Is(err, queue.ErrClaimLost) {
					cancel(err)
					return
				}
				if err != nil && ctx.Err() == nil {
					log.WarnContext(ctx, "heartbeat failed", "err", err)
				}
			}
		}
	}()
	return func() { cancel(nil); <-hbDone }
}
