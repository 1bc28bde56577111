package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/nonqueue/nonqueue/internal/transient"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/queue"
)

// Pool runs a process's instances and the services they share: the lag
// heartbeat writer, the lag gate's sampler, the pause watch and the
// reaper.
type Pool struct {
	Config   Config
	Deps     *Deps
	ServerID uint32 // the local replica's @@server_id
	// Numbers are the instance numbers to run (1..N, or one K).
	Numbers []int
	// Heartbeat writes this process's clock for lag measurement.
	Heartbeat *monitor.Heartbeat
	Version   string
}

// Run starts everything, loops the instances until soft is done, lets runs
// in flight finish until hard is done, and stops. It returns once nothing
// is left running; the error reports a failure to start.
func (p *Pool) Run(soft, hard context.Context) error {
	log := p.Deps.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
		p.Deps.Logger = log
	}
	var instances []*Instance
	// closeBounded stops a background writer, waiting a bounded time for
	// what it still holds.
	closeBounded := func(what string, close func(context.Context) error) {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := close(ctx); err != nil {
			log.Warn(what, "err", err)
		}
	}
	runs := monitor.NewRunWriter(p.Deps.History, log, 0)
	defer closeBounded("write the last runs to the history", runs.Close)
	dropper := p.Deps.Shipper.NewDropper(p.Deps.Primary)
	defer closeBounded("drop the last swapped-out tables", dropper.Close)
	host, _ := os.Hostname()
	park := newIdlePark()
	// One lease renewal per beat for all of the process's claims; kept
	// through the grace period (hard), until the last run is over.
	leases := p.Deps.Queue.NewLeases(p.Config.HeartbeatInterval, log)
	leaseCtx, stopLeases := context.WithCancel(hard)
	var leaseDone sync.WaitGroup
	leaseDone.Add(1)
	go func() {
		defer leaseDone.Done()
		leases.Run(leaseCtx)
	}()
	defer func() { stopLeases(); leaseDone.Wait() }()
	for _, n := range p.Numbers {
		id, err := p.Config.InstanceID(p.ServerID, n)
		if err != nil {
			return err
		}
		in := &Instance{ID: id, Number: n, serverID: p.ServerID, cfg: p.Config, deps: p.Deps, runs: runs, dropper: dropper, park: park, leases: leases, log: log.With("instance_id", id)}
		if err := p.register(soft, log, monitor.InstanceInfo{
			ID: id, Host: host, PID: os.Getpid(), Version: p.Version, ReplicaServerID: p.ServerID,
		}); err != nil {
			return err
		}
		instances = append(instances, in)
	}
	if err := os.MkdirAll(p.Config.LogDir, 0o750); err != nil {
		return fmt.Errorf("create log dir: %w", err)
	}

	// What crashes left: staging tables on the primary, result tables on
	// the replica. Now and then, not only at start: either server can
	// crash under a running process.
	var sweeper sync.WaitGroup
	defer sweeper.Wait()
	sweeper.Add(1)
	go func() {
		defer sweeper.Done()
		p.sweep(soft, log)
	}()

	// While the process idles, its probe (Instance.probe) answers what
	// the pause watch, the lag heartbeat and the reaper would ask the
	// primary: they rest, each only while the probe keeps answering.
	if p.Deps.Pause != nil {
		if p.Heartbeat.SkipFunc == nil {
			p.Heartbeat.SkipFunc = func() bool { return park.isIdle() && p.Deps.Gate.ProofFresh() }
		}
		if p.Deps.Pause.SkipFunc == nil {
			p.Deps.Pause.SkipFunc = park.isIdle
		}
		if t := p.Deps.Throttle; t != nil && t.SkipFunc == nil && p.Deps.Flavor != nil {
			t.SkipFunc = park.isIdle
		}
	}
	// Services live until the last run is over, so they use hard.
	if err := p.Heartbeat.Start(hard); err != nil {
		return err
	}
	defer p.Heartbeat.Stop(context.Background())
	if err := p.Deps.Gate.Start(hard); err != nil {
		return err
	}
	defer p.Deps.Gate.Stop(context.Background())
	if pw := p.Deps.Pause; pw != nil {
		if err := pw.Start(hard); err != nil {
			return err
		}
		defer pw.Stop(context.Background())
	}
	if err := p.Deps.Throttle.Start(hard); err != nil {
		return err
	}
	defer p.Deps.Throttle.Stop(context.Background())
	p.awaitGate(soft)
	reaper := &queue.Reaper{Queue: p.Deps.Queue, ID: instances[0].ID, Interval: p.Config.ReapInterval, Logger: log, ReapedFunc: p.Deps.ReapedFunc}
	if p.Deps.Pause != nil {
		reaper.SkipFunc = func() bool { return park.restReaper(p.Config.ReapInterval) }
	}
	if err := reaper.Start(soft); err != nil {
		return err
	}
	defer reaper.Stop(context.Background())

	sweeper.Add(1)
	go func() {
		defer sweeper.Done()
		refreshIdle(soft, p.Deps.History, instances, log)
	}()

	log.InfoContext(soft, "instances started", "count", len(instances), "server_id", p.ServerID)
	var wg sync.WaitGroup
	for _, in := range instances {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in.loop(soft, hard)
		}()
	}
	wg.Wait()
	// The history first, then the instances' last state.
	closeBounded("write the last runs to the history", runs.Close)
	for _, in := range instances {
		in.setState(context.Background(), monitor.StateExited, 0, 0, 0)
	}
	log.Info("instances stopped", "count", len(instances))
	return nil
}

// register records an instance in the registry. A failure that may cure
// itself (the primary restarting, a pooled connection it cut) is waited
// out, as the process's start waits for its servers, from 1 s doubling to
// 30 s until soft ends; anything else fails the start.
func (p *Pool) register(soft context.Context, log *slog.Logger, info monitor.InstanceInfo) error {
	wait := time.Second
	for {
		err := p.Deps.History.Register(soft, info)
		if err == nil || !transient.Is(err) || soft.Err() != nil {
			return err
		}
		log.WarnContext(soft, "register instance: the primary is not reachable; retrying", "instance_id", info.ID, "err", err, "retry_in", wait)
		sleep(soft, wait)
		if soft.Err() != nil {
			return fmt.Errorf("register instance %d: %w", info.ID, err)
		}
		wait = min(2*wait, 30*time.Second)
	}
}

// sweepInterval is how often a process looks for what crashed runs left.
const sweepInterval = 10 * time.Minute

// sweep removes, at start and then every sweepInterval until ctx is done,
// what runs a crash cut short left behind: staging and swapped-out tables
// on the primary older than an hour (transfer.Shipper.CleanupPrimary), and
// result tables on the replica older than any run can last, twice the
// procedure's timeout and at least an hour (CleanupReplica).
func (p *Pool) sweep(ctx context.Context, log *slog.Logger) {
	age := time.Hour
	if p.Deps.Runner != nil {
		age = max(age, 2*p.Deps.Runner.Config.Timeout)
	}
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		if err := p.Deps.Shipper.CleanupPrimary(ctx, p.Deps.Primary, time.Hour); err != nil && ctx.Err() == nil {
			log.WarnContext(ctx, "clean up staging tables of crashed runs on the primary", "err", err)
		}
		if _, err := p.Deps.Shipper.CleanupReplica(ctx, p.Deps.Replica, age); err != nil && ctx.Err() == nil {
			log.WarnContext(ctx, "drop result tables left on the replica", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// loop runs the cycle until soft is done. Coordination failures back off
// exponentially up to 30s so a primary outage is not hammered.
func (in *Instance) loop(soft, hard context.Context) {
	defer in.Wait()
	backoff := time.Duration(0)
	for soft.Err() == nil {
		_, err := in.runOnce(soft, hard, in.cfg.Pipelined())
		if errors.Is(err, errStop) {
			break
		}
		if err != nil {
			backoff = min(max(2*backoff, 100*time.Millisecond), 30*time.Second)
			in.log.WarnContext(soft, "cycle failed", "err", err, "retry_in", backoff)
			sleep(soft, backoff)
			continue
		}
		backoff = 0
	}
	in.setState(context.Background(), monitor.StateStopping, 0, 0, 0)
}

// awaitGate samples the replica until the gate opens, for at most the
// lag limit plus a second: the gate opens only after a first sample
// (gh-ost's rule), and this process's first heartbeat has to replicate
// before lag is known. Without the wait, every instance would start with a
// full behind back-off. A replica that stays closed is left to the
// instances' own back-offs.
func (p *Pool) awaitGate(ctx context.Context) {
	g := p.Deps.Gate
	deadline := time.Now().Add(g.Config.MaxLag + time.Second)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		if err := g.RunOnce(ctx); err == nil {
			if _, err := g.Check(); err == nil {
				return
			}
		}
		sleep(ctx, g.Config.SampleInterval)
	}
}

// refreshIdle renews, every registryRefresh until ctx is done, the registry
// heartbeat of the pool's idle instances in one statement; an idle
// instance with nothing new to record leaves its row to it.
func refreshIdle(ctx context.Context, h *monitor.History, instances []*Instance, log *slog.Logger) {
	ids := make([]int64, len(instances))
	for i, in := range instances {
		ids[i] = in.ID
	}
	t := time.NewTicker(registryRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := h.RefreshIdle(ctx, ids); err != nil {
			log.DebugContext(ctx, "registry", "err", err)
		}
	}
}
