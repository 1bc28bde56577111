package queue

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/nonqueue/nonqueue/internal/ident"
	"github.com/nonqueue/nonqueue/internal/meta"
)

// Names of nonqueue's own tables in Config.MetaSchema (owned by
// internal/meta, which holds their DDL).
const (
	RunTable       = meta.RunTable
	InstanceTable  = meta.InstanceTable
	HeartbeatTable = meta.HeartbeatTable
)

// DDL returns the statements that make the configured tables ready:
// CREATE for nonqueue's own topic table, or ALTER TABLE … ADD COLUMN IF NOT
// EXISTS for the protocol columns a mapped table lacks, then the run
// history, instance registry and lag heartbeat tables, and last the request
// trigger (RequestTrigger). Every statement is idempotent (MariaDB's IF NOT
// EXISTS, OR REPLACE), so applying it twice changes nothing. c must have
// passed Validate.
func (c Config) DDL() []string {
	col := c.Columns
	q := ident.Quote
	topic := ident.Qualified(c.Schema, c.Table)
	claimable := fmt.Sprintf("(%s = 0 AND %s > 0 AND %s IS NULL)", q(col.Running), q(col.Required), q(col.ParkedAt))
	protocol := []string{
		q(col.ClaimToken) + " BIGINT UNSIGNED NOT NULL DEFAULT 0 COMMENT 'nonqueue: fencing token, bumped by every claim'",
		q(col.RequestVersion) + " BIGINT UNSIGNED NOT NULL DEFAULT 0 COMMENT 'nonqueue: bumped by every request'",
		q(col.ClaimedVersion) + " BIGINT UNSIGNED NOT NULL DEFAULT 0 COMMENT 'nonqueue: request version the claim serves'",
		q(col.ClaimedAt) + " DATETIME(6) NULL",
		q(col.HeartbeatAt) + " DATETIME(6) NULL",
		q(col.LeaseUntil) + " DATETIME(6) NULL COMMENT 'nonqueue: the claim may be reaped after this'",
		q(col.Attempts) + " INT UNSIGNED NOT NULL DEFAULT 0",
		q(col.LastError) + " VARCHAR(1000) NULL",
		q(col.ParkedAt) + " DATETIME(6) NULL COMMENT 'nonqueue: failed too often, waits for a new request'",
	}
	// The generated column the claim index starts with. A mapped (live)
	// table gets it VIRTUAL: a STORED one can only be added by copying the
	// whole table under a write lock, while a virtual one is added
	// instantly and its index built online; the index holds the value
	// either way, so the claim still reads it in order. nonqueue's own
	// table is created fresh, so it keeps the STORED column the claim was
	// tuned on (BenchmarkClaim showed no difference beyond its noise on a
	// loaded 2-core host). A mapped table that already has the STORED
	// column keeps it (IF NOT EXISTS): both serve the claim.
	claimableCol := func(kind string) string { return q(col.Claimable) + " TINYINT AS " + claimable + " " + kind }
	indexes := []string{
		// The claim reads this index in order: no filesort, whatever the backlog.
		fmt.Sprintf("nq_claim (%s, %s DESC, %s, %s)", q(col.Claimable), q(col.Priority), q(col.Due), q(col.ID)),
		fmt.Sprintf("nq_lease (%s)", q(col.LeaseUntil)),
	}

	var stmts []string
	if c.Mapped {
		// A live table: each ALTER names the online algorithm it needs, so
		// MariaDB refuses it rather than copy or lock the table (see
		// Queue.ApplySchemaWith). Plain columns are added instantly, then
		// the virtual column on its own (beside other columns MariaDB
		// refuses INSTANT for it on some row formats), then both indexes
		// in one online build.
		var parts []string
		for _, p := range protocol {
			parts = append(parts, "ADD COLUMN IF NOT EXISTS "+p)
		}
		var ixs []string
		for _, ix := range indexes {
			ixs = append(ixs, "ADD INDEX IF NOT EXISTS "+ix)
		}
		// The refresh column on its own, before the virtual column is
		// indexed: MariaDB adds no column online to a table with an
		// indexed virtual column, so only a table set up before it came
		// lacks it after this (Config.refreshAlter).
		stmts = append(stmts,
			onlineAlter(topic, parts, algInstant),
			c.refreshAlter(),
			onlineAlter(topic, []string{"ADD COLUMN IF NOT EXISTS " + claimableCol("VIRTUAL")}, algInstant),
			onlineAlter(topic, ixs, algInplace))
	} else {
		stmts = append(stmts, "CREATE DATABASE IF NOT EXISTS "+q(c.Schema))
		defs := []string{
			q(col.ID) + " BIGINT NOT NULL",
			q(col.Required) + " TINYINT NOT NULL DEFAULT 0 COMMENT '0 none, 1 partial, 2 full: the scope'",
			q(col.Due) + " DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) COMMENT 'not before'",
			q(col.Priority) + " INT NOT NULL DEFAULT 0",
			q(col.Running) + " BIGINT NOT NULL DEFAULT 0 COMMENT '0 or the instance holding the claim'",
			q(col.Active) + " TINYINT NOT NULL DEFAULT 1",
		}
		defs = append(defs, protocol...)
		defs = append(defs, c.refreshColumnDef(), claimableCol("STORED"))
		defs = append(defs, "PRIMARY KEY ("+q(col.ID)+")")
		for _, ix := range indexes {
			defs = append(defs, "KEY "+ix)
		}
		stmts = append(stmts, "CREATE TABLE IF NOT EXISTS "+topic+" (\n  "+strings.Join(defs, ",\n  ")+"\n) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4")
		// A table made by an earlier version gets the column it lacks.
		stmts = append(stmts, c.refreshAlter())
	}

	if c.Mapped || c.MetaSchema != c.Schema {
		stmts = append(stmts, "CREATE DATABASE IF NOT EXISTS "+q(c.MetaSchema))
	}
	stmts = append(stmts, meta.DDL(c.MetaSchema)...)
	stmts = append(stmts, c.RequestTrigger().Create())
	return stmts
}

// Script returns DDL as one SQL script, each statement ended by ";".
func (c Config) Script() string {
	var b strings.Builder
	b.WriteString("-- nonqueue schema, generated by `nonqueue schema print`; do not edit.\n")
	for _, s := range c.DDL() {
		b.WriteString("\n" + s + ";\n")
	}
	b.WriteString(c.toolsComment())
	return b.String()
}

// checkStatements touch each of nonqueue's own tables.
func (c Config) checkStatements() []string {
	var stmts []string
	for _, t := range meta.Tables {
		stmts = append(stmts, "SELECT id FROM "+ident.Qualified(c.MetaSchema, t)+" LIMIT 0")
	}
	return stmts
}

// Trigger is one trigger of the schema: where it lives and its body, so
// ApplySchema can tell an installed trigger that is current from one to
// replace.
type Trigger struct {
	Schema, Name, Table string
	// Timing and Event, as information_schema.TRIGGERS spells them.
	Timing, Event string
	// Body is the trigger's one statement, as information_schema.TRIGGERS
	// shows it in ACTION_STATEMENT.
	Body string
}

// Create is the statement that installs t, or replaces an older version
// of it in one step. The body is one statement without ";", so the script
// of `schema print` runs in the mariadb client without DELIMITER.
func (t Trigger) Create() string {
	return fmt.Sprintf("CREATE OR REPLACE TRIGGER %s %s %s ON %s FOR EACH ROW\n%s",
		ident.Qualified(t.Schema, t.Name), t.Timing, t.Event, ident.Qualified(t.Schema, t.Table), t.Body)
}

// RequestTrigger returns the BEFORE UPDATE trigger that turns any write to
// a topic that is not one of nonqueue's own protocol steps, and that sets
// required above 0 or changes it or the due date, into a request: it bumps
// the request version, so a run in flight keeps the request when it
// finishes, releases, or is reaped, and unparks a parked topic with its
// attempts reset, as Request does (docs/design.md, "Requests"). The application's own
// plain UPDATE (the original system requested that way) then works like
// `nonqueue request`, without a change to its SQL.
//
// nonqueue's own steps are told apart by what they change, not by who
// sends them, so the trigger decides the same on a replica that runs it
// for a row event (slave_run_triggers_for_rbr) and never bumps twice:
// claim, finish, release, reap and an operator's release change running;
// request bumps the request version itself; heartbeat, park, unpark and
// priority changes move neither required nor due.
//
// A write that leaves required and due as they were cannot be seen (a
// trigger sees values, not assignments): the claim moves a due date of the
// last two seconds back to two seconds before the claim, so an
// application's `due = NOW()` during the run always changes it.
//
// The trigger runs with its definer's privileges (the account that ran
// schema apply): if that account loses TRIGGER or UPDATE on the table, the
// application's UPDATEs of it fail. It is created after any trigger the
// application already has, so it sees their changes to NEW.
func (c Config) RequestTrigger() Trigger {
	col := c.Columns
	q := ident.Quote
	name := "nq_request_" + c.Table
	if len(name) > 64 {
		sum := sha256.Sum256([]byte(c.Table))
		name = "nq_request_" + hex.EncodeToString(sum[:])[:24]
	}
	newv := func(n string) string { return "NEW." + q(n) }
	oldv := func(n string) string { return "OLD." + q(n) }
	cond := fmt.Sprintf("%s <=> %s AND %s <=> %s AND %s > 0 AND NOT (%s <=> %s AND %s <=> %s)",
		newv(col.RequestVersion), oldv(col.RequestVersion),
		newv(col.Running), oldv(col.Running),
		newv(col.Required),
		newv(col.Required), oldv(col.Required), newv(col.Due), oldv(col.Due))
	// A request also unparks the topic and resets its attempts, as
	// Request does. The assignments run in order and cond reads the
	// request version, so the version is bumped last.
	return Trigger{
		Schema: c.Schema, Name: name, Table: c.Table, Timing: "BEFORE", Event: "UPDATE",
		Body: fmt.Sprintf("SET %[2]s = IF(%[1]s AND %[3]s IS NOT NULL, 0, %[2]s), %[3]s = IF(%[1]s, NULL, %[3]s), %[4]s = %[4]s + IF(%[1]s, 1, 0)",
			cond, newv(col.Attempts), newv(col.ParkedAt), newv(col.RequestVersion)),
	}
}
