package monitor

import (
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/flavor"
)

// TestDecide pins the gate's rule on stored samples; each case says what
// it proves.
func TestDecide(t *testing.T) {
	t.Parallel()
	cfg := GateConfig{MaxLag: time.Second, StoppedBackoff: time.Minute, BehindBackoff: 2 * time.Second, SampleInterval: 100 * time.Millisecond}
	now := time.Unix(1_700_000_000, 0)
	ok := ReplicaStatus{Configured: true, IORunning: true, SQLRunning: true, LagKnown: true, Lag: 100 * time.Millisecond, SampledAt: now}
	mk := func(f func(*ReplicaStatus)) *sample { s := ok; f(&s); return &sample{status: s, at: now} }
	cases := []struct {
		name    string
		s       *sample
		now     time.Time
		want    error
		backoff time.Duration
	}{
		{"healthy sample opens the gate", mk(func(*ReplicaStatus) {}), now, nil, 0},
		{"lag equal to the limit still opens", mk(func(s *ReplicaStatus) { s.Lag = time.Second }), now, nil, 0},
		{"no sample yet: closed, retry after one interval", nil, now, ErrNoSample, cfg.SampleInterval},
		{"lag over the limit", mk(func(s *ReplicaStatus) { s.Lag = 1001 * time.Millisecond }), now, ErrReplicaBehind, cfg.BehindBackoff},
		{"heartbeat row missing: lag unknown", mk(func(s *ReplicaStatus) { s.LagKnown = false }), now, ErrReplicaBehind, cfg.BehindBackoff},
		{"SQL thread stopped backs off longer", mk(func(s *ReplicaStatus) { s.SQLRunning = false }), now, ErrReplicaStopped, cfg.StoppedBackoff},
		{"IO thread stopped backs off longer", mk(func(s *ReplicaStatus) { s.IORunning = false }), now, ErrReplicaStopped, cfg.StoppedBackoff},
		{"stopped wins over lag", mk(func(s *ReplicaStatus) { s.SQLRunning = false; s.Lag = time.Hour }), now, ErrReplicaStopped, cfg.StoppedBackoff},
		{"not a replica", mk(func(s *ReplicaStatus) { *s = ReplicaStatus{} }), now, ErrReplicaStopped, cfg.StoppedBackoff},
		{"failed sample: lag unknown", &sample{err: errors.New("connection refused"), at: now}, now, ErrReplicaBehind, cfg.BehindBackoff},
		{"sample just inside the stale limit is trusted", mk(func(*ReplicaStatus) {}), now.Add(cfg.staleAfter()), nil, 0},
		{"stale sample (stuck collector) closes the gate", mk(func(*ReplicaStatus) {}), now.Add(cfg.staleAfter() + time.Millisecond), ErrReplicaBehind, cfg.BehindBackoff},
	}
	for _, c := range cases {
		backoff, err := decide(c.s, cfg, c.now)
		if (c.want == nil) != (err == nil) || (c.want != nil && !errors.Is(err, c.want)) || backoff != c.backoff {
			t.Errorf("%s: %v, %v; want %v, %v", c.name, backoff, err, c.backoff, c.want)
		}
	}
	// The sampling error stays reachable for the caller's logs.
	cause := errors.New("boom")
	if _, err := decide(&sample{err: cause, at: now}, cfg, now); !errors.Is(err, cause) {
		t.Errorf("sample error not wrapped: %v", err)
	}
}

// TestParseReplicaStatus: columns are found by name in any order, only
// "Yes" counts as running, NULL lag stays NULL, the source's server id is
// read under both flavors' names.
func TestParseReplicaStatus(t *testing.T) {
	t.Parallel()
	ns := func(s string) sql.NullString { return sql.NullString{String: s, Valid: true} }
	cols := []string{"Slave_SQL_Running", "Extra", "Seconds_Behind_Master", "Last_IO_Error", "Slave_IO_Running", "Last_SQL_Error"}
	st := parseReplicaStatus(flavor.MariaDB{}, cols, []sql.NullString{ns("Yes"), ns("x"), ns("3"), ns(""), ns("Connecting"), ns("")})
	if !st.Configured || !st.SQLRunning || st.IORunning || !st.SecondsBehind.Valid || st.SecondsBehind.Int64 != 3 {
		t.Errorf("mariadb: %+v", st)
	}
	st = parseReplicaStatus(flavor.MariaDB{}, cols, []sql.NullString{ns("No"), {}, {}, ns(""), ns("Yes"), ns("Error 'dup' on query")})
	if st.SQLRunning || !st.IORunning || st.SecondsBehind.Valid || st.LastSQLError != "Error 'dup' on query" {
		t.Errorf("mariadb stopped: %+v", st)
	}
	mcols := []string{"Replica_IO_Running", "Replica_SQL_Running", "Seconds_Behind_Source"}
	st = parseReplicaStatus(flavor.MySQL{}, mcols, []sql.NullString{ns("Yes"), ns("Yes"), ns("0")})
	if !st.IORunning || !st.SQLRunning || st.SecondsBehind.Int64 != 0 || !st.SecondsBehind.Valid {
		t.Errorf("mysql: %+v", st)
	}
	// The source's server id, under either flavor's column name; 0 (the
	// value before a first connection) reads as unknown.
	for _, c := range []struct {
		col, val string
		want     uint32
	}{{"Master_Server_Id", "1001", 1001}, {"Source_Server_Id", "7", 7}, {"Master_Server_Id", "0", 0}} {
		st = parseReplicaStatus(flavor.MariaDB{}, []string{c.col}, []sql.NullString{ns(c.val)})
		if st.SourceServerID != c.want {
			t.Errorf("%s = %s: source %d, want %d", c.col, c.val, st.SourceServerID, c.want)
		}
	}
}
