// Package meta owns nonqueue's own tables in the meta schema: the run
// history, the instance registry, the lag heartbeat, the pauses, the
// replication tree and the binlog followers' positions. queue creates them
// (its DDL) and records reaped and released runs; monitor writes and reads
// them (History, Heartbeat, Gate, the reports). Their names, the values of
// their outcome and state columns and their DDL live here, once, so the two
// packages (which do not import each other) and the tests cannot drift apart.
package meta

import "github.com/nonqueue/nonqueue/internal/ident"

// Names of nonqueue's own tables inside the meta schema.
const (
	RunTable       = "run"
	InstanceTable  = "instance"
	HeartbeatTable = "heartbeat"
	PauseTable     = "pause"
	// SourceTable records, per replica that runs workers, the server it
	// replicates from, so the dashboard can draw the replication tree.
	SourceTable = "replica_source"
	// FollowTable holds one row per binlog follower name (nonqueue
	// follow): its GTID position, written in the same transaction as the
	// requests it issues, and its counters for status and the dashboard.
	FollowTable = "follow"
)

// Tables lists the meta tables in creation order.
var Tables = [...]string{RunTable, InstanceTable, HeartbeatTable, PauseTable, SourceTable}

// followDDL is the follow table. gtid_pos is the source's GTID set (a
// MariaDB GTID list) up to which every followed change has been requested;
// the other columns are what the active follower last reported.
const followDDL = ` (
  name VARCHAR(64) NOT NULL COMMENT 'follower name ([follower] name)',
  gtid_pos VARCHAR(4000) NOT NULL DEFAULT '' COMMENT 'every change up to here is requested',
  host VARCHAR(255) NOT NULL DEFAULT '' COMMENT 'the active follower',
  pid INT NOT NULL DEFAULT 0,
  source VARCHAR(255) NOT NULL DEFAULT '' COMMENT 'the server whose binlog it reads',
  events BIGINT UNSIGNED NOT NULL DEFAULT 0 COMMENT 'row changes of followed tables read, ever',
  requests BIGINT UNSIGNED NOT NULL DEFAULT 0 COMMENT 'topic requests issued, ever',
  events_per_s DOUBLE NOT NULL DEFAULT 0,
  requests_per_s DOUBLE NOT NULL DEFAULT 0,
  delay_us BIGINT NOT NULL DEFAULT 0 COMMENT 'behind its source at the last write',
  last_commit_at DATETIME(6) NULL COMMENT 'source commit time of the last change read',
  active_since DATETIME(6) NULL,
  updated_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  PRIMARY KEY (name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`

// Outcome is the run history's outcome column: how one claim of one topic
// ended.
type Outcome string

// Outcomes of a run, as recorded in the run history.
const (
	OutcomeDone     Outcome = "done"     // published and finished
	OutcomeFailed   Outcome = "failed"   // procedure or transfer failed; released with a back-off
	OutcomeParked   Outcome = "parked"   // failed and reached the attempt limit
	OutcomeReleased Outcome = "released" // given back for no fault of the topic (replica behind, shutdown, operator)
	OutcomeLost     Outcome = "lost"     // the claim was taken back during the run; nothing published
	OutcomeReaped   Outcome = "reaped"   // the lease expired and the reaper took the claim back
)

// State is the instance registry's state column: what an instance is doing.
type State string

// Instance states shown in the registry.
const (
	StateStarting  State = "starting"
	StateIdle      State = "idle"
	StateLagWait   State = "waiting for lag"
	StateThrottled State = "throttled" // the primary throttle holds the work back; the reason column says why
	StateStopped   State = "replica stopped"
	StatePaused    State = "paused" // an operator's pause covers everything it may claim
	StateRunning   State = "running"
	StateStopping  State = "stopping"
	StateExited    State = "exited"
)

// DDL returns the CREATE TABLE IF NOT EXISTS statements of the meta tables
// in schema (which must exist). Each is idempotent.
func DDL(schema string) []string {
	q := func(t string) string { return ident.Qualified(schema, t) }
	return []string{
		"CREATE TABLE IF NOT EXISTS " + q(RunTable) + ` (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  topic_id BIGINT NOT NULL,
  instance_id BIGINT NOT NULL COMMENT 'the instance that ran it, or that reaped it',
  replica VARCHAR(255) NOT NULL DEFAULT '',
  claim_token BIGINT UNSIGNED NOT NULL,
  scope TINYINT NOT NULL DEFAULT 0,
  outcome VARCHAR(16) NOT NULL COMMENT 'done, failed, released, reaped, lost, parked',
  error VARCHAR(4000) NULL,
  bytes_shipped BIGINT UNSIGNED NOT NULL DEFAULT 0,
  started_at DATETIME(6) NULL,
  finished_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  claim_us BIGINT UNSIGNED NOT NULL DEFAULT 0,
  lag_wait_us BIGINT UNSIGNED NOT NULL DEFAULT 0,
  proc_us BIGINT UNSIGNED NOT NULL DEFAULT 0,
  transfer_us BIGINT UNSIGNED NOT NULL DEFAULT 0,
  publish_us BIGINT UNSIGNED NOT NULL DEFAULT 0,
  log_path VARCHAR(1000) NULL,
  publish_started_at DATETIME(6) NULL COMMENT 'publish slot held from (primary clock); NULL without max_concurrent_publishes',
  publish_finished_at DATETIME(6) NULL COMMENT 'publish slot held until (primary clock)',
  PRIMARY KEY (id),
  KEY topic (topic_id, id),
  KEY finished (finished_at),
  KEY outcome (outcome, finished_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`,
		"CREATE TABLE IF NOT EXISTS " + q(InstanceTable) + ` (
  id BIGINT NOT NULL,
  host VARCHAR(255) NOT NULL,
  pid INT NOT NULL,
  version VARCHAR(64) NOT NULL,
  replica_server_id INT UNSIGNED NOT NULL,
  state VARCHAR(32) NOT NULL,
  topic_id BIGINT NULL,
  state_since DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  started_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  heartbeat_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  runs BIGINT UNSIGNED NOT NULL DEFAULT 0,
  failures BIGINT UNSIGNED NOT NULL DEFAULT 0,
  reason VARCHAR(255) NULL COMMENT 'why the instance waits: throttle reasons',
  PRIMARY KEY (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`,
		// Columns added after the tables first shipped, for schemas
		// created before (IF NOT EXISTS: a no-op on current ones; a
		// nullable column at the end is added instantly).
		"ALTER TABLE " + q(RunTable) + ` ADD COLUMN IF NOT EXISTS publish_started_at DATETIME(6) NULL COMMENT 'publish slot held from (primary clock); NULL without max_concurrent_publishes',
  ADD COLUMN IF NOT EXISTS publish_finished_at DATETIME(6) NULL COMMENT 'publish slot held until (primary clock)'`,
		"ALTER TABLE " + q(InstanceTable) + ` ADD COLUMN IF NOT EXISTS reason VARCHAR(255) NULL COMMENT 'why the instance waits: throttle reasons'`,
		"CREATE TABLE IF NOT EXISTS " + q(HeartbeatTable) + ` (
  id INT UNSIGNED NOT NULL COMMENT 'writer: one row per writing process',
  ts_us BIGINT NOT NULL COMMENT 'writer clock, microseconds since the epoch',
  PRIMARY KEY (id)
) ENGINE=InnoDB`,
		// One row per operator pause. A row is in force from created_at
		// until expires_at (NULL: until resumed); resume sets expires_at,
		// so the rows stay as the record of who paused and resumed what.
		"CREATE TABLE IF NOT EXISTS " + q(PauseTable) + ` (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
  replica_server_id INT UNSIGNED NULL COMMENT 'NULL: every replica; else only workers on this replica',
  below_priority INT NULL COMMENT 'NULL: every topic; else only topics with a lower priority',
  paused_by VARCHAR(255) NOT NULL COMMENT 'user@host, or the dashboard operator',
  reason VARCHAR(500) NOT NULL DEFAULT '',
  created_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  expires_at DATETIME(6) NULL COMMENT 'NULL: until resumed',
  resumed_by VARCHAR(255) NULL,
  PRIMARY KEY (id),
  KEY expires (expires_at)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`,
		"CREATE TABLE IF NOT EXISTS " + q(SourceTable) + ` (
  id INT UNSIGNED NOT NULL COMMENT 'a replica running workers: its server_id',
  source_id INT UNSIGNED NOT NULL COMMENT 'server_id it replicates from (SHOW SLAVE STATUS Master_Server_Id)',
  sampled_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  PRIMARY KEY (id)
) ENGINE=InnoDB`,
		"CREATE TABLE IF NOT EXISTS " + q(FollowTable) + followDDL,
	}
}
