package monitor

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/internal/flavor"
)

// ReplicaStatus is one sample of a replica's health.
type ReplicaStatus struct {
	// IORunning and SQLRunning say whether each replication thread runs.
	// Only "Yes" counts: "Connecting" means no event is arriving.
	IORunning, SQLRunning bool
	// SecondsBehind is what the server reports (Seconds_Behind_Master or
	// Seconds_Behind_Source), for display only: it is whole seconds, 0
	// while the IO thread is behind and NULL when stopped.
	SecondsBehind sql.NullInt64
	// LastIOError and LastSQLError are the server's last thread errors.
	LastIOError, LastSQLError string
	// Lag is now − the heartbeat value read back on the replica; the same
	// clock wrote it, so there is no skew. It includes up to one heartbeat
	// interval. Valid only when LagKnown.
	Lag time.Duration
	// LagKnown is false when the heartbeat row is missing on the replica
	// (never written, or not replicated yet).
	LagKnown bool
	// SampledAt is when the heartbeat was read back.
	SampledAt time.Time
	// Configured is false when the server is not a replica at all (the
	// status query returned no row).
	Configured bool
	// SourceServerID is the server_id of the server this replica
	// replicates from (Master_Server_Id; Source_Server_Id on MySQL): the
	// primary, or a middle-tier replica in a tiered topology. 0 when the
	// server does not report it (never connected yet). For display: the
	// lag is measured from the primary's heartbeat whatever the source.
	SourceServerID uint32
}

// parseReplicaStatus reads the replica status row by column name, so column
// order and columns added by later server versions do not matter. A
// missing column reads as empty.
func parseReplicaStatus(f flavor.Flavor, cols []string, vals []sql.NullString) ReplicaStatus {
	get := func(name string) sql.NullString {
		for i, c := range cols {
			if strings.EqualFold(c, name) && i < len(vals) {
				return vals[i]
			}
		}
		return sql.NullString{}
	}
	yes := func(name string) bool { return strings.EqualFold(get(name).String, "Yes") }
	st := ReplicaStatus{
		Configured:   true,
		IORunning:    yes(f.IORunningColumn()),
		SQLRunning:   yes(f.SQLRunningColumn()),
		LastIOError:  get("Last_IO_Error").String,
		LastSQLError: get("Last_SQL_Error").String,
	}
	for _, c := range []string{"Master_Server_Id", "Source_Server_Id"} {
		var id uint32
		if _, err := fmt.Sscan(get(c).String, &id); err == nil && id != 0 {
			st.SourceServerID = id
			break
		}
	}
	if s := get(f.SecondsBehindColumn()); s.Valid {
		var n int64
		if _, err := fmt.Sscan(s.String, &n); err == nil {
			st.SecondsBehind = sql.NullInt64{Int64: n, Valid: true}
		}
	}
	return st
}

// readReplicaStatus runs the flavor's status query and parses its first
// row; no row yields Configured=false.
func readReplicaStatus(ctx context.Context, f flavor.Flavor, db *sql.DB) (ReplicaStatus, error) {
	q := f.ReplicaStatusQuery()
	rows, err := db.QueryContext(ctx, q)
	if err != nil {
		return ReplicaStatus{}, fmt.Errorf("read replica status (%s): %w", q, err)
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return ReplicaStatus{}, fmt.Errorf("read replica status (%s): %w", q, err)
	}
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return ReplicaStatus{}, fmt.Errorf("read replica status (%s): %w", q, err)
		}
		return ReplicaStatus{}, nil
	}
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := rows.Scan(ptrs...); err != nil {
		return ReplicaStatus{}, fmt.Errorf("read replica status (%s): %w", q, err)
	}
	return parseReplicaStatus(f, cols, vals), nil
}

// heartbeatReadSQL reads one writer's clock back; %s is the quoted table.
const heartbeatReadSQL = "SELECT /* nonqueue lag */ ts_us FROM %s WHERE id = ?"

// readLag reads the heartbeat back and fills Lag, LagKnown and SampledAt.
func readLag(ctx context.Context, db *sql.DB, stmt string, writerID uint32, st *ReplicaStatus) error {
	var ts int64
	err := db.QueryRowContext(ctx, stmt, writerID).Scan(&ts)
	now := time.Now()
	st.SampledAt = now
	switch {
	case errors.Is(err, sql.ErrNoRows):
		st.LagKnown = false
		return nil
	case err != nil:
		return fmt.Errorf("read heartbeat %d back on the replica: %w", writerID, err)
	}
	st.LagKnown = true
	st.Lag = max(now.Sub(time.UnixMicro(ts)), 0) // a clock stepped back reads as no lag
	return nil
}
