package metrics

import (
	"cmp"
	"errors"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/queue"
	"github.com/nonqueue/nonqueue/transfer"
)

// Phases of a run, the values of nonqueue_run_phase_duration_seconds'
// phase label, in the order a run goes through them.
const (
	PhaseClaim     = "claim"     // the compare-and-set claim on the primary
	PhaseLagWait   = "lag_wait"  // waiting for the replica to reach the primary's GTID position
	PhaseProcedure = "procedure" // the procedure on the local replica
	PhaseTransfer  = "transfer"  // export, SFTP and checksums
	PhasePublish   = "publish"   // the fenced RENAME swap and finish on the primary
)

// Reasons of nonqueue_publish_errors_total: why a run got no result
// published, for the causes an operator acts on outside the procedure
// (docs/operations.md, NonqueuePublishErrors). A run counts once, under
// the first reason that matches; other failures are only in runs_total.
const (
	ReasonTableBusy   = "table_busy"   // transfer.ErrTableBusy: a live result table stayed busy through every swap try
	ReasonLockTimeout = "lock_timeout" // transfer.ErrLockTimeout: the topic's publish lock on the primary was held
	ReasonResultsBusy = "results_busy" // transfer.ErrResultsBusy: the topic's replica lock was held by another session
	ReasonFenced      = "fenced"       // transfer.ErrFenced: the fence under the publish lock found the claim gone
	ReasonClaimLost   = "claim_lost"   // outcome lost otherwise: the lease ran out during the run
	ReasonStalled     = "stalled"      // transfer.ErrStalled: the SSH transfer stopped moving
	ReasonChecksum    = "checksum"     // transfer.ErrChecksumMismatch: shipped tables differ from the replica's
	ReasonHostKey     = "host_key"     // transfer.ErrHostKey: the primary's SSH host key was not verified
)

// publishReasons maps the transfer errors to their reasons, in the order
// they are tested.
func publishReasons() []struct {
	reason string
	err    error
} {
	return []struct {
		reason string
		err    error
	}{
		{ReasonTableBusy, transfer.ErrTableBusy}, {ReasonLockTimeout, transfer.ErrLockTimeout},
		{ReasonResultsBusy, transfer.ErrResultsBusy}, {ReasonFenced, transfer.ErrFenced},
		{ReasonStalled, transfer.ErrStalled}, {ReasonChecksum, transfer.ErrChecksumMismatch},
		{ReasonHostKey, transfer.ErrHostKey},
	}
}

// publishReason is the reason r counts under, or "" when it is no
// publish, lock or transfer error.
func publishReason(r *monitor.Run) string {
	for _, p := range publishReasons() {
		if errors.Is(r.Err, p.err) {
			return p.reason
		}
	}
	if r.Outcome == monitor.OutcomeLost {
		return ReasonClaimLost
	}
	return ""
}

// PhaseBuckets are the upper bounds, in seconds, of the phase histograms:
// from 1 ms (a claim, a publish) to 10 minutes (a long procedure), 2 to
// 3× apart. A procedure longer than 10 minutes lands in +Inf.
func PhaseBuckets() []float64 {
	return []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
		1, 2.5, 5, 10, 30, 60, 120, 300, 600}
}

// DefaultReplicaStaleAfter is WorkerConfig.ReplicaStaleAfter's default.
const DefaultReplicaStaleAfter = 30 * time.Second

// WorkerConfig names what a worker's collectors read at scrape time. Both
// are optional: a nil func leaves its metrics out.
type WorkerConfig struct {
	// ClaimStatsFunc returns the process's claim counters, normally
	// (*queue.Queue).Stats; it backs nonqueue_claims_total. It is called
	// on every scrape and must be cheap and safe for concurrent use.
	ClaimStatsFunc func() queue.ClaimStats
	// ReplicaStatusFunc returns the lag gate's last sample, normally
	// (*monitor.Gate).Status; it backs nonqueue_replication_lag_seconds
	// and nonqueue_replication_running. Same rules as ClaimStatsFunc.
	ReplicaStatusFunc func() monitor.ReplicaStatus
	// PausesFunc returns the pauses in force covering this process and
	// whether that read is fresh, normally (*monitor.PauseWatch).InForce;
	// it backs nonqueue_paused{scope}. Same rules as ClaimStatsFunc.
	PausesFunc func() ([]monitor.Pause, bool)
	// ThrottledFunc returns the reasons work is held back right now
	// (monitor.ThrottleReasons values: the primary throttle's and the lag
	// gate's); it backs nonqueue_throttled{reason}. Same rules as
	// ClaimStatsFunc.
	ThrottledFunc func() []string
	// PendingDropsFunc returns how many tables on the primary wait for a
	// retry of their DROP, normally (*transfer.Shipper).PendingDrops; it
	// backs nonqueue_pending_drops. Same rules as ClaimStatsFunc.
	PendingDropsFunc func() int
	// ReplicaStaleAfter: a sample older than this is reported as unknown
	// (the replication metrics are absent), so a stopped gate does not
	// show its last lag forever; default 30s.
	ReplicaStaleAfter time.Duration
}

// Worker holds one worker process's metrics. Its methods match the hooks
// of worker.Deps (Observer, StateFunc) and queue.Reaper (ReapedFunc); they
// are safe for concurrent use by every instance of the process and never
// block on I/O, so a slow scrape cannot slow a run.
type Worker struct {
	runs   *prometheus.CounterVec
	errs   *prometheus.CounterVec
	phases *prometheus.HistogramVec
	bytes  prometheus.Counter
	reaped prometheus.Counter
	states *instanceStates
}

// NewWorker creates a worker process's metrics and registers them in reg:
// nonqueue_runs_total{outcome}, nonqueue_publish_errors_total{reason},
// nonqueue_paused{scope} (when cfg has its source),
// nonqueue_run_phase_duration_seconds{phase},
// nonqueue_bytes_shipped_total, nonqueue_leases_reaped_total and
// nonqueue_instances{state}, plus nonqueue_claims_total{result},
// nonqueue_throttled{reason}, nonqueue_pending_drops and the replication
// metrics when cfg has their source. It returns reg's error
// when a name is already registered there (a second Worker in one
// registry), and registers nothing then.
func NewWorker(reg prometheus.Registerer, cfg WorkerConfig) (*Worker, error) {
	w := &Worker{
		runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "runs_total",
			Help: "Topic runs finished by this process, by outcome (done, failed, parked, released, lost).",
		}, []string{"outcome"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: "publish_errors_total",
			Help: "Runs of this process that published nothing because of a publish, lock or transfer error, by reason (table_busy, lock_timeout, results_busy, fenced, claim_lost, stalled, checksum, host_key); also counted in runs_total.",
		}, []string{"reason"}),
		phases: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "run_phase_duration_seconds",
			Help:    "Time a run spent in each phase (claim, lag_wait, procedure, transfer, publish); a phase the run never reached is not observed.",
			Buckets: PhaseBuckets(),
		}, []string{"phase"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "bytes_shipped_total",
			Help: "Bytes of result table files shipped to the primary over SFTP, whatever the run's outcome.",
		}),
		reaped: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Name: "leases_reaped_total",
			Help: "Claims whose lease ran out that this process's reaper took back.",
		}),
		states: newInstanceStates(),
	}
	// Every label value that can occur, at zero from the start.
	for _, o := range []string{monitor.OutcomeDone, monitor.OutcomeFailed, monitor.OutcomeParked,
		monitor.OutcomeReleased, monitor.OutcomeLost} {
		w.runs.WithLabelValues(o)
	}
	for _, r := range publishReasons() {
		w.errs.WithLabelValues(r.reason)
	}
	w.errs.WithLabelValues(ReasonClaimLost)
	for _, p := range []string{PhaseClaim, PhaseLagWait, PhaseProcedure, PhaseTransfer, PhasePublish} {
		w.phases.WithLabelValues(p)
	}
	cs := []prometheus.Collector{w.runs, w.errs, w.phases, w.bytes, w.reaped, w.states}
	if cfg.ClaimStatsFunc != nil {
		cs = append(cs, newClaimCollector(cfg.ClaimStatsFunc))
	}
	if cfg.ThrottledFunc != nil {
		cs = append(cs, newThrottledCollector(cfg.ThrottledFunc))
	}
	if f := cfg.PendingDropsFunc; f != nil {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "pending_drops",
			Help: "Tables on the primary (swapped out, or a failed run's staging tables) whose DROP failed and waits for a retry; after 15 minutes of retries they are left to the periodic sweep.",
		}, func() float64 { return float64(f()) }))
	}
	if cfg.ReplicaStatusFunc != nil {
		cs = append(cs, newReplicationCollector(cfg.ReplicaStatusFunc, cmp.Or(cfg.ReplicaStaleAfter, DefaultReplicaStaleAfter)))
	}
	if cfg.PausesFunc != nil {
		cs = append(cs, newPauseCollector(cfg.PausesFunc))
	}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return nil, err
		}
	}
	return w, nil
}

// ObserveRun counts a finished run: its outcome, its publish error reason
// if it has one (see publishReason), the duration of each phase it
// reached (zero means not reached and is not observed) and the bytes it
// shipped. It has worker.Deps.Observer's signature. A nil run is
// ignored; an empty outcome counts as "unknown".
func (w *Worker) ObserveRun(r *monitor.Run) {
	if r == nil {
		return
	}
	w.runs.WithLabelValues(cmp.Or(r.Outcome, "unknown")).Inc()
	if reason := publishReason(r); reason != "" {
		w.errs.WithLabelValues(reason).Inc()
	}
	for _, p := range []struct {
		name string
		d    time.Duration
	}{
		{PhaseClaim, r.Claim}, {PhaseLagWait, r.LagWait}, {PhaseProcedure, r.Proc},
		{PhaseTransfer, r.Transfer}, {PhasePublish, r.Publish},
	} {
		if p.d > 0 {
			w.phases.WithLabelValues(p.name).Observe(p.d.Seconds())
		}
	}
	if r.Bytes > 0 {
		w.bytes.Add(float64(r.Bytes))
	}
}

// SetInstanceState records instance id's current state (one of the
// monitor.State* values) for nonqueue_instances{state}, which counts this
// process's instances per state. It has worker.Deps.StateFunc's signature.
func (w *Worker) SetInstanceState(id int64, state string) {
	w.states.set(id, state)
}

// ObserveReaped counts one claim taken back by the reaper. It has
// queue.Reaper.ReapedFunc's signature.
func (w *Worker) ObserveReaped(queue.Reaped) {
	w.reaped.Inc()
}

// instanceStates is nonqueue_instances: the last state of each instance,
// counted per state at scrape time, so a state change is one map write and
// the counts can never drift (no inc/dec pairs to get wrong).
type instanceStates struct {
	desc *prometheus.Desc
	mu   sync.Mutex
	byID map[int64]string
}

// knownStates are exported at zero so every state's series exists.
func knownStates() []string {
	return []string{monitor.StateStarting, monitor.StateIdle, monitor.StateLagWait, monitor.StateStopped,
		monitor.StateThrottled, monitor.StatePaused, monitor.StateRunning, monitor.StateStopping, monitor.StateExited}
}

func newInstanceStates() *instanceStates {
	return &instanceStates{
		desc: prometheus.NewDesc(Namespace+"_instances",
			"Worker instances of this process per state (starting, idle, waiting for lag, replica stopped, throttled, paused, running, stopping, exited).",
			[]string{"state"}, nil),
		byID: map[int64]string{},
	}
}

func (s *instanceStates) set(id int64, state string) {
	s.mu.Lock()
	s.byID[id] = state
	s.mu.Unlock()
}

func (s *instanceStates) Describe(ch chan<- *prometheus.Desc) { ch <- s.desc }

func (s *instanceStates) Collect(ch chan<- prometheus.Metric) {
	counts := map[string]int{}
	for _, st := range knownStates() {
		counts[st] = 0
	}
	s.mu.Lock()
	for _, st := range s.byID {
		counts[st]++
	}
	s.mu.Unlock()
	for _, st := range slices.Sorted(maps.Keys(counts)) {
		ch <- prometheus.MustNewConstMetric(s.desc, prometheus.GaugeValue, float64(counts[st]), cmp.Or(st, "unknown"))
	}
}

// claimCollector reads the queue's own claim counters at scrape time, so
// there is one source of truth and nothing to keep in step.
type claimCollector struct {
	desc, combined *prometheus.Desc
	stats          func() queue.ClaimStats
}

func newClaimCollector(stats func() queue.ClaimStats) *claimCollector {
	return &claimCollector{
		desc: prometheus.NewDesc(Namespace+"_claims_total",
			"Claim attempts of this process by result: won (got a topic), lost (compare-and-set lost: deadlock or lock-wait retry, or taken back before read), empty (nothing due).",
			[]string{"result"}, nil),
		combined: prometheus.NewDesc(Namespace+"_claims_combined_total",
			"Claims won through a combined statement (claims of this process that arrived together); a share of won.",
			nil, nil),
		stats: stats,
	}
}

func (c *claimCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc; ch <- c.combined }

func (c *claimCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(s.Won), "won")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(s.Lost), "lost")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(s.Empty), "empty")
	ch <- prometheus.MustNewConstMetric(c.combined, prometheus.CounterValue, float64(s.Combined))
}

// replicationCollector exposes the lag gate's last sample. It reads what
// the gate stored and never queries the replica itself.
type replicationCollector struct {
	lag, running *prometheus.Desc
	status       func() monitor.ReplicaStatus
	staleAfter   time.Duration
}

func newReplicationCollector(status func() monitor.ReplicaStatus, staleAfter time.Duration) *replicationCollector {
	return &replicationCollector{
		lag: prometheus.NewDesc(Namespace+"_replication_lag_seconds",
			"Replication lag of the local replica measured by the lag gate (heartbeat read back), at its last sample; absent while unknown.",
			nil, nil),
		running: prometheus.NewDesc(Namespace+"_replication_running",
			"1 if the local replica's replication thread (io or sql) is running, 0 if not, at the lag gate's last sample; absent while the status cannot be read.",
			[]string{"thread"}, nil),
		status:     status,
		staleAfter: staleAfter,
	}
}

func (c *replicationCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.lag
	ch <- c.running
}

func (c *replicationCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.status()
	// SampledAt is set only once the status query answered: before the
	// first sample, or when the last one failed, nothing is known.
	if st.SampledAt.IsZero() || time.Since(st.SampledAt) > c.staleAfter {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.running, prometheus.GaugeValue, boolFloat(st.IORunning), "io")
	ch <- prometheus.MustNewConstMetric(c.running, prometheus.GaugeValue, boolFloat(st.SQLRunning), "sql")
	if st.LagKnown {
		ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, st.Lag.Seconds())
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// pauseCollector is nonqueue_paused: which kinds of pause cover this
// process now, read from the pause watch's last read at scrape time.
type pauseCollector struct {
	desc   *prometheus.Desc
	pauses func() ([]monitor.Pause, bool)
}

// PauseScopes are the values of nonqueue_paused's scope label: the
// pause kinds, and "unknown" while the pauses cannot be read (the worker
// then claims nothing, failing closed).
func PauseScopes() []string {
	return []string{monitor.PauseKindAll, monitor.PauseKindReplica, monitor.PauseKindPriority, "unknown"}
}

func newPauseCollector(pauses func() ([]monitor.Pause, bool)) *pauseCollector {
	return &pauseCollector{
		desc: prometheus.NewDesc(Namespace+"_paused",
			"1 when an operator's pause of this kind covers this process (scope all: every replica; replica: this replica; below_priority: topics below a priority, the rest still claimed), or, for scope unknown, when the pauses could not be read and the process claims nothing.",
			[]string{"scope"}, nil),
		pauses: pauses,
	}
}

func (c *pauseCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *pauseCollector) Collect(ch chan<- prometheus.Metric) {
	ps, fresh := c.pauses()
	on := map[string]bool{"unknown": !fresh}
	for _, p := range ps {
		on[p.Scope.Kind()] = true
	}
	for _, s := range PauseScopes() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, boolFloat(on[s]), s)
	}
}

// throttledCollector is nonqueue_throttled{reason}: 1 for each reason that
// holds the work back at scrape time, 0 for the others. It reads what the
// throttle and the lag gate stored and never queries.
type throttledCollector struct {
	desc    *prometheus.Desc
	reasons func() []string
}

func newThrottledCollector(reasons func() []string) *throttledCollector {
	return &throttledCollector{
		desc: prometheus.NewDesc(Namespace+"_throttled",
			"1 while this reason holds this process's work back (no claims; no publishes for the primary's: threads_running, throttle_url; no claims for the lag gate's: replica_lag, replica_stopped), 0 otherwise.",
			[]string{"reason"}, nil),
		reasons: reasons,
	}
}

func (c *throttledCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *throttledCollector) Collect(ch chan<- prometheus.Metric) {
	on := map[string]bool{}
	for _, r := range c.reasons() {
		on[r] = true
	}
	for _, r := range monitor.ThrottleReasons() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, boolFloat(on[r]), r)
		delete(on, r)
	}
	for _, r := range slices.Sorted(maps.Keys(on)) {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, 1, r)
	}
}
