package monitor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nonqueue/nonqueue/internal/startstop"
)

// PauseWatch keeps a worker process's view of the operators' pauses
// (docs/design.md, "Pause"). Shaped like the Gate: a collector reads the
// pauses in force that cover this process's replica from the pause table
// on the primary once per SampleInterval and stores them; Check only reads
// what was stored, so instances consult it before every claim at no query
// cost, and a pause reaches every instance within one sample interval.
//
// Failure rule: a failed read keeps the last known pauses (a pause's own
// expiry is still applied, on the local clock from the time left the
// primary reported) until the last good read is older than the gate's
// stale bound, 3×SampleInterval+MaxLag; then the watch fails closed
// (ErrPauseUnknown), like the lag gate: a worker that cannot see the
// primary's pauses must assume the operator paused it. Before the first
// read it is closed too. A missing pause table (a schema older than this
// version: schema apply not run yet) means nobody can have paused: no
// pause, with a warning. Fields must not change after Start or RunOnce.
type PauseWatch struct {
	// Pauses reads the pause table on the primary.
	Pauses *Pauses
	// ServerID is the local replica's @@server_id: the pauses of this
	// replica apply, besides those of every replica.
	ServerID uint32
	// Config gives SampleInterval and the stale bound (through
	// WithDefaults).
	Config GateConfig
	// Logger receives transitions (paused, resumed, limited); nil discards.
	Logger *slog.Logger
	// SkipFunc, if set, is asked before each periodic read; true skips it
	// while the last good read is younger than half the stale bound. An
	// idle worker process reads the pauses with its probe instead
	// (ReadWith): the probe decides every claim the process makes while
	// idle, so the pauses it carries are fresher for that claim than the
	// collector's. Once the probe stops feeding the watch, the collector
	// reads again well before the watch would go stale.
	SkipFunc func() bool

	mu    sync.Mutex // guards last, state, warnedMissing
	last  *pauseSample
	state string
	// warnedMissing: the missing-table warning was logged once.
	warnedMissing bool

	loop startstop.Loop
}

// pauseSample is the last good read: the covering pauses, each with its
// local end, and when it was read.
type pauseSample struct {
	pauses []heldPause
	at     time.Time
	// err is the newest read's error, when it failed after this sample.
	err error
}

type heldPause struct {
	Pause
	until time.Time // local clock; zero: until resumed
}

func (w *PauseWatch) check() (GateConfig, error) {
	cfg := w.Config.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	if w.Pauses == nil {
		return cfg, &ConfigError{Field: "pausewatch.pauses", Err: errors.New("no pause table")}
	}
	if _, err := w.Pauses.table(); err != nil {
		return cfg, err
	}
	return cfg, nil
}

func (w *PauseWatch) logger() *slog.Logger {
	if w.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return w.Logger
}

// Start validates the fields, reads the pauses once synchronously (a
// failed first read is logged and leaves the watch closed), then launches
// the collector. Starting a running PauseWatch is an error.
func (w *PauseWatch) Start(ctx context.Context) error {
	cfg, err := w.check()
	if err != nil {
		return err
	}
	if err := w.runOnce(ctx, cfg); err != nil {
		w.logger().WarnContext(ctx, "first read of the pauses failed; claiming nothing until it succeeds", "err", err)
	}
	if err := w.loop.Start(ctx, func(ctx context.Context) {
		t := time.NewTicker(cfg.SampleInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if w.SkipFunc != nil && w.fresh(cfg.staleAfter()/2) && w.SkipFunc() {
				continue
			}
			if err := w.runOnce(ctx, cfg); err != nil && ctx.Err() == nil {
				w.logger().DebugContext(ctx, "read pauses failed", "err", err)
			}
		}
	}); err != nil {
		return fmt.Errorf("start pause watch: %w", err)
	}
	return nil
}

// Stop ends the collector and waits for it, or for ctx. It is idempotent
// and safe before Start. The last read is kept, and ages: a stopped watch
// closes once it is stale.
func (w *PauseWatch) Stop(ctx context.Context) error {
	if err := w.loop.Stop(ctx); err != nil {
		return fmt.Errorf("pause watch: %w", err)
	}
	return nil
}

// RunOnce reads the pauses synchronously and stores them, for tests and
// callers without a collector. It returns the read's error (the last known
// pauses are then kept until stale).
func (w *PauseWatch) RunOnce(ctx context.Context) error {
	cfg, err := w.check()
	if err != nil {
		return err
	}
	return w.runOnce(ctx, cfg)
}

// pauseCoverSQL selects the pauses in force that cover one replica.
const pauseCoverSQL = " WHERE " + pauseActive + " AND (replica_server_id IS NULL OR replica_server_id = ?) ORDER BY id"

func (w *PauseWatch) runOnce(ctx context.Context, cfg GateConfig) error {
	sctx, cancel := context.WithTimeout(ctx, cfg.staleAfter())
	defer cancel()
	t, _ := w.Pauses.table()
	start := time.Now()
	pauses, err := w.Pauses.query(sctx, fmt.Sprintf(pauseSelect, t)+pauseCoverSQL, w.ServerID)
	return w.store(ctx, cfg, start, pauses, err)
}

// Scalar is a scalar expression another package adds to the pause read
// (ReadWith): its SQL, with ? placeholders for Args, and where its value
// is scanned. The package that owns the table it reads writes it.
type Scalar struct {
	SQL  string
	Args []any
	Dest any
}

// pauseProbeSQL is the pause read with extra scalar expressions in front:
// one row per pause in force that covers the replica, or one row of NULL
// pause columns when none does. %s are the expressions and the table.
const pauseProbeSQL = `SELECT /* nonqueue probe */ %s, ` + pauseCols + `
 FROM (SELECT 1) AS nq_one LEFT JOIN %s ON ` + pauseActive + ` AND (replica_server_id IS NULL OR replica_server_id = ?) ORDER BY id`

// ReadWith reads the pauses like the collector does, and, in the same
// statement, the extra scalar expressions (an idle process's look for
// due topics: see worker), scanned into their Dest. The pauses read are
// stored as a collector read's would be. A missing pause table is read
// as no pause; the extras are then read alone. It returns the first
// error: the extras' values are valid only when it is nil.
func (w *PauseWatch) ReadWith(ctx context.Context, extras ...Scalar) error {
	cfg, err := w.check()
	if err != nil {
		return err
	}
	if len(extras) == 0 {
		return w.runOnce(ctx, cfg)
	}
	sctx, cancel := context.WithTimeout(ctx, cfg.staleAfter())
	defer cancel()
	t, _ := w.Pauses.table()
	exprs := make([]string, len(extras))
	var args []any
	dest := make([]any, len(extras))
	for i, x := range extras {
		exprs[i], dest[i] = x.SQL, x.Dest
		args = append(args, x.Args...)
	}
	start := time.Now()
	var pauses []Pause
	err = func() error {
		rows, err := w.Pauses.Primary.QueryContext(sctx, fmt.Sprintf(pauseProbeSQL, strings.Join(exprs, ", "), t), append(args, w.ServerID)...)
		if err != nil {
			return fmt.Errorf("read pauses: %w", noTable(err))
		}
		defer rows.Close()
		for rows.Next() {
			p, ok, err := scanPauseAfter(rows, dest)
			if err != nil {
				return err
			}
			if ok {
				pauses = append(pauses, p)
			}
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read pauses: %w", err)
		}
		return nil
	}()
	if errors.Is(err, ErrNoPauseTable) {
		if xerr := w.Pauses.Primary.QueryRowContext(sctx, "SELECT /* nonqueue probe */ "+strings.Join(exprs, ", "), args...).Scan(dest...); xerr != nil {
			return fmt.Errorf("probe without a pause table: %w", xerr)
		}
	}
	serr := w.store(ctx, cfg, start, pauses, err)
	if err != nil && !errors.Is(err, ErrNoPauseTable) {
		return err
	}
	return serr
}

// fresh reports whether the last good read is younger than d.
func (w *PauseWatch) fresh(d time.Duration) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last != nil && w.last.err == nil && time.Since(w.last.at) < d
}

// store records a read (its pauses, or its error) as the watch's state.
func (w *PauseWatch) store(ctx context.Context, cfg GateConfig, start time.Time, pauses []Pause, err error) error {
	missing := false
	if errors.Is(err, ErrNoPauseTable) {
		// No pause table: schema apply has not run since the upgrade, and
		// nobody can have paused.
		pauses, err, missing = nil, nil, true
	}
	if ctx.Err() != nil {
		return err // shutting down: keep the last real read
	}
	w.mu.Lock()
	if err != nil {
		if w.last != nil {
			// A new sample value: Check reads the old one unlocked.
			failed := *w.last
			failed.err = err
			w.last = &failed
		}
		w.mu.Unlock()
		return err
	}
	warn := missing && !w.warnedMissing
	w.warnedMissing = w.warnedMissing || missing
	s := &pauseSample{at: start}
	for _, p := range pauses {
		h := heldPause{Pause: p}
		if !p.ExpiresAt.IsZero() {
			h.until = start.Add(p.Left)
		}
		s.pauses = append(s.pauses, h)
	}
	w.last = s
	_, _, verdict := decidePause(s, cfg, start, 0)
	class := pauseClass(s, verdict, start)
	changed := class != w.state
	w.state = class
	w.mu.Unlock()
	log := w.logger()
	if warn {
		log.WarnContext(ctx, "no pause table on the primary: run nonqueue schema apply; no pause applies meanwhile",
			"table", w.Pauses.Schema+"."+PauseTable)
	}
	if changed {
		switch {
		case verdict != nil:
			log.WarnContext(ctx, "paused: claiming nothing; runs in flight finish", "server_id", w.ServerID, "reason", verdict)
		case class == "open":
			log.InfoContext(ctx, "no pause in force: claiming", "server_id", w.ServerID)
		default:
			log.WarnContext(ctx, "pause in force: "+class, "server_id", w.ServerID)
		}
	}
	return nil
}

// pauseClass names the state for logging transitions.
func pauseClass(s *pauseSample, verdict error, now time.Time) string {
	if verdict != nil {
		return "closed: " + verdict.Error()
	}
	var parts []string
	for _, p := range s.pauses {
		if p.inForce(now) && p.Scope.BelowPriority != nil {
			parts = append(parts, fmt.Sprintf("claiming only priority %d and above", *p.Scope.BelowPriority))
		}
	}
	if len(parts) == 0 {
		return "open"
	}
	return strings.Join(parts, "; ")
}

func (h heldPause) inForce(now time.Time) bool { return h.until.IsZero() || now.Before(h.until) }

// Check says what this process may claim now, reading only the stored
// pauses: the minimum priority to claim with (minPriority, raised by
// every "below priority" pause in force), or, when a pause covers
// everything this process may claim, how long to wait and an error
// wrapping ErrPaused (which names who paused, why and until when). When
// the pauses could not be read for longer than the stale bound, or not yet
// at all, the error wraps ErrPauseUnknown.
func (w *PauseWatch) Check(minPriority int64) (int64, time.Duration, error) {
	cfg := w.Config.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return minPriority, DefaultStoppedBackoff, err
	}
	w.mu.Lock()
	s := w.last
	w.mu.Unlock()
	return decidePause(s, cfg, time.Now(), minPriority)
}

// Covers reports whether a claim of a topic with this priority is
// covered by a pause in force now (or the pause state is unknown): the
// check after a claim, which gives back a topic claimed as a pause arrived.
func (w *PauseWatch) Covers(priority int64) bool {
	eff, _, err := w.Check(priority)
	return err != nil || priority < eff
}

// decidePause is the watch's rule, pure so it can be table-tested.
func decidePause(s *pauseSample, cfg GateConfig, now time.Time, minPriority int64) (int64, time.Duration, error) {
	if s == nil {
		return minPriority, cfg.SampleInterval, fmt.Errorf("pauses not read from the primary yet: %w", ErrPauseUnknown)
	}
	if age := now.Sub(s.at); age > cfg.staleAfter() {
		why := "no read succeeded"
		if s.err != nil {
			why = "last read failed: " + s.err.Error()
		}
		return minPriority, cfg.SampleInterval, fmt.Errorf("pauses last read %v ago (limit %v; %s): %w",
			age.Round(time.Millisecond), cfg.staleAfter(), why, ErrPauseUnknown)
	}
	eff := minPriority
	for _, p := range s.pauses {
		if !p.inForce(now) {
			continue
		}
		if p.Scope.BelowPriority == nil {
			return minPriority, cfg.SampleInterval, fmt.Errorf("%s: %w", p.Pause, ErrPaused)
		}
		eff = max(eff, *p.Scope.BelowPriority)
	}
	return eff, 0, nil
}

// InForce returns the pauses covering this process that are in force now,
// as last read, and whether that read is fresh (within the stale bound);
// for metrics and logs. It never queries.
func (w *PauseWatch) InForce() ([]Pause, bool) {
	cfg := w.Config.WithDefaults()
	w.mu.Lock()
	s := w.last
	w.mu.Unlock()
	if s == nil {
		return nil, false
	}
	now := time.Now()
	var out []Pause
	for _, p := range s.pauses {
		if p.inForce(now) {
			out = append(out, p.Pause)
		}
	}
	return out, now.Sub(s.at) <= cfg.staleAfter()
}
