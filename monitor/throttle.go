package monitor

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nonqueue/nonqueue/internal/startstop"
)

// Defaults for ThrottleConfig fields left zero.
const (
	DefaultThrottleSampleInterval = time.Second
	DefaultThrottleURLTimeout     = time.Second
	DefaultPublishWait            = 10 * time.Minute
)

// Reasons the work is held back, the values of nonqueue_throttled's reason
// label and of the registry's reason column. The first two are the primary
// throttle's (Throttle); the last two the lag gate's (GateReason).
const (
	ThrottleThreadsRunning = "threads_running" // the primary's Threads_running over max_threads_running, or unknown
	ThrottleURL            = "throttle_url"    // the throttle URL did not answer 200 (or not in time)
	ThrottleReplicaLag     = "replica_lag"     // the lag gate: replica behind, or lag unknown
	ThrottleReplicaStopped = "replica_stopped" // the lag gate: a replication thread is stopped
)

// ThrottleReasons lists every reason, in a fixed order (metrics export each
// one, at 0 while it does not hold).
func ThrottleReasons() []string {
	return []string{ThrottleThreadsRunning, ThrottleURL, ThrottleReplicaLag, ThrottleReplicaStopped}
}

// ThrottledError is Throttle.Check's verdict: the reasons that hold
// (ThrottleThreadsRunning, ThrottleURL) and what each saw. It wraps
// ErrThrottled.
type ThrottledError struct {
	Reasons []string
	Details []string
}

func (e *ThrottledError) Error() string {
	return "primary throttled: " + strings.Join(e.Details, "; ")
}

// Unwrap lets errors.Is find ErrThrottled.
func (e *ThrottledError) Unwrap() error { return ErrThrottled }

// ThrottleConfig is the [throttle] section: when the fleet yields to the
// primary. Every check is off by default.
type ThrottleConfig struct {
	// MaxThreadsRunning closes the throttle while the primary's
	// Threads_running is above it; 0 turns the check off. Threads_running
	// counts the sampling session itself, so an idle primary reads 1.
	MaxThreadsRunning int
	// URL is a freno-style check: only an HTTP 200 lets work through; any
	// other status, an error or no answer within URLTimeout closes the
	// throttle. "" turns the check off.
	URL string
	// URLTimeout bounds one request to URL; default 1s.
	URLTimeout time.Duration
	// SampleInterval is how often each process reads Threads_running and
	// asks URL (one query and one request per process per interval, never
	// per claim); default 1s.
	SampleInterval time.Duration
	// MaxConcurrentPublishes caps the publishes running at once on the
	// primary, fleet-wide (PublishSlots); 0 turns the cap off.
	MaxConcurrentPublishes int
	// PublishWait bounds how long a finished run waits, before its
	// publish, for the throttle to open and for a publish slot; then the
	// claim is given back without counting an attempt. Default 10m.
	PublishWait time.Duration
}

// WithDefaults returns c with every zero duration set to its default.
func (c ThrottleConfig) WithDefaults() ThrottleConfig {
	c.URLTimeout = cmp.Or(c.URLTimeout, DefaultThrottleURLTimeout)
	c.SampleInterval = cmp.Or(c.SampleInterval, DefaultThrottleSampleInterval)
	c.PublishWait = cmp.Or(c.PublishWait, DefaultPublishWait)
	return c
}

// Enabled reports whether the throttle samples anything.
func (c ThrottleConfig) Enabled() bool { return c.MaxThreadsRunning > 0 || c.URL != "" }

// Validate checks c as given (call WithDefaults first): limits not
// negative, durations positive, URL absolute http or https. It returns a
// *ConfigError wrapping ErrConfig; the field names the configuration key.
func (c ThrottleConfig) Validate() error {
	if c.MaxThreadsRunning < 0 {
		return &ConfigError{Field: "throttle.max_threads_running", Err: fmt.Errorf("%d: want 1 or more (leave it out to turn the check off)", c.MaxThreadsRunning)}
	}
	if c.MaxConcurrentPublishes < 0 {
		return &ConfigError{Field: "throttle.max_concurrent_publishes", Err: fmt.Errorf("%d: want 1 or more (leave it out for no cap)", c.MaxConcurrentPublishes)}
	}
	if c.URL != "" {
		if err := checkThrottleURL(c.URL); err != nil {
			return &ConfigError{Field: "throttle.throttle_url", Err: err}
		}
	}
	for _, f := range []struct {
		name string
		d    time.Duration
	}{{"throttle_url_timeout", c.URLTimeout}, {"sample_interval", c.SampleInterval}, {"publish_wait", c.PublishWait}} {
		if f.d <= 0 {
			return &ConfigError{Field: "throttle." + f.name, Err: fmt.Errorf("%v must be positive", f.d)}
		}
	}
	return nil
}

func checkThrottleURL(s string) error {
	u, err := url.Parse(s)
	if err != nil {
		// url.Error repeats the URL, which may hold credentials.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("not a URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("%q: want an http:// or https:// URL", u.Redacted())
	}
	if u.Host == "" {
		return fmt.Errorf("%q: no host", u.Redacted())
	}
	return nil
}

// staleAfter is the age after which a sample proves nothing: three missed
// samples plus one request's timeout.
func (c ThrottleConfig) staleAfter() time.Duration { return 3*c.SampleInterval + c.URLTimeout }

// Throttle is the primary throttle (docs/design.md, "Yielding to the
// primary"), shaped like the lag gate and gh-ost's throttler: a collector
// reads the primary's Threads_running and asks the throttle URL every
// SampleInterval and stores what it saw; Check only reads, so the worker
// calls it before every claim and before every publish at no cost.
//
// It fails closed: a check that is configured is closed before its first
// sample, when its last sample failed and when the sample is stale (the
// collector is stuck or the primary does not answer). A nil *Throttle, or
// one with no check configured, is always open. Fields must not change
// after Start.
type Throttle struct {
	// Primary is a pool on the primary (Threads_running).
	Primary *sql.DB
	// Config is used through WithDefaults.
	Config ThrottleConfig
	// Client asks URL; nil uses a plain client (each request bounded by
	// URLTimeout either way).
	Client *http.Client
	// Logger receives transitions (open, closed and why); nil discards.
	Logger *slog.Logger
	// SkipFunc, if set, is asked before each periodic Threads_running
	// read; true skips it while the last sample is younger than half the
	// stale bound. An idle worker process reads Threads_running with its
	// probe instead (FeedThreadsRunning), like the pauses: once the probe
	// stops, the collector reads again before the sample goes stale.
	SkipFunc func() bool

	mu      sync.Mutex
	threads *throttleSample // last Threads_running sample
	check   *throttleSample // last URL answer
	state   string          // the last verdict's reasons, for logging transitions

	loop startstop.Loop
}

// throttleSample is one reading: the value (Threads_running, or the HTTP
// status) or the error that prevented it.
type throttleSample struct {
	value int64
	err   error
	at    time.Time
}

// threadsRunningSQL reads the primary's Threads_running. SHOW GLOBAL
// STATUS needs no privilege and answers on MariaDB and MySQL alike.
const threadsRunningSQL = "SHOW /* nonqueue throttle */ GLOBAL STATUS LIKE 'Threads_running'"

// ReadThreadsRunning returns the server's Threads_running (which counts
// the session asking).
func ReadThreadsRunning(ctx context.Context, db *sql.DB) (int64, error) {
	var name, value string
	if err := db.QueryRowContext(ctx, threadsRunningSQL).Scan(&name, &value); err != nil {
		return 0, fmt.Errorf("read Threads_running on the primary: %w", err)
	}
	n, err := strconv.ParseInt(value, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read Threads_running on the primary: %q: %w", value, err)
	}
	return n, nil
}

// ProbeURL asks a freno-style check once and returns its HTTP status; err
// is a request that got no answer within timeout. Only 200 opens.
func ProbeURL(ctx context.Context, client *http.Client, u string, timeout time.Duration) (int, error) {
	if client == nil {
		client = http.DefaultClient
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, fmt.Errorf("throttle URL: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		// url.Error carries the URL; it may hold credentials: redact.
		var ue *url.Error
		if errors.As(err, &ue) {
			return 0, fmt.Errorf("ask throttle URL: %w", ue.Err)
		}
		return 0, fmt.Errorf("ask throttle URL: %w", err)
	}
	// Drain a little so the connection is reused, then drop it.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	return resp.StatusCode, nil
}

func (t *Throttle) logger() *slog.Logger {
	if t.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return t.Logger
}

func (t *Throttle) config() (ThrottleConfig, error) {
	cfg := t.Config.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	if cfg.MaxThreadsRunning > 0 && t.Primary == nil {
		return cfg, &ConfigError{Field: "throttle.primary", Err: errors.New("no primary pool")}
	}
	return cfg, nil
}

// Start validates the fields, takes a first sample of each configured
// check synchronously (a failed one leaves the throttle closed and is
// logged), then launches the collector and returns. With no check
// configured (or a nil Throttle) it does nothing. Starting a running Throttle is an error.
func (t *Throttle) Start(ctx context.Context) error {
	if t == nil {
		return nil
	}
	cfg, err := t.config()
	if err != nil {
		return err
	}
	if !cfg.Enabled() {
		return nil
	}
	t.runOnce(ctx, cfg)
	if err := t.loop.Start(ctx, func(ctx context.Context) { t.collect(ctx, cfg) }); err != nil {
		return fmt.Errorf("start throttle: %w", err)
	}
	return nil
}

// collect samples each check on its own ticker, so a slow URL never
// delays the Threads_running sample nor the other way round.
func (t *Throttle) collect(ctx context.Context, cfg ThrottleConfig) {
	var wg sync.WaitGroup
	every := func(f func(context.Context, ThrottleConfig)) {
		defer wg.Done()
		tk := time.NewTicker(cfg.SampleInterval)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
			f(ctx, cfg)
		}
	}
	if cfg.MaxThreadsRunning > 0 {
		wg.Add(1)
		go every(t.sampleThreads)
	}
	if cfg.URL != "" {
		wg.Add(1)
		go every(t.sampleURL)
	}
	wg.Wait()
}

// RunOnce samples every configured check synchronously and stores the
// results, for tests and callers without a collector.
func (t *Throttle) RunOnce(ctx context.Context) error {
	cfg, err := t.config()
	if err != nil {
		return err
	}
	t.runOnce(ctx, cfg)
	return nil
}

func (t *Throttle) runOnce(ctx context.Context, cfg ThrottleConfig) {
	var wg sync.WaitGroup
	if cfg.MaxThreadsRunning > 0 {
		wg.Go(func() { t.sampleThreads(ctx, cfg) })
	}
	if cfg.URL != "" {
		wg.Go(func() { t.sampleURL(ctx, cfg) })
	}
	wg.Wait()
}

func (t *Throttle) sampleThreads(ctx context.Context, cfg ThrottleConfig) {
	if t.SkipFunc != nil {
		t.mu.Lock()
		s := t.threads
		t.mu.Unlock()
		if s != nil && s.err == nil && time.Since(s.at) < cfg.staleAfter()/2 && t.SkipFunc() {
			return
		}
	}
	sctx, cancel := context.WithTimeout(ctx, cfg.staleAfter())
	defer cancel()
	n, err := ReadThreadsRunning(sctx, t.Primary)
	t.store(ctx, cfg, &t.threads, &throttleSample{value: n, err: err, at: time.Now()})
}

func (t *Throttle) sampleURL(ctx context.Context, cfg ThrottleConfig) {
	code, err := ProbeURL(ctx, t.Client, cfg.URL, cfg.URLTimeout)
	t.store(ctx, cfg, &t.check, &throttleSample{value: int64(code), err: err, at: time.Now()})
}

// ProbesThreadsRunning reports whether the throttle samples the primary's
// Threads_running, so an idle process's probe should read it
// (FeedThreadsRunning). False for a nil Throttle.
func (t *Throttle) ProbesThreadsRunning() bool {
	return t != nil && t.Config.MaxThreadsRunning > 0
}

// FeedThreadsRunning stores a Threads_running read by another statement
// (an idle process's probe) at local time at, as a sample of the
// collector's own would be.
func (t *Throttle) FeedThreadsRunning(ctx context.Context, n int64, at time.Time) {
	if !t.ProbesThreadsRunning() {
		return
	}
	cfg, err := t.config()
	if err != nil {
		return
	}
	t.store(ctx, cfg, &t.threads, &throttleSample{value: n, at: at})
}

// store keeps s (unless shutting down: the last real sample stays) and
// logs a change of verdict.
func (t *Throttle) store(ctx context.Context, cfg ThrottleConfig, slot **throttleSample, s *throttleSample) {
	if ctx.Err() != nil {
		return
	}
	t.mu.Lock()
	*slot = s
	verdict := decideThrottle(cfg, t.threads, t.check, time.Now())
	state := ""
	if verdict != nil {
		state = strings.Join(verdict.Reasons, ",")
	}
	changed := state != t.state
	t.state = state
	t.mu.Unlock()
	if !changed {
		return
	}
	if verdict == nil {
		t.logger().InfoContext(ctx, "primary throttle open")
	} else {
		t.logger().WarnContext(ctx, "primary throttle closed: no claims, no publishes", "reason", state, "err", verdict)
	}
}

// decideThrottle is the throttle's rule, pure so it can be table-tested:
// nil when open, otherwise every reason that holds.
func decideThrottle(cfg ThrottleConfig, threads, check *throttleSample, now time.Time) *ThrottledError {
	var e ThrottledError
	add := func(reason, detail string) {
		e.Reasons = append(e.Reasons, reason)
		e.Details = append(e.Details, detail)
	}
	stale := func(s *throttleSample) string {
		switch {
		case s == nil:
			return "not sampled yet"
		case now.Sub(s.at) > cfg.staleAfter():
			return fmt.Sprintf("last sample is %v old (limit %v)", now.Sub(s.at).Round(time.Millisecond), cfg.staleAfter())
		case s.err != nil:
			return s.err.Error()
		}
		return ""
	}
	if cfg.MaxThreadsRunning > 0 {
		if why := stale(threads); why != "" {
			add(ThrottleThreadsRunning, "Threads_running unknown: "+why)
		} else if threads.value > int64(cfg.MaxThreadsRunning) {
			add(ThrottleThreadsRunning, fmt.Sprintf("Threads_running %d over %d", threads.value, cfg.MaxThreadsRunning))
		}
	}
	if cfg.URL != "" {
		if why := stale(check); why != "" {
			add(ThrottleURL, "throttle URL: "+why)
		} else if check.value != http.StatusOK {
			add(ThrottleURL, fmt.Sprintf("throttle URL answered %d", check.value))
		}
	}
	if len(e.Reasons) == 0 {
		return nil
	}
	return &e
}

// Check says whether the caller may claim or publish now: (0, nil) when
// open, otherwise how long to back off (SampleInterval: the verdict
// cannot change sooner) and a *ThrottledError. It reads only the stored
// samples and never queries. A nil Throttle is open.
func (t *Throttle) Check() (time.Duration, error) {
	if t == nil {
		return 0, nil
	}
	cfg := t.Config.WithDefaults()
	if !cfg.Enabled() {
		return 0, nil
	}
	t.mu.Lock()
	threads, check := t.threads, t.check
	t.mu.Unlock()
	if v := decideThrottle(cfg, threads, check, time.Now()); v != nil {
		return cfg.SampleInterval, v
	}
	return 0, nil
}

// Reasons returns the reasons that hold now (Check's), nil when open.
func (t *Throttle) Reasons() []string {
	var te *ThrottledError
	if _, err := t.Check(); errors.As(err, &te) {
		return te.Reasons
	}
	return nil
}

// ThreadsRunning returns the last Threads_running read and when; ok is
// false before the first good sample or when the last one failed.
func (t *Throttle) ThreadsRunning() (n int64, at time.Time, ok bool) {
	if t == nil {
		return 0, time.Time{}, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.threads == nil || t.threads.err != nil {
		return 0, time.Time{}, false
	}
	return t.threads.value, t.threads.at, true
}

// Stop ends the collector and waits for it, or for ctx. It is idempotent
// and safe before Start (and on a nil Throttle). The samples are kept and
// age: a stopped Throttle closes once they go stale.
func (t *Throttle) Stop(ctx context.Context) error {
	if t == nil {
		return nil
	}
	if err := t.loop.Stop(ctx); err != nil {
		return fmt.Errorf("throttle: %w", err)
	}
	return nil
}

// GateReason names the lag gate's verdict err (Gate.Check) as a throttle
// reason: "" when open, ThrottleReplicaStopped or ThrottleReplicaLag.
func GateReason(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrReplicaStopped):
		return ThrottleReplicaStopped
	default:
		return ThrottleReplicaLag
	}
}
