package monitor

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nonqueue/nonqueue/internal/flavor"
	"github.com/nonqueue/nonqueue/internal/ident"
	"github.com/nonqueue/nonqueue/internal/startstop"
)

// Defaults for GateConfig fields left zero.
const (
	DefaultMaxLag         = 2 * time.Second
	DefaultStoppedBackoff = 60 * time.Second
	DefaultBehindBackoff  = 2 * time.Second
	DefaultSampleInterval = 250 * time.Millisecond
)

// GateConfig sets the lag gate's limit, its back-offs and how often it
// samples the replica.
type GateConfig struct {
	// MaxLag is the largest measured lag at which the gate stays open;
	// default 2s. The measured lag includes up to one heartbeat interval.
	MaxLag time.Duration
	// StoppedBackoff is how long Check tells the caller to wait when a
	// replication thread is stopped; default 60s (a stopped replica needs
	// an operator, polling it fast helps nobody).
	StoppedBackoff time.Duration
	// BehindBackoff is how long Check tells the caller to wait when the
	// replica is behind or its lag is unknown; default 2s.
	BehindBackoff time.Duration
	// SampleInterval is the collector's period; default 250ms. It must be
	// under MaxLag, or the gate could not see lag come and go.
	SampleInterval time.Duration
}

// WithDefaults returns c with every zero field set to its default.
func (c GateConfig) WithDefaults() GateConfig {
	c.MaxLag = cmp.Or(c.MaxLag, DefaultMaxLag)
	c.StoppedBackoff = cmp.Or(c.StoppedBackoff, DefaultStoppedBackoff)
	c.BehindBackoff = cmp.Or(c.BehindBackoff, DefaultBehindBackoff)
	c.SampleInterval = cmp.Or(c.SampleInterval, DefaultSampleInterval)
	return c
}

// Validate checks c as given (call WithDefaults first to fill zeros): every
// duration positive and SampleInterval < MaxLag. It returns a *ConfigError
// wrapping ErrConfig.
func (c GateConfig) Validate() error {
	for _, f := range []struct {
		name string
		d    time.Duration
	}{
		{"max_lag", c.MaxLag}, {"stopped_backoff", c.StoppedBackoff},
		{"behind_backoff", c.BehindBackoff}, {"sample_interval", c.SampleInterval},
	} {
		if f.d <= 0 {
			return &ConfigError{Field: "lag." + f.name, Err: fmt.Errorf("%v must be positive", f.d)}
		}
	}
	if c.SampleInterval >= c.MaxLag {
		return &ConfigError{Field: "lag.sample_interval",
			Err: fmt.Errorf("%v must be under max_lag %v", c.SampleInterval, c.MaxLag)}
	}
	return nil
}

// staleAfter is the age after which a sample no longer proves anything:
// three missed samples plus the lag the gate tolerates anyway.
func (c GateConfig) staleAfter() time.Duration { return 3*c.SampleInterval + c.MaxLag }

// Gate is the lag gate (docs/design.md, "Lag gate"), shaped like gh-ost's throttler: a
// collector goroutine samples the replica (status query + heartbeat read
// back on the replica) every SampleInterval and stores the sample; Check
// only reads the last sample, so it is cheap enough to call before every
// claim.
//
// The gate fails closed: it is closed before the first sample, when the
// last sample failed, when the sample is stale (the collector is stuck),
// when the heartbeat row is missing, when a replication thread is stopped
// and when the measured lag exceeds MaxLag. Fields must not change after
// Start or the first RunOnce.
type Gate struct {
	// Replica is a pool on the local replica.
	Replica *sql.DB
	// Flavor supplies the status query and its column names.
	Flavor flavor.Flavor
	// Schema holds the heartbeat table (the meta schema, as replicated).
	Schema string
	// WriterID is the heartbeat row to read back: the id this process's
	// Heartbeat writes, so the same clock is on both ends.
	WriterID uint32
	// Config is used through WithDefaults.
	Config GateConfig
	// Logger receives gate transitions (open, closed and why); nil
	// discards.
	Logger *slog.Logger

	mu    sync.Mutex // guards last, state and the hold
	last  *sample
	state string // class of the last verdict, for logging transitions
	// holdUntil and holdWhy: Hold's closing of the gate.
	holdUntil time.Time
	holdWhy   error
	// Position proofs (Prove): the newest primary position offered and
	// when it was read, and when the newest one the replica was seen to
	// have was read (provenAt).
	proofPos string
	proofAt  time.Time
	provenAt time.Time

	loop startstop.Loop
}

// sample is one collector pass: the status, or the error that prevented
// reading it.
type sample struct {
	status ReplicaStatus
	err    error
	at     time.Time
}

func (g *Gate) check() (GateConfig, string, error) {
	cfg := g.Config.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return cfg, "", err
	}
	if g.Replica == nil {
		return cfg, "", &ConfigError{Field: "gate.replica", Err: errors.New("no replica pool")}
	}
	if g.Flavor == nil {
		return cfg, "", &ConfigError{Field: "gate.flavor", Err: errors.New("no flavor")}
	}
	if err := ident.Validate(g.Schema); err != nil {
		return cfg, "", &ConfigError{Field: "gate.schema", Err: err}
	}
	return cfg, fmt.Sprintf(heartbeatReadSQL, ident.Qualified(g.Schema, HeartbeatTable)), nil
}

func (g *Gate) logger() *slog.Logger {
	if g.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return g.Logger
}

// Start validates the fields, takes a first sample synchronously (so the
// gate can open at once; a failed first sample is stored, logged, and
// leaves the gate closed, since the collector keeps trying), then launches
// the collector and returns. Starting a running Gate is an error.
func (g *Gate) Start(ctx context.Context) error {
	cfg, stmt, err := g.check()
	if err != nil {
		return err
	}
	if err := g.runOnce(ctx, cfg, stmt); err != nil {
		g.logger().WarnContext(ctx, "first replica sample failed; gate closed", "err", err)
	}
	if err := g.loop.Start(ctx, func(ctx context.Context) { g.collect(ctx, cfg, stmt) }); err != nil {
		return fmt.Errorf("start gate: %w", err)
	}
	return nil
}

func (g *Gate) collect(ctx context.Context, cfg GateConfig, stmt string) {
	t := time.NewTicker(cfg.SampleInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := g.runOnce(ctx, cfg, stmt); err != nil && ctx.Err() == nil {
			g.logger().DebugContext(ctx, "replica sample failed", "err", err)
		}
	}
}

// RunOnce takes one sample synchronously and stores it, so tests and
// callers without a collector can drive the gate. It returns the error
// that prevented sampling (also stored: the gate is then closed); a
// stopped or lagging replica is not an error here but Check's verdict.
func (g *Gate) RunOnce(ctx context.Context) error {
	cfg, stmt, err := g.check()
	if err != nil {
		return err
	}
	return g.runOnce(ctx, cfg, stmt)
}

func (g *Gate) runOnce(ctx context.Context, cfg GateConfig, stmt string) error {
	// A sample slower than the stale limit is useless: bound it there.
	sctx, cancel := context.WithTimeout(ctx, cfg.staleAfter())
	defer cancel()
	st, err := readReplicaStatus(sctx, g.Flavor, g.Replica)
	if err == nil {
		err = readLag(sctx, g.Replica, stmt, g.WriterID, &st)
	}
	if err == nil {
		err = g.checkProof(sctx, &st)
	}
	s := &sample{status: st, err: err, at: time.Now()}
	if err == nil {
		s.at = st.SampledAt
	}
	if ctx.Err() != nil {
		return err // shutting down: keep the last real sample
	}
	g.mu.Lock()
	g.last = s
	_, verdict := decide(s, cfg, s.at)
	class := classOf(verdict)
	changed := class != g.state
	g.state = class
	g.mu.Unlock()
	if changed {
		log := g.logger()
		attrs := []any{"writer_id", g.WriterID, "lag", st.Lag, "lag_known", st.LagKnown,
			"io_running", st.IORunning, "sql_running", st.SQLRunning}
		if verdict == nil {
			log.InfoContext(ctx, "lag gate open", attrs...)
		} else {
			log.WarnContext(ctx, "lag gate closed", append(attrs, "reason", verdict)...)
		}
	}
	return err
}

func classOf(err error) string {
	for _, s := range []error{ErrNoSample, ErrReplicaStopped, ErrReplicaBehind} {
		if errors.Is(err, s) {
			return s.Error()
		}
	}
	if err != nil {
		return "error"
	}
	return "open"
}

// Prove offers a lag proof that needs no write on the primary: pos is the
// primary's GTID position as read at local time at (an idle process's
// probe reads it with every look at the topic table). Once a sample finds
// the replica has applied pos, the replica is known to be at most
// (sample time − at) behind, an upper bound like the heartbeat's (which
// includes up to one heartbeat interval), and the gate measures lag as the
// smaller of the two. An idle process can thus stop writing its heartbeat
// (Heartbeat.SkipFunc, ProofFresh) while its gate keeps measuring. Safe for
// concurrent use; an older proof than the newest offered is ignored.
func (g *Gate) Prove(pos string, at time.Time) {
	if pos == "" {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if at.After(g.proofAt) {
		g.proofPos, g.proofAt = pos, at
	}
}

// ProofFresh reports whether a position proof (Prove) alone keeps the
// measured lag under the lag limit less one sample interval (the time a
// heartbeat, written again, takes to be seen): then the heartbeat adds
// nothing the gate needs. False once the proofs stop or the replica stops
// reaching them.
func (g *Gate) ProofFresh() bool {
	cfg := g.Config.WithDefaults()
	g.mu.Lock()
	proven := g.provenAt
	g.mu.Unlock()
	return !proven.IsZero() && time.Since(proven) < cfg.MaxLag-cfg.SampleInterval
}

// checkProof checks the newest offered position against the replica's
// applied position, records it as proven when reached, and lowers st's
// lag to what the newest proof shows.
func (g *Gate) checkProof(ctx context.Context, st *ReplicaStatus) error {
	g.mu.Lock()
	pos, at, proven := g.proofPos, g.proofAt, g.provenAt
	g.mu.Unlock()
	if pos != "" && at.After(proven) {
		var have sql.NullString
		if err := g.Replica.QueryRowContext(ctx, g.Flavor.ReplicaPosQuery()).Scan(&have); err != nil {
			return fmt.Errorf("read the replica's GTID position: %w", err)
		}
		if ok, err := flavor.Contains(g.Flavor, have.String, pos); err == nil && ok {
			proven = at
			g.mu.Lock()
			if at.After(g.provenAt) {
				g.provenAt = at
			}
			g.mu.Unlock()
		}
	}
	if proven.IsZero() {
		return nil
	}
	if lag := max(st.SampledAt.Sub(proven), 0); !st.LagKnown || lag < st.Lag {
		st.Lag, st.LagKnown = lag, true
	}
	return nil
}

// Check says whether the caller may claim now: (0, nil) when the gate is
// open, otherwise how long to back off and why. It reads only the last
// stored sample and never queries. The error wraps ErrNoSample (backoff
// SampleInterval), ErrReplicaStopped (StoppedBackoff) or ErrReplicaBehind
// (BehindBackoff: lag over MaxLag, lag unknown, the last sample failed, or
// the sample is older than 3×SampleInterval+MaxLag; or, during a Hold,
// the time the hold has left), or a *ConfigError when the Gate is
// misconfigured (backoff StoppedBackoff's default).
func (g *Gate) Check() (time.Duration, error) {
	cfg := g.Config.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return DefaultStoppedBackoff, err
	}
	g.mu.Lock()
	s, until, why := g.last, g.holdUntil, g.holdWhy
	g.mu.Unlock()
	now := time.Now()
	backoff, err := decide(s, cfg, now)
	if left := until.Sub(now); left > 0 && (err == nil || backoff < left) {
		return left, fmt.Errorf("held for %v more: %w", left.Round(time.Millisecond), why)
	}
	return backoff, err
}

// Hold keeps the gate closed for d from now, whatever the samples say, so
// that every instance sharing the gate (every instance of the process on
// this replica) stops claiming. It is how a caller reports what sampling
// cannot see: a GTID wait that timed out proves this replica behind the
// position a claim needed even while the heartbeat lag looks fine, and the
// topic is better left to a fresher replica for a while than claimed again
// here at once. A longer hold already in place stands. Check then returns
// the time left and an error wrapping ErrReplicaBehind and reason. Safe for
// concurrent use; a d <= 0 does nothing.
func (g *Gate) Hold(d time.Duration, reason error) {
	if d <= 0 {
		return
	}
	until := time.Now().Add(d)
	why := fmt.Errorf("%w: %w", ErrReplicaBehind, reason)
	if reason == nil {
		why = ErrReplicaBehind
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if until.After(g.holdUntil) {
		g.holdUntil, g.holdWhy = until, why
	}
}

// decide is the gate's rule, pure so it can be table-tested.
func decide(s *sample, cfg GateConfig, now time.Time) (time.Duration, error) {
	if s == nil {
		return cfg.SampleInterval, ErrNoSample
	}
	if age := now.Sub(s.at); age > cfg.staleAfter() {
		return cfg.BehindBackoff, fmt.Errorf("last replica sample is %v old (limit %v), lag unknown: %w",
			age.Round(time.Millisecond), cfg.staleAfter(), ErrReplicaBehind)
	}
	if s.err != nil {
		return cfg.BehindBackoff, fmt.Errorf("lag unknown, replica sample failed (%w): %w", s.err, ErrReplicaBehind)
	}
	st := s.status
	if !st.Configured {
		return cfg.StoppedBackoff, fmt.Errorf("replication is not configured on the replica (no replica status row): %w", ErrReplicaStopped)
	}
	if !st.IORunning || !st.SQLRunning {
		return cfg.StoppedBackoff, fmt.Errorf("io thread running %v (%q), sql thread running %v (%q): %w",
			st.IORunning, st.LastIOError, st.SQLRunning, st.LastSQLError, ErrReplicaStopped)
	}
	if !st.LagKnown {
		return cfg.BehindBackoff, fmt.Errorf("heartbeat row missing on the replica, lag unknown: %w", ErrReplicaBehind)
	}
	if st.Lag > cfg.MaxLag {
		return cfg.BehindBackoff, fmt.Errorf("lag %v over %v: %w", st.Lag.Round(time.Millisecond), cfg.MaxLag, ErrReplicaBehind)
	}
	return 0, nil
}

// Status returns the last sample (zero before the first), for dashboards
// and logs.
func (g *Gate) Status() ReplicaStatus {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.last == nil {
		return ReplicaStatus{}
	}
	return g.last.status
}

// Stop ends the collector and waits for it, or for ctx. It is idempotent
// and safe before Start. The last sample is kept, and ages: a stopped Gate
// closes once its sample goes stale.
func (g *Gate) Stop(ctx context.Context) error {
	if err := g.loop.Stop(ctx); err != nil {
		return fmt.Errorf("gate: %w", err)
	}
	return nil
}
