package monitor

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/internal/format"
	"github.com/nonqueue/nonqueue/internal/ident"
	"github.com/nonqueue/nonqueue/internal/meta"
)

// Outcomes of a run, as recorded in the run history (internal/meta owns
// the values).
const (
	OutcomeDone     = string(meta.OutcomeDone)     // published and finished
	OutcomeFailed   = string(meta.OutcomeFailed)   // procedure or transfer failed; released with a back-off
	OutcomeParked   = string(meta.OutcomeParked)   // failed and reached the attempt limit
	OutcomeReleased = string(meta.OutcomeReleased) // given back for no fault of the topic (replica behind, shutdown)
	OutcomeLost     = string(meta.OutcomeLost)     // the claim was taken back during the run; nothing published
)

// Run is one row of the run history: what one claim of one topic did and
// where its time went.
type Run struct {
	TopicID    int64
	InstanceID int64
	Replica    string
	ClaimToken uint64
	Scope      int
	Outcome    string
	Error      string
	Bytes      int64
	StartedAt  time.Time
	// Time spent in each phase.
	Claim, LagWait, Proc, Transfer, Publish time.Duration
	LogPath                                 string
	// PublishFrom and PublishTo are when the run held its publish slot
	// (PublishSlots), on the primary's clock; zero when there is no cap or
	// the run never got one. Recorded as publish_started_at and
	// publish_finished_at: two runs' windows overlap only if they held
	// slots at the same time.
	PublishFrom, PublishTo time.Time
	// FinishedAt is when the run ended (the recorder's clock); zero when
	// recorded right away.
	FinishedAt time.Time
	// Err is the error whose text is Error, for observers that tell causes
	// apart with errors.Is (metrics); it is not recorded.
	Err error
}

// History writes the run history and the instance registry, the tables
// named in queue's schema (run, instance) in the meta schema on the
// primary. Its writes are best-effort records: a failure is returned for
// logging and never changes a topic.
type History struct {
	Primary *sql.DB
	// Schema is the meta schema holding the run and instance tables.
	Schema string
}

// RecordRun inserts one run.
func (h *History) RecordRun(ctx context.Context, r *Run) error {
	return h.RecordRuns(ctx, []*Run{r})
}

// runColumns are the run-history columns RecordRuns writes, and runRow one
// row of values: the times are the primary's clock minus how long ago the
// run started and finished by the recorder's clock, so history stays on
// one clock whichever host recorded it, and a row written late (batched)
// still says when the run ended.
const (
	runColumns = `(topic_id, instance_id, replica, claim_token, scope, outcome, error, bytes_shipped, started_at, finished_at,
 claim_us, lag_wait_us, proc_us, transfer_us, publish_us, log_path, publish_started_at, publish_finished_at)`
	runRow = `(?, ?, ?, ?, ?, ?, ?, ?, NOW(6) - INTERVAL ? MICROSECOND, NOW(6) - INTERVAL ? MICROSECOND, ?, ?, ?, ?, ?, ?, ?, ?)`
)

// RecordRuns inserts runs with one statement. A zero FinishedAt means now.
func (h *History) RecordRuns(ctx context.Context, runs []*Run) error {
	if len(runs) == 0 {
		return nil
	}
	if err := ident.Validate(h.Schema); err != nil {
		return fmt.Errorf("record run: %w", err)
	}
	now := time.Now()
	args := make([]any, 0, 18*len(runs))
	for _, r := range runs {
		var errText, logPath any
		if r.Error != "" {
			errText = format.Truncate(r.Error, 4000)
		}
		if r.LogPath != "" {
			logPath = r.LogPath
		}
		finished := r.FinishedAt
		if finished.IsZero() {
			finished = now
		}
		args = append(args, r.TopicID, r.InstanceID, r.Replica, r.ClaimToken, r.Scope, r.Outcome, errText, r.Bytes,
			max(now.Sub(r.StartedAt), 0).Microseconds(), max(now.Sub(finished), 0).Microseconds(),
			r.Claim.Microseconds(), r.LagWait.Microseconds(), r.Proc.Microseconds(), r.Transfer.Microseconds(),
			r.Publish.Microseconds(), logPath, primaryTime(r.PublishFrom), primaryTime(r.PublishTo))
	}
	stmt := `INSERT /* nonqueue run */ INTO ` + ident.Qualified(h.Schema, meta.RunTable) + " " + runColumns + " VALUES " +
		strings.Repeat(runRow+", ", len(runs)-1) + runRow
	if _, err := h.Primary.ExecContext(ctx, stmt, args...); err != nil {
		if len(runs) == 1 {
			return fmt.Errorf("record run of topic %d: %w", runs[0].TopicID, err)
		}
		return fmt.Errorf("record %d runs: %w", len(runs), err)
	}
	return nil
}

// primaryTime is t as a DATETIME argument, NULL when zero. t was read from
// the primary (SYSDATE) on a session of the same time zone, so it goes back
// unchanged.
func primaryTime(t time.Time) any {
	if t.IsZero() {
		return nil
	}
	return t
}

// Instance states shown in the registry (internal/meta owns the values).
const (
	StateStarting = string(meta.StateStarting)
	StateIdle     = string(meta.StateIdle)
	StateLagWait  = string(meta.StateLagWait)
	// StateThrottled: the primary throttle holds the instance back (see
	// SetStateReason: the reasons go to the registry's reason column).
	StateThrottled = string(meta.StateThrottled)
	StateStopped   = string(meta.StateStopped)
	StatePaused    = string(meta.StatePaused)
	StateRunning   = string(meta.StateRunning)
	StateStopping  = string(meta.StateStopping)
	StateExited    = string(meta.StateExited)
)

// InstanceInfo identifies an instance in the registry.
type InstanceInfo struct {
	ID              int64
	Host            string
	PID             int
	Version         string
	ReplicaServerID uint32
}

// Register inserts or refreshes the instance's registry row at start.
func (h *History) Register(ctx context.Context, in InstanceInfo) error {
	stmt := `INSERT /* nonqueue registry */ INTO ` + ident.Qualified(h.Schema, meta.InstanceTable) + ` (id, host, pid, version, replica_server_id, state, topic_id, state_since, started_at, heartbeat_at)
 VALUES (?, ?, ?, ?, ?, ?, NULL, NOW(6), NOW(6), NOW(6))
 ON DUPLICATE KEY UPDATE host = VALUES(host), pid = VALUES(pid), version = VALUES(version), replica_server_id = VALUES(replica_server_id),
 state = VALUES(state), topic_id = NULL, state_since = NOW(6), started_at = NOW(6), heartbeat_at = NOW(6)`
	if _, err := h.Primary.ExecContext(ctx, stmt, in.ID, in.Host, in.PID, in.Version, in.ReplicaServerID, StateStarting); err != nil {
		return fmt.Errorf("register instance %d: %w", in.ID, err)
	}
	return nil
}

// SetSource records that replica (a server_id) replicates from source
// (ReplicaStatus.SourceServerID), for the dashboard's replication tree.
// Instances call it when their gate's sample first shows the source or
// shows it changed, not on every state write.
func (h *History) SetSource(ctx context.Context, replica, source uint32) error {
	stmt := `INSERT /* nonqueue registry */ INTO ` + ident.Qualified(h.Schema, meta.SourceTable) + ` (id, source_id, sampled_at)
 VALUES (?, ?, NOW(6)) ON DUPLICATE KEY UPDATE source_id = ?, sampled_at = NOW(6)`
	if _, err := h.Primary.ExecContext(ctx, stmt, replica, source, source); err != nil {
		return fmt.Errorf("record that replica %d replicates from %d: %w", replica, source, err)
	}
	return nil
}

// Sources reads what SetSource recorded: replica server_id → the server_id
// it replicates from.
func (h *History) Sources(ctx context.Context) (map[uint32]uint32, error) {
	rows, err := h.Primary.QueryContext(ctx, "SELECT /* nonqueue report */ id, source_id FROM "+ident.Qualified(h.Schema, meta.SourceTable)+" LIMIT 10000")
	if err != nil {
		return nil, fmt.Errorf("read replication sources: %w", err)
	}
	defer rows.Close()
	out := map[uint32]uint32{}
	for rows.Next() {
		var id, src uint32
		if err := rows.Scan(&id, &src); err != nil {
			return nil, fmt.Errorf("read replication sources: %w", err)
		}
		out[id] = src
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read replication sources: %w", err)
	}
	return out, nil
}

// SetState records the instance's state (and topic, 0 for none) and
// refreshes its heartbeat; state_since changes only when the state does.
// ran and failed are added to the instance's counters.
func (h *History) SetState(ctx context.Context, id int64, state string, topicID int64, ran, failed int) error {
	return h.SetStateReason(ctx, id, state, "", topicID, ran, failed)
}

// SetStateReason is SetState with the reason the instance waits (the
// throttle reasons, "a,b"; "" for none, stored as NULL), which status and
// the dashboard show beside the state.
func (h *History) SetStateReason(ctx context.Context, id int64, state, reason string, topicID int64, ran, failed int) error {
	var topic, why any
	if topicID != 0 {
		topic = topicID
	}
	if reason != "" {
		why = format.Truncate(reason, 255)
	}
	stmt := `UPDATE /* nonqueue registry */ ` + ident.Qualified(h.Schema, meta.InstanceTable) + ` SET
 state_since = IF(state = ? AND topic_id <=> ?, state_since, NOW(6)), state = ?, topic_id = ?, reason = ?, heartbeat_at = NOW(6),
 runs = runs + ?, failures = failures + ? WHERE id = ?`
	if _, err := h.Primary.ExecContext(ctx, stmt, state, topic, state, topic, why, ran, failed, id); err != nil {
		return fmt.Errorf("set state of instance %d: %w", id, err)
	}
	return nil
}
