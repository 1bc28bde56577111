package monitor

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/internal/flavor"
	"github.com/nonqueue/nonqueue/internal/ident"
	"github.com/nonqueue/nonqueue/internal/meta"
)

// Reads of the run history, the instance registry and the lag heartbeat
// for the ops dashboard and `nonqueue status`. Every age is computed on
// the primary against its own NOW(6), so the clock of the host that reads
// does not matter.

// OutcomeReaped is the outcome the reaper records (queue.Reap) when it
// takes back a claim whose lease expired.
const OutcomeReaped = string(meta.OutcomeReaped)

// ErrRunNotFound: no run has this id.
var ErrRunNotFound = errors.New("run not found")

// RunRecord is one row of the run history as read back.
type RunRecord struct {
	ID         int64  `json:"id"`
	TopicID    int64  `json:"topic_id"`
	InstanceID int64  `json:"instance_id"`
	Replica    string `json:"replica,omitempty"`
	ClaimToken uint64 `json:"claim_token"`
	Scope      int    `json:"scope"`
	Outcome    string `json:"outcome"`
	Error      string `json:"error,omitempty"`
	Bytes      int64  `json:"bytes"`
	// StartedAt is zero for rows without a start (reaped, released by
	// an operator).
	StartedAt  time.Time `json:"started_at,omitzero"`
	FinishedAt time.Time `json:"finished_at"`
	// Age is how long ago the run finished, on the primary's clock.
	Age time.Duration `json:"age_ns"`
	// Time spent in each phase.
	Claim    time.Duration `json:"claim_ns"`
	LagWait  time.Duration `json:"lag_wait_ns"`
	Proc     time.Duration `json:"proc_ns"`
	Transfer time.Duration `json:"transfer_ns"`
	Publish  time.Duration `json:"publish_ns"`
	LogPath  string        `json:"log_path,omitempty"`
}

// Failed reports whether the run's outcome is a failure of some kind:
// failed, parked, reaped or lost.
func (r *RunRecord) Failed() bool {
	switch r.Outcome {
	case OutcomeFailed, OutcomeParked, OutcomeReaped, OutcomeLost:
		return true
	}
	return false
}

const runColumnsSQL = `id, topic_id, instance_id, replica, claim_token, scope, outcome, error, bytes_shipped, started_at, finished_at,
 TIMESTAMPDIFF(MICROSECOND, finished_at, NOW(6)), claim_us, lag_wait_us, proc_us, transfer_us, publish_us, log_path`

func scanRun(sc interface{ Scan(...any) error }) (RunRecord, error) {
	var r RunRecord
	var errText, logPath sql.NullString
	var started sql.NullTime
	var age, claim, lag, proc, xfer, pub int64
	err := sc.Scan(&r.ID, &r.TopicID, &r.InstanceID, &r.Replica, &r.ClaimToken, &r.Scope, &r.Outcome, &errText, &r.Bytes,
		&started, &r.FinishedAt, &age, &claim, &lag, &proc, &xfer, &pub, &logPath)
	if err != nil {
		return r, err
	}
	r.Error, r.LogPath, r.StartedAt = errText.String, logPath.String, started.Time
	us := time.Microsecond
	r.Age, r.Claim, r.LagWait, r.Proc, r.Transfer, r.Publish = max(time.Duration(age)*us, 0), time.Duration(claim)*us,
		time.Duration(lag)*us, time.Duration(proc)*us, time.Duration(xfer)*us, time.Duration(pub)*us
	return r, nil
}

func (h *History) table(name string) (string, error) {
	if err := ident.Validate(h.Schema); err != nil {
		return "", fmt.Errorf("history schema: %w", err)
	}
	return ident.Qualified(h.Schema, name), nil
}

func (h *History) queryRuns(ctx context.Context, what, stmt string, args ...any) ([]RunRecord, error) {
	rows, err := h.Primary.QueryContext(ctx, stmt, args...)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	defer rows.Close()
	out := []RunRecord{}
	for rows.Next() {
		r, err := scanRun(rows)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", what, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	return out, nil
}

// clampLimit keeps a caller's limit in 1..maxN, def when not positive.
func clampLimit(n, def, maxN int) int {
	if n <= 0 {
		return def
	}
	return min(n, maxN)
}

// Run reads one run by id; ErrRunNotFound when there is none.
func (h *History) Run(ctx context.Context, id int64) (*RunRecord, error) {
	t, err := h.table(meta.RunTable)
	if err != nil {
		return nil, err
	}
	runs, err := h.queryRuns(ctx, fmt.Sprintf("run %d", id), "SELECT /* nonqueue report */ "+runColumnsSQL+" FROM "+t+" WHERE id = ?", id)
	if err != nil {
		return nil, err
	}
	if len(runs) == 0 {
		return nil, fmt.Errorf("read run %d: %w", id, ErrRunNotFound)
	}
	return &runs[0], nil
}

// TopicRuns returns a topic's newest runs first, at most limit (default
// 50, at most 1000), through the run table's (topic_id, id) index.
func (h *History) TopicRuns(ctx context.Context, topicID int64, limit int) ([]RunRecord, error) {
	t, err := h.table(meta.RunTable)
	if err != nil {
		return nil, err
	}
	return h.queryRuns(ctx, fmt.Sprintf("runs of topic %d", topicID),
		"SELECT /* nonqueue report */ "+runColumnsSQL+" FROM "+t+" WHERE topic_id = ? ORDER BY id DESC LIMIT ?",
		topicID, clampLimit(limit, 50, 1000))
}

// RecentRuns returns the newest runs first, at most limit (default 100, at
// most 10,000), through the primary key.
func (h *History) RecentRuns(ctx context.Context, limit int) ([]RunRecord, error) {
	t, err := h.table(meta.RunTable)
	if err != nil {
		return nil, err
	}
	return h.queryRuns(ctx, "recent runs", "SELECT /* nonqueue report */ "+runColumnsSQL+" FROM "+t+" ORDER BY id DESC LIMIT ?",
		clampLimit(limit, 100, 10_000))
}

// LastRuns returns the newest run of each of the given topics that has
// one, by topic id; at most 1,000 ids per call.
func (h *History) LastRuns(ctx context.Context, topicIDs []int64) (map[int64]RunRecord, error) {
	out := map[int64]RunRecord{}
	if len(topicIDs) == 0 {
		return out, nil
	}
	if len(topicIDs) > 1000 {
		return nil, fmt.Errorf("read last runs: %d topics, at most 1000", len(topicIDs))
	}
	t, err := h.table(meta.RunTable)
	if err != nil {
		return nil, err
	}
	args := make([]any, len(topicIDs))
	for i, id := range topicIDs {
		args[i] = id
	}
	marks := strings.TrimSuffix(strings.Repeat("?, ", len(topicIDs)), ", ")
	// The inner query reads only the (topic_id, id) index.
	stmt := "SELECT /* nonqueue report */ " + runColumnsSQL + " FROM " + t + " WHERE id IN (SELECT MAX(id) FROM " + t +
		" WHERE topic_id IN (" + marks + ") GROUP BY topic_id)"
	runs, err := h.queryRuns(ctx, "last runs", stmt, args...)
	if err != nil {
		return nil, err
	}
	for _, r := range runs {
		out[r.TopicID] = r
	}
	return out, nil
}

// Failures returns the newest failed runs (outcomes failed, parked,
// reaped, lost) that finished within window, at most limit (default 500,
// at most 10,000), through the (outcome, finished_at) index.
func (h *History) Failures(ctx context.Context, window time.Duration, limit int) ([]RunRecord, error) {
	t, err := h.table(meta.RunTable)
	if err != nil {
		return nil, err
	}
	return h.queryRuns(ctx, "failed runs", "SELECT /* nonqueue report */ "+runColumnsSQL+" FROM "+t+
		" WHERE outcome IN (?, ?, ?, ?) AND finished_at >= NOW(6) - INTERVAL ? MICROSECOND ORDER BY finished_at DESC LIMIT ?",
		OutcomeFailed, OutcomeParked, OutcomeReaped, OutcomeLost, window.Microseconds(), clampLimit(limit, 500, 10_000))
}

// Bucket counts the runs that finished in one interval of a Throughput.
type Bucket struct {
	// Start is the interval's start, on the primary's clock.
	Start time.Time `json:"start"`
	Done  int64     `json:"done"`
	// Failed counts failed and parked runs: the procedure or the transfer
	// failed.
	Failed int64 `json:"failed"`
	// Other counts released, reaped and lost runs.
	Other int64 `json:"other"`
	Bytes int64 `json:"bytes"`
}

// Total is every run in the bucket.
func (b Bucket) Total() int64 { return b.Done + b.Failed + b.Other }

// Throughput is the run history over a window in equal buckets, oldest
// first.
type Throughput struct {
	At      time.Time     `json:"at"` // the primary's clock: the window ends here
	Window  time.Duration `json:"window_ns"`
	Bucket  time.Duration `json:"bucket_ns"`
	Buckets []Bucket      `json:"buckets"`
	// Sums over the window.
	Done, Failed, Other, Bytes int64
}

// PerMinute returns the average rate of runs per minute in bucket b.
func (t *Throughput) PerMinute(b Bucket) float64 {
	return float64(b.Total()) / t.Bucket.Minutes()
}

// FailureRate returns failed / (done + failed) over the window, 0 without
// runs.
func (t *Throughput) FailureRate() float64 {
	if t.Done+t.Failed == 0 {
		return 0
	}
	return float64(t.Failed) / float64(t.Done+t.Failed)
}

// Throughput counts runs by outcome per bucket over the last window,
// through the finished_at index. bucket must divide the window into at
// most 2,000 buckets.
func (h *History) Throughput(ctx context.Context, window, bucket time.Duration) (*Throughput, error) {
	if bucket < time.Second || window < bucket || window/bucket > 2000 {
		return nil, fmt.Errorf("throughput: window %v in buckets of %v: want 1s <= bucket <= window, at most 2000 buckets", window, bucket)
	}
	t, err := h.table(meta.RunTable)
	if err != nil {
		return nil, err
	}
	n := int(window / bucket)
	// Bucket 0 ends at NOW(6), which is constant within a statement; the
	// newest bucket is the last one.
	stmt := `SELECT /* nonqueue report */ FLOOR(TIMESTAMPDIFF(MICROSECOND, finished_at, NOW(6)) / ?) AS b, outcome,
 COUNT(*), COALESCE(SUM(bytes_shipped), 0), NOW(6)
 FROM ` + t + ` WHERE finished_at > NOW(6) - INTERVAL ? MICROSECOND GROUP BY b, outcome`
	rows, err := h.Primary.QueryContext(ctx, stmt, bucket.Microseconds(), window.Microseconds())
	if err != nil {
		return nil, fmt.Errorf("read throughput: %w", err)
	}
	defer rows.Close()
	tp := &Throughput{Window: window, Bucket: bucket, Buckets: make([]Bucket, n)}
	for rows.Next() {
		var b int64
		var outcome string
		var count, bytes int64
		var now sql.NullTime
		if err := rows.Scan(&b, &outcome, &count, &bytes, &now); err != nil {
			return nil, fmt.Errorf("read throughput: %w", err)
		}
		if now.Valid {
			tp.At = now.Time
		}
		i := n - 1 - int(b)
		if i < 0 || i >= n {
			continue // finished in the future: a clock stepped back
		}
		bk := &tp.Buckets[i]
		switch outcome {
		case OutcomeDone:
			bk.Done += count
			tp.Done += count
		case OutcomeFailed, OutcomeParked:
			bk.Failed += count
			tp.Failed += count
		default:
			bk.Other += count
			tp.Other += count
		}
		bk.Bytes += bytes
		tp.Bytes += bytes
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read throughput: %w", err)
	}
	if tp.At.IsZero() {
		if err := h.Primary.QueryRowContext(ctx, "SELECT /* nonqueue report */ NOW(6)").Scan(&tp.At); err != nil {
			return nil, fmt.Errorf("read throughput: %w", err)
		}
	}
	for i := range tp.Buckets {
		tp.Buckets[i].Start = tp.At.Add(-time.Duration(n-i) * bucket)
	}
	return tp, nil
}

// Percentiles of one phase's duration.
type Percentiles struct {
	P50 time.Duration `json:"p50_ns"`
	P95 time.Duration `json:"p95_ns"`
	Max time.Duration `json:"max_ns"`
}

// PhaseStats are the phase times of recent successful runs.
type PhaseStats struct {
	Runs     int         `json:"runs"` // how many runs they cover
	Claim    Percentiles `json:"claim"`
	LagWait  Percentiles `json:"lag_wait"`
	Proc     Percentiles `json:"proc"`
	Transfer Percentiles `json:"transfer"`
	Publish  Percentiles `json:"publish"`
	Total    Percentiles `json:"total"`
}

// Phases computes p50, p95 and max of each phase over the newest done runs
// that finished within window, at most limit of them (default 2,000, at
// most 100,000), read in order from the (outcome, finished_at) index. The
// percentiles are computed here, not in SQL: MySQL 8 has no
// PERCENTILE_CONT.
func (h *History) Phases(ctx context.Context, window time.Duration, limit int) (*PhaseStats, error) {
	t, err := h.table(meta.RunTable)
	if err != nil {
		return nil, err
	}
	rows, err := h.Primary.QueryContext(ctx, `SELECT /* nonqueue report */ claim_us, lag_wait_us, proc_us, transfer_us, publish_us FROM `+t+
		` WHERE outcome = ? AND finished_at >= NOW(6) - INTERVAL ? MICROSECOND ORDER BY finished_at DESC LIMIT ?`,
		OutcomeDone, window.Microseconds(), clampLimit(limit, 2000, 100_000))
	if err != nil {
		return nil, fmt.Errorf("read phase times: %w", err)
	}
	defer rows.Close()
	var cols [6][]int64
	for rows.Next() {
		var v [5]int64
		if err := rows.Scan(&v[0], &v[1], &v[2], &v[3], &v[4]); err != nil {
			return nil, fmt.Errorf("read phase times: %w", err)
		}
		for i := range v {
			cols[i] = append(cols[i], v[i])
		}
		cols[5] = append(cols[5], v[0]+v[1]+v[2]+v[3]+v[4])
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read phase times: %w", err)
	}
	ps := &PhaseStats{Runs: len(cols[0])}
	for i, dst := range []*Percentiles{&ps.Claim, &ps.LagWait, &ps.Proc, &ps.Transfer, &ps.Publish, &ps.Total} {
		*dst = percentiles(cols[i])
	}
	return ps, nil
}

// percentiles uses the nearest-rank method on microsecond samples.
func percentiles(us []int64) Percentiles {
	if len(us) == 0 {
		return Percentiles{}
	}
	slices.Sort(us)
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(us))+0.999999) - 1
		return time.Duration(us[min(max(i, 0), len(us)-1)]) * time.Microsecond
	}
	return Percentiles{P50: rank(0.50), P95: rank(0.95), Max: time.Duration(us[len(us)-1]) * time.Microsecond}
}

// InstanceRecord is one row of the instance registry as read back.
type InstanceRecord struct {
	InstanceInfo
	State string `json:"state"`
	// Reason is why the instance waits (throttle reasons), "" for none.
	Reason string `json:"reason,omitempty"`
	// TopicID is the topic being run, 0 for none.
	TopicID   int64     `json:"topic_id,omitempty"`
	StartedAt time.Time `json:"started_at"`
	// StateAge is how long the instance has been in State, HeartbeatAge
	// how long since it last wrote its row (it writes at every state
	// change and every idle loop, not during a long run: the running
	// topic's own heartbeat shows that).
	StateAge     time.Duration `json:"state_age_ns"`
	HeartbeatAge time.Duration `json:"heartbeat_age_ns"`
	Runs         int64         `json:"runs"`
	Failures     int64         `json:"failures"`
}

// Instances reads the whole instance registry (one row per instance ever
// registered), ordered by replica server id and instance id.
func (h *History) Instances(ctx context.Context) ([]InstanceRecord, error) {
	t, err := h.table(meta.InstanceTable)
	if err != nil {
		return nil, err
	}
	rows, err := h.Primary.QueryContext(ctx, `SELECT /* nonqueue report */ id, host, pid, version, replica_server_id, state, COALESCE(reason, ''), topic_id,
 started_at, TIMESTAMPDIFF(MICROSECOND, state_since, NOW(6)), TIMESTAMPDIFF(MICROSECOND, heartbeat_at, NOW(6)), runs, failures
 FROM `+t+` ORDER BY replica_server_id, id LIMIT 10000`)
	if err != nil {
		return nil, fmt.Errorf("read instance registry: %w", err)
	}
	defer rows.Close()
	out := []InstanceRecord{}
	for rows.Next() {
		var r InstanceRecord
		var topic sql.NullInt64
		var stateAge, hbAge int64
		if err := rows.Scan(&r.ID, &r.Host, &r.PID, &r.Version, &r.ReplicaServerID, &r.State, &r.Reason, &topic, &r.StartedAt,
			&stateAge, &hbAge, &r.Runs, &r.Failures); err != nil {
			return nil, fmt.Errorf("read instance registry: %w", err)
		}
		r.TopicID = topic.Int64
		r.StateAge, r.HeartbeatAge = max(time.Duration(stateAge)*time.Microsecond, 0), max(time.Duration(hbAge)*time.Microsecond, 0)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read instance registry: %w", err)
	}
	return out, nil
}

// WriterBeat is one row of the lag heartbeat table: the last clock value
// one writing process (a worker process; its id is its replica's
// server_id) wrote.
type WriterBeat struct {
	WriterID uint32    `json:"writer_id"`
	TS       time.Time `json:"ts"`
	// Age is the primary's clock minus TS. The writer's and the
	// primary's clocks differ by their skew, so it is a liveness sign (a
	// stopped writer's age grows), not a lag.
	Age time.Duration `json:"age_ns"`
}

const writersSQL = "SELECT /* nonqueue report */ id, ts_us, CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED) FROM %s ORDER BY id LIMIT 1000"

func readWriters(ctx context.Context, db *sql.DB, table string) ([]WriterBeat, error) {
	rows, err := db.QueryContext(ctx, fmt.Sprintf(writersSQL, table))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []WriterBeat{}
	for rows.Next() {
		var w WriterBeat
		var ts, now int64
		if err := rows.Scan(&w.WriterID, &ts, &now); err != nil {
			return nil, err
		}
		w.TS = time.UnixMicro(ts)
		w.Age = time.Duration(now-ts) * time.Microsecond
		out = append(out, w)
	}
	return out, rows.Err()
}

// Writers reads the lag heartbeat rows on the primary.
func (h *History) Writers(ctx context.Context) ([]WriterBeat, error) {
	t, err := h.table(HeartbeatTable)
	if err != nil {
		return nil, err
	}
	out, err := readWriters(ctx, h.Primary, t)
	if err != nil {
		return nil, fmt.Errorf("read lag heartbeats on the primary: %w", err)
	}
	return out, nil
}

// ReplicaView is a live look at one replica, read by the dashboard.
type ReplicaView struct {
	Name     string `json:"name"`
	ServerID uint32 `json:"server_id"`
	// Status is the replication threads' state (Lag fields unused).
	Status ReplicaStatus `json:"status"`
	// Lag is how far the replica's copy of the heartbeat table is behind
	// the primary's, for the writer with the freshest row on the primary:
	// the primary's value minus the replica's, both written by the same
	// clock, so skew-free; it is accurate to one heartbeat interval.
	// LagKnown is false when no writer's row is on both.
	Lag      time.Duration `json:"lag_ns"`
	LagKnown bool          `json:"lag_known"`
	// Err is why the replica could not be read, empty when it was.
	Err string `json:"error,omitempty"`
}

// ReadReplica reads a replica's server id, replication status and its
// copy of the heartbeat table (in schema), and compares it with the
// primary's rows (from Writers) to measure its lag. Failures are
// reported in the returned view's Err, never as an error: an unreachable
// replica is a thing to show.
func ReadReplica(ctx context.Context, name string, f flavor.Flavor, replica *sql.DB, schema string, primary []WriterBeat) *ReplicaView {
	v := &ReplicaView{Name: name}
	fail := func(what string, err error) *ReplicaView {
		v.Err = fmt.Sprintf("%s: %v", what, err)
		return v
	}
	if err := ident.Validate(schema); err != nil {
		return fail("heartbeat schema", err)
	}
	if err := replica.QueryRowContext(ctx, "SELECT /* nonqueue report */ @@server_id").Scan(&v.ServerID); err != nil {
		return fail("read server id", err)
	}
	if f == nil {
		var err error
		if f, err = flavor.Detect(ctx, replica); err != nil {
			return fail("detect flavor", err)
		}
	}
	st, err := readReplicaStatus(ctx, f, replica)
	if err != nil {
		return fail("read replication status", err)
	}
	v.Status = st
	beats, err := readWriters(ctx, replica, ident.Qualified(schema, HeartbeatTable))
	if err != nil {
		return fail("read lag heartbeats on the replica", err)
	}
	var freshest *WriterBeat
	for i := range primary {
		if freshest == nil || primary[i].TS.After(freshest.TS) {
			freshest = &primary[i]
		}
	}
	if freshest != nil {
		for _, b := range beats {
			if b.WriterID == freshest.WriterID {
				v.Lag, v.LagKnown = max(freshest.TS.Sub(b.TS), 0), true
			}
		}
	}
	return v
}
