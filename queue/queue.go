package queue

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/flavor"
	"github.com/nonqueue/nonqueue/internal/format"
	"github.com/nonqueue/nonqueue/internal/ident"
)

// Sentinel errors of the topic table.
var (
	// ErrNoneDue: no topic is claimable for these parameters right now.
	ErrNoneDue = errors.New("no topic due")
	// ErrClaimLost: the claim was taken back (reaped, released by an
	// operator) or never existed; the holder must stop and publish nothing.
	ErrClaimLost = errors.New("claim lost")
)

// Claim is an instance's hold on one topic. Token is the fencing token:
// every later write about the topic checks it.
type Claim struct {
	TopicID        int64
	InstanceID     int64
	Token          uint64
	Scope          int    // the required value at claim time: 1 partial, 2 full
	RequestVersion uint64 // request version this claim serves
	Attempts       int    // failed runs and rescues before this claim
	Priority       int64
	// PrimaryPos is the primary's GTID position read right after the
	// claim committed, in the same round trip as the claimed row: a
	// replica that has reached it has every write committed before the
	// claim (docs/design.md, "GTID wait").
	PrimaryPos string
}

// Queue runs the protocols on one topic table. It owns its connection pool
// to the primary; it is safe for concurrent use.
type Queue struct {
	db  *sql.DB
	cfg Config
	sql statements
	// Prepared once: each call is then one round trip (EXECUTE) instead of
	// three (PREPARE, EXECUTE, CLOSE); database/sql re-prepares per
	// connection as needed.
	heartbeatStmt, holdsStmt, releaseStmt, finishStmt *sql.Stmt
	stats                                             struct{ won, lost, empty, combined atomic.Int64 }

	// Claims waiting for the next combined claim (claimbatch.go), and
	// whether a goroutine is serving them.
	cmu     sync.Mutex
	pending []*claimReq
	leading bool

	// refreshCol: the topic table has the refresh interval column
	// (refresh.go); set by Open and ApplySchema.
	refreshCol bool
}

// ClaimStats counts claim outcomes since Open.
type ClaimStats struct {
	Won   int64 // claims that returned a topic
	Lost  int64 // compare-and-sets that lost: deadlock or lock-wait retries, and claims taken back before they were read
	Empty int64 // claims that found nothing due
	// Combined counts the claims won through a combined statement
	// (claims of one Queue that arrived together).
	Combined int64
}

// Stats returns the claim counters; safe for concurrent use.
func (q *Queue) Stats() ClaimStats {
	return ClaimStats{Won: q.stats.won.Load(), Lost: q.stats.lost.Load(), Empty: q.stats.empty.Load(), Combined: q.stats.combined.Load()}
}

// Open validates cfg, connects to the primary described by mc and checks
// the connection. It sets what the protocols need on every connection of
// its own pool: READ COMMITTED (the one-statement claim stalls in lock waits
// under REPEATABLE READ) and found-rows counting, so a fenced write that
// matches its row counts as done even when it changes nothing.
func Open(ctx context.Context, mc *mysql.Config, cfg Config) (*Queue, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	mc = mc.Clone()
	mc.ClientFoundRows = true
	mc.ParseTime = true
	// The one-statement claim and its read go in one round trip
	// (claimOne); every statement of the queue is its own text, with only
	// integers written in.
	mc.MultiStatements = true
	if mc.Params == nil {
		mc.Params = map[string]string{}
	}
	mc.Params["tx_isolation"] = "'READ-COMMITTED'"
	conn, err := mysql.NewConnector(mc)
	if err != nil {
		return nil, fmt.Errorf("open primary %s: %w", mc.Addr, err)
	}
	db := sql.OpenDB(conn)
	db.SetMaxOpenConns(64)
	db.SetMaxIdleConns(64)
	db.SetConnMaxIdleTime(5 * time.Minute)
	f, err := flavor.Detect(ctx, db)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("connect to primary %s: %w", mc.Addr, err)
	}
	q := &Queue{db: db, cfg: cfg, sql: buildStatements(cfg, f)}
	if err := q.detectRefreshColumn(ctx); err != nil {
		db.Close()
		return nil, err
	}
	q.prepare(ctx)
	return q, nil
}

// prepare prepares the hot statements. Preparing checks them against the
// table, but the schema may not exist yet (schema apply), so a failure
// leaves the statement unprepared and ApplySchema tries again.
func (q *Queue) prepare(ctx context.Context) {
	for _, p := range q.prepared() {
		if *p.dst != nil {
			continue
		}
		if st, err := q.db.PrepareContext(ctx, p.text); err == nil {
			*p.dst = st
		}
	}
}

// preparedStmt is a hot statement and where its prepared form lives.
type preparedStmt struct {
	dst  **sql.Stmt
	text string
}

// prepared lists the hot statements, for prepare and Close.
func (q *Queue) prepared() []preparedStmt {
	return []preparedStmt{
		{&q.heartbeatStmt, q.sql.heartbeat}, {&q.holdsStmt, q.sql.holds}, {&q.releaseStmt, q.sql.release},
		{&q.finishStmt, q.sql.finish},
	}
}

// Close closes the pool.
func (q *Queue) Close() error {
	for _, p := range q.prepared() {
		if *p.dst != nil {
			(*p.dst).Close()
		}
	}
	return q.db.Close()
}

// exec runs a statement through its prepared form when there is one.
func (q *Queue) exec(ctx context.Context, st *sql.Stmt, text string, args ...any) (sql.Result, error) {
	if st != nil {
		return st.ExecContext(ctx, args...)
	}
	return q.db.ExecContext(ctx, text, args...)
}

// queryRow runs a one-row query through its prepared form when there is one.
func (q *Queue) queryRow(ctx context.Context, st *sql.Stmt, text string, args ...any) *sql.Row {
	if st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return q.db.QueryRowContext(ctx, text, args...)
}

// Config returns the configuration in force, defaults filled.
func (q *Queue) Config() Config { return q.cfg }

// DB returns the queue's pool on the primary, for callers that need to read
// the tables it manages (status, tests).
func (q *Queue) DB() *sql.DB { return q.db }

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// statements are built once from the configured names; values only ever
// travel as arguments.
type statements struct {
	claim, claimRead, heartbeat, holds, release, finish string
	// The lease keeper's (leases.go): one claim's fence with its three
	// placeholders, and the renewal and read of many claims, their lists
	// written in with fmt (%d lease µs, %s ids, %s fences; %s ids).
	fence, renewMany, holdersMany    string
	finishCol, finishNoCol           string // finish's variants (refresh.go)
	releasedParked                   string
	claimPick, claimMark, primaryPos string
	dueProbe, expiredProbe           string
	reapFind, reapTake, reapRecord   string
	request, requestCreate           string
	activeArgs                       []any
}

// claimDueMargin is how far before the claim's own second the claim moves
// a recent due date (claimDue).
const claimDueMargin = 2 // seconds

// claimDue is what the claim writes into the due column: the due date, or
// claimDueMargin seconds before the claim's whole second if that is
// earlier. The topic is due either way (due <= now), so nothing changes for
// the order of claims; but the request trigger (Config.RequestTrigger) sees
// a request only as a changed value, and the application requests with
// due = NOW() in whole seconds: had the claim left a due date of its own
// second, a re-request in that second would change nothing and be lost.
// With the margin, any due date the application writes from NOW() during
// the run (a statement that began up to a second before the claim
// included) differs from the claimed row's. Only topics claimed within two
// seconds of their due date see it moved back, by at most that.
func claimDue(due string) string {
	return fmt.Sprintf("LEAST(%s, NOW() - INTERVAL %d SECOND)", due, claimDueMargin)
}

func buildStatements(cfg Config, f flavor.Flavor) statements {
	c := cfg.Columns
	q := ident.Quote
	t := ident.Qualified(cfg.Schema, cfg.Table)
	run := ident.Qualified(cfg.MetaSchema, RunTable)
	active := make([]string, len(cfg.ActiveValues))
	args := make([]any, len(cfg.ActiveValues))
	for i, v := range cfg.ActiveValues {
		active[i], args[i] = "?", v
	}
	fence := fmt.Sprintf("%s = ? AND %s = ? AND %s = ?", q(c.ID), q(c.Running), q(c.ClaimToken))
	r := strings.NewReplacer(
		"{t}", t, "{run}", run, "{fence}", fence, "{active}", strings.Join(active, ", "),
		"{id}", q(c.ID), "{required}", q(c.Required), "{due}", q(c.Due), "{priority}", q(c.Priority),
		"{running}", q(c.Running), "{activecol}", q(c.Active), "{token}", q(c.ClaimToken),
		"{reqv}", q(c.RequestVersion), "{claimedv}", q(c.ClaimedVersion), "{claimed_at}", q(c.ClaimedAt),
		"{hb}", q(c.HeartbeatAt), "{lease}", q(c.LeaseUntil), "{attempts}", q(c.Attempts),
		"{lasterr}", q(c.LastError), "{parked}", q(c.ParkedAt), "{claimable}", q(c.Claimable),
		"{primarypos}", f.PrimaryPosExpr(), "{claimdue}", claimDue(q(c.Due)),
		"{refresh}", q(c.Refresh),
	)
	finishCol, finishNoCol := finishStatements(r)
	return statements{
		// One statement: pick in index order, compare-and-set, and hand the
		// id back through LAST_INSERT_ID (read on the same connection: see
		// claimOne).
		// FORCE INDEX: with stale statistics (a freshly filled table) the
		// optimizer may pick the primary key and sort every row.
		// {due} = {claimdue}: see claimDue.
		claim: r.Replace(`UPDATE /* nonqueue claim */ {t} FORCE INDEX (nq_claim) SET {running} = ?, {token} = {token} + 1,
 {claimedv} = {reqv}, {due} = {claimdue}, {claimed_at} = NOW(6), {hb} = NOW(6), {lease} = NOW(6) + INTERVAL ? MICROSECOND,
 {id} = LAST_INSERT_ID({id})
 WHERE {claimable} = 1 AND {due} <= NOW(6) AND {activecol} IN ({active}) AND {priority} >= ?
 ORDER BY {priority} DESC, {due}, {id} LIMIT 1`),
		// The combined claim (claimbatch.go): pick and lock in claim
		// order, skipping rows other sessions hold, then mark each for its
		// instance; {cases}, {ids} and {lease_us} are integers filled in
		// per batch.
		claimPick: r.Replace(`SELECT /* nonqueue claim */ {id}, {required}, {token}, {reqv}, {attempts}, {priority}
 FROM {t} FORCE INDEX (nq_claim)
 WHERE {claimable} = 1 AND {due} <= NOW(6) AND {activecol} IN ({active}) AND {priority} >= ?
 ORDER BY {priority} DESC, {due}, {id} LIMIT ? FOR UPDATE SKIP LOCKED`),
		claimMark: r.Replace(`UPDATE /* nonqueue claim */ {t} SET {running} = CASE {id}{cases} END, {token} = {token} + 1,
 {claimedv} = {reqv}, {due} = {claimdue}, {claimed_at} = NOW(6), {hb} = NOW(6), {lease} = NOW(6) + INTERVAL {lease_us} MICROSECOND
 WHERE {id} IN ({ids}) AND {claimable} = 1`),
		primaryPos: "SELECT /* nonqueue claim */ " + f.PrimaryPosExpr(),
		// The idle probe's look (probe.go): the claim's filter and order,
		// reading one index entry instead of taking it.
		dueProbe: r.Replace(`(SELECT {priority} FROM {t} FORCE INDEX (nq_claim)
 WHERE {claimable} = 1 AND {due} <= NOW(6) AND {activecol} IN ({active}) AND {priority} >= ?
 ORDER BY {priority} DESC, {due}, {id} LIMIT 1)`),
		expiredProbe: r.Replace(`EXISTS(SELECT 1 FROM {t} FORCE INDEX (nq_lease) WHERE {lease} < NOW(6))`),
		// On the claim's connection: LAST_INSERT_ID is the session's
		// (a primary key lookup: the server reads it as a constant).
		claimRead: r.Replace(`SELECT /* nonqueue claim */ {id}, {required}, {token}, {claimedv}, {attempts}, {priority}, {primarypos}
 FROM {t} WHERE {id} = LAST_INSERT_ID() AND {running} = ?`),
		heartbeat: r.Replace(`UPDATE /* nonqueue heartbeat */ {t} SET {hb} = NOW(6), {lease} = NOW(6) + INTERVAL ? MICROSECOND
 WHERE {fence}`),
		holds: r.Replace(`SELECT /* nonqueue fence */ 1 FROM {t} WHERE {fence}`),
		fence: fence,
		renewMany: r.Replace(`UPDATE /* nonqueue heartbeat */ {t} SET {hb} = NOW(6), {lease} = NOW(6) + INTERVAL %d MICROSECOND
 WHERE {id} IN (%s) AND (%s)`),
		holdersMany: r.Replace(`SELECT /* nonqueue heartbeat */ {id}, {running}, {token} FROM {t} WHERE {id} IN (%s)`),
		// Assignments run left to right on the updated values (MariaDB and
		// MySQL single-table UPDATE), so attempts is bumped before parked
		// reads it. A request that arrived during the run ({reqv} <>
		// {claimedv}: nonqueue's or the application's, see
		// Config.RequestTrigger) keeps the date it asked for and is never
		// parked: the topic must run again.
		release: r.Replace(`UPDATE /* nonqueue release */ {t} SET {running} = 0, {hb} = NULL, {lease} = NULL,
 {attempts} = {attempts} + ?, {lasterr} = COALESCE(?, {lasterr}),
 {due} = IF({reqv} = {claimedv}, GREATEST({due}, NOW(6) + INTERVAL ? MICROSECOND), {due}),
 {parked} = IF(? AND ? > 0 AND {attempts} >= ? AND {reqv} = {claimedv}, NOW(6), NULL)
 WHERE {fence}`),
		releasedParked: r.Replace(`SELECT /* nonqueue release */ {parked} IS NOT NULL FROM {t} WHERE {id} = ?`),
		// A re-request during the run bumped the request version: keep it.
		// With a refresh interval, schedule the next run (refresh.go).
		finish: finishCol, finishCol: finishCol, finishNoCol: finishNoCol,
		reapFind: r.Replace(`SELECT /* nonqueue reap */ {id}, {running}, {token}, {required}
 FROM {t} WHERE {lease} < NOW(6) AND {running} <> 0 ORDER BY {lease} LIMIT ?`),
		// As release: a request during the run is never parked.
		reapTake: r.Replace(`UPDATE /* nonqueue reap */ {t} SET {running} = 0, {hb} = NULL, {lease} = NULL,
 {attempts} = {attempts} + 1, {lasterr} = ?,
 {parked} = IF(? > 0 AND {attempts} >= ? AND {reqv} = {claimedv}, NOW(6), NULL)
 WHERE {fence} AND {lease} < NOW(6)`),
		reapRecord: r.Replace(`INSERT /* nonqueue reap */ INTO {run} (topic_id, instance_id, claim_token, scope, outcome, error, finished_at)
 VALUES (?, ?, ?, ?, ?, ?, NOW(6))`),
		// Left to right: due reads the old required. A request never
		// lowers the scope, never delays a pending request, and unparks.
		request: r.Replace(`UPDATE /* nonqueue request */ {t} SET
 {due} = IF({required} > 0 AND {parked} IS NULL, LEAST({due}, NOW(6) + INTERVAL ? MICROSECOND), NOW(6) + INTERVAL ? MICROSECOND),
 {priority} = COALESCE(?, {priority}),
 {attempts} = IF({parked} IS NULL, {attempts}, 0),
 {required} = GREATEST({required}, ?),
 {parked} = NULL,
 {reqv} = {reqv} + 1
 WHERE {id} IN ({ids})`),
		requestCreate: r.Replace(`INSERT IGNORE /* nonqueue request */ INTO {t} ({id}, {required}) VALUES {rows}`),
		activeArgs:    args,
	}
}

// ClaimParams selects what an instance may claim.
type ClaimParams struct {
	// InstanceID is written into the running column; must not be 0.
	InstanceID int64
	// MinPriority: only topics with at least this priority.
	MinPriority int64
}

// Claim takes the most urgent due topic (priority desc, due asc, id) that
// is claimable, active and at least MinPriority, as a compare-and-set. It
// returns ErrNoneDue when there is none. Claims that arrive together are
// served by one combined statement (claimbatch.go). A deadlock or lock wait
// timeout is retried a few times before it is returned. Once sent, a claim
// is seen through whatever happens to ctx (bounded by 30s): a claim
// abandoned after it committed would leave its topic marked running.
func (q *Queue) Claim(ctx context.Context, p *ClaimParams) (*Claim, error) {
	if p.InstanceID == 0 {
		return nil, errClaimZero
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	r := &claimReq{p: *p, done: make(chan claimResult, 1)}
	q.enqueue(r)
	res := <-r.done
	return res.c, res.err
}

// claimOne is the one-statement claim: pick in index order, compare-and-set
// and hand the id back through LAST_INSERT_ID, then read the claim.
//
// A BEFORE UPDATE trigger on the table (nonqueue's request trigger, or one
// of the application's) keeps the id out of the OK packet, while the
// session's LAST_INSERT_ID() still has it: so the claim and its read share
// one connection, and read it there. They go as text with their integers
// (given, or from the configuration) written in, together in one request
// (a multi-statement): one round trip for the whole claim.
func (q *Queue) claimOne(ctx context.Context, p *ClaimParams) (*Claim, error) {
	args := make([]int64, 0, 3+len(q.cfg.ActiveValues))
	args = append(args, p.InstanceID, q.cfg.Lease.Microseconds())
	args = append(args, q.cfg.ActiveValues...)
	args = append(args, p.MinPriority)
	claim := bindInts(q.sql.claim, args...)

	conn, err := q.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	defer conn.Close()
	// The claim, its row count and its read, sent together: one round
	// trip. The server runs them in order and stops at the first error,
	// so a deadlock of the UPDATE is retried as before, and the read sees
	// the claim's LAST_INSERT_ID.
	batch := claim + ";\nSELECT /* nonqueue claim */ ROW_COUNT();\n" + bindInts(q.sql.claimRead, p.InstanceID)
	var n int64
	var c *Claim
	err = q.retryLost(ctx, func() (err error) {
		n, c, err = q.claimRoundTrip(ctx, conn, batch, p.InstanceID)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	if n == 0 {
		q.stats.empty.Add(1)
		return nil, ErrNoneDue
	}
	if c == nil {
		// Taken back between our two statements: only a lease shorter
		// than the time between them makes this happen.
		q.stats.lost.Add(1)
		return nil, fmt.Errorf("claim: %w", ErrClaimLost)
	}
	q.stats.won.Add(1)
	return c, nil
}

// claimRoundTrip sends claimOne's three statements and reads their
// results: the UPDATE's (none), the rows it claimed, and the claim.
func (q *Queue) claimRoundTrip(ctx context.Context, conn *sql.Conn, batch string, instance int64) (n int64, c *Claim, err error) {
	rows, err := conn.QueryContext(ctx, batch)
	if err != nil {
		return 0, nil, err
	}
	defer rows.Close()
	// The UPDATE has no result set; the driver starts with the first one
	// that has columns or at the UPDATE's empty one.
	if cols, _ := rows.Columns(); len(cols) == 0 && !rows.NextResultSet() {
		return 0, nil, fmt.Errorf("no row count after the claim: %w", rows.Err())
	}
	if !rows.Next() {
		return 0, nil, fmt.Errorf("no row count after the claim: %w", rows.Err())
	}
	if err := rows.Scan(&n); err != nil {
		return 0, nil, fmt.Errorf("read the claim's row count: %w", err)
	}
	if !rows.NextResultSet() {
		return 0, nil, fmt.Errorf("read claim: no result: %w", rows.Err())
	}
	if rows.Next() {
		c = &Claim{InstanceID: instance}
		if err := rows.Scan(&c.TopicID, &c.Scope, &c.Token, &c.RequestVersion, &c.Attempts, &c.Priority, &c.PrimaryPos); err != nil {
			return 0, nil, fmt.Errorf("read claim: %w", err)
		}
	}
	if err := rows.Err(); err != nil {
		return 0, nil, fmt.Errorf("read claim: %w", err)
	}
	return n, c, rows.Close()
}

// bindInts writes vals, in order, into the ? placeholders of stmt. Only
// integers go in this way, and nonqueue's statements hold no other "?"
// (identifiers are validated to letters, digits and "_").
func bindInts(stmt string, vals ...int64) string {
	var b strings.Builder
	for _, v := range vals {
		i := strings.IndexByte(stmt, '?')
		if i < 0 {
			panic(fmt.Sprintf("bindInts: %d values for fewer placeholders", len(vals)))
		}
		b.WriteString(stmt[:i])
		b.WriteString(strconv.FormatInt(v, 10))
		stmt = stmt[i+1:]
	}
	if strings.IndexByte(stmt, '?') >= 0 {
		panic("bindInts: placeholders left without a value")
	}
	b.WriteString(stmt)
	return b.String()
}

// retryLost runs f until it succeeds, fails for good, or has lost five
// times to a deadlock or lock wait timeout (counted as lost compare-and-
// sets), backing off a little more each time.
func (q *Queue) retryLost(ctx context.Context, f func() error) error {
	for try := 0; ; try++ {
		err := f()
		if err == nil || try == 4 || !retryable(err) {
			return err
		}
		q.stats.lost.Add(1)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(try+1) * 2 * time.Millisecond):
		}
	}
}

// retryable reports a deadlock (1213) or lock wait timeout (1205).
func retryable(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && (me.Number == 1213 || me.Number == 1205)
}

// Heartbeat extends the claim's lease by Config.Lease from now. It returns
// ErrClaimLost when the claim is no longer the caller's.
func (q *Queue) Heartbeat(ctx context.Context, c *Claim) error {
	return q.fenced(ctx, "heartbeat", c, q.heartbeatStmt, q.sql.heartbeat, q.cfg.Lease.Microseconds())
}

// Holds checks with one read that the claim is still the caller's and
// returns ErrClaimLost when it is not. The answer is a proof only while the
// caller holds the topic's lock (LockName): every path that takes a claim
// from a live instance (the reaper, an operator's release) takes that lock
// first, so under it the claim cannot change hands, and the publish fence
// needs no write (which every replica would have to apply). Outside the
// lock, use Heartbeat.
func (q *Queue) Holds(ctx context.Context, c *Claim) error {
	var one int
	err := q.queryRow(ctx, q.holdsStmt, q.sql.holds, c.TopicID, c.InstanceID, c.Token).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("fence topic %d (instance %d, token %d): %w", c.TopicID, c.InstanceID, c.Token, ErrClaimLost)
	}
	if err != nil {
		return fmt.Errorf("fence topic %d: %w", c.TopicID, err)
	}
	return nil
}

// HoldsQuery is Holds as the text of one statement, the claim's integers
// written in: a row means the claim is still the caller's. A publisher
// sends it on its own session right behind its GET_LOCK, in the same
// request (transfer.ShipParams.FenceQuery), so the fence costs no round
// trip of its own; under the lock it proves the claim as Holds does.
func (q *Queue) HoldsQuery(c *Claim) string {
	return bindInts(q.sql.holds, c.TopicID, c.InstanceID, int64(c.Token))
}

// ReleaseParams says why a claim is given back.
type ReleaseParams struct {
	// Error is recorded as the topic's last error; empty keeps the old one.
	Error string
	// Backoff: the topic is not due again before now + Backoff, unless a
	// request arrived during the run: that request's date stands.
	Backoff time.Duration
	// CountAttempt counts the release as a failed attempt; at
	// Config.MaxAttempts the topic is parked. A release that is nobody's
	// fault (shutdown, replica too far behind) leaves it false.
	CountAttempt bool
}

// Release gives the claim back without clearing the request, so the topic
// runs again after the back-off. A request that arrived during the run
// (from nonqueue or the application) keeps its date instead of the
// back-off, and keeps the topic from being parked. It reports whether the
// topic is now parked, and returns ErrClaimLost when the claim was no
// longer the caller's (nothing is changed then).
func (q *Queue) Release(ctx context.Context, c *Claim, p *ReleaseParams) (parked bool, err error) {
	var msg any
	if p.Error != "" {
		msg = format.Truncate(p.Error, 1000)
	}
	count := 0
	if p.CountAttempt {
		count = 1
	}
	max := q.cfg.MaxAttempts
	err = q.fenced(ctx, "release", c, q.releaseStmt, q.sql.release, count, msg, p.Backoff.Microseconds(), p.CountAttempt, max, max)
	if err != nil {
		return false, err
	}
	if !p.CountAttempt || max <= 0 || c.Attempts+1 < max {
		return false, nil
	}
	// At the limit: parked unless a request arrived during the run, which
	// only the row knows. Parked or not, the answer holds until the next
	// request or unpark, so reading it after the release is exact enough.
	err = q.db.QueryRowContext(ctx, q.sql.releasedParked, c.TopicID).Scan(&parked)
	if err != nil {
		return false, fmt.Errorf("release topic %d: released, but reading whether it is parked failed: %w", c.TopicID, err)
	}
	return parked, nil
}

// Finish marks the claimed run done: the claim is cleared, attempts reset,
// and the request cleared unless a new one arrived during the run. A topic
// with a refresh interval (Config.RefreshInterval, or its own column) is
// instead scheduled again in the same statement: required at the refresh
// scope, due interval after now; a request that arrived during the run
// keeps the higher scope and the earlier date. It returns ErrClaimLost,
// changing nothing (and scheduling nothing), when the claim is gone.
func (q *Queue) Finish(ctx context.Context, c *Claim) error {
	return q.fenced(ctx, "finish", c, q.finishStmt, q.sql.finish, q.cfg.finishArgs()...)
}

func (q *Queue) fenced(ctx context.Context, op string, c *Claim, st *sql.Stmt, text string, args ...any) error {
	args = append(args, c.TopicID, c.InstanceID, c.Token)
	res, err := q.exec(ctx, st, text, args...)
	if err != nil {
		return fmt.Errorf("%s topic %d: %w", op, c.TopicID, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return fmt.Errorf("%s topic %d: %w", op, c.TopicID, err)
	}
	if n == 0 {
		return fmt.Errorf("%s topic %d (instance %d, token %d): %w", op, c.TopicID, c.InstanceID, c.Token, ErrClaimLost)
	}
	return nil
}

var sqlReadOnly = sql.TxOptions{ReadOnly: true}

func (q *Queue) col(name string) string { return ident.Quote(name) }
func (q *Queue) table() string          { return ident.Qualified(q.cfg.Schema, q.cfg.Table) }

// CheckSchema verifies that the topic table has every column and index the
// protocols use and that nonqueue's own tables exist, by preparing the
// statements that use them; nothing runs. The error names what is missing
// as the server reports it. Last it checks that the request trigger is
// installed in its current version (ErrTriggerMissing).
func (q *Queue) CheckSchema(ctx context.Context) error {
	stmts := append([]string{q.sql.claim, q.sql.claimRead, q.sql.claimPick, q.sql.heartbeat, q.sql.holds, q.sql.release, q.sql.finish, q.sql.reapTake}, q.cfg.checkStatements()...)
	for _, s := range stmts {
		st, err := q.db.PrepareContext(ctx, s)
		if err != nil {
			return fmt.Errorf("schema check: %s: %w", firstLine(s), err)
		}
		st.Close()
	}
	return q.checkTrigger(ctx)
}
