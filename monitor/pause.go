package monitor

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/ident"
	"github.com/nonqueue/nonqueue/internal/meta"
)

// PauseTable is the pause table's name inside the meta schema (owned by
// internal/meta).
const PauseTable = meta.PauseTable

// Limits of a pause's fields, checked by PauseParams.Validate.
const (
	// MaxPauseReason is the longest reason, in characters.
	MaxPauseReason = 500
	// MaxPauseBy is the longest "paused by" or "resumed by", in characters.
	MaxPauseBy = 255
	// MaxPauseFor is the longest timed pause; a longer one is a pause
	// until resumed.
	MaxPauseFor = 366 * 24 * time.Hour
)

// Pause kinds, the values of PauseScope.Kind and of nonqueue_paused's
// scope label.
const (
	PauseKindAll      = "all"            // every replica, every topic
	PauseKindReplica  = "replica"        // one replica's workers, every topic
	PauseKindPriority = "below_priority" // topics below a priority (on every replica, or on one)
)

// PauseScope is what a pause covers: the workers of one replica or of all,
// and topics below a priority or all of them. The zero value covers
// everything.
type PauseScope struct {
	// ReplicaServerID limits the pause to workers on the replica with this
	// @@server_id; 0 means every replica.
	ReplicaServerID uint32 `json:"replica_server_id,omitempty"`
	// BelowPriority limits the pause to topics whose priority is below
	// it (those at or above it are still claimed); nil means every topic.
	BelowPriority *int64 `json:"below_priority,omitempty"`
}

// Kind names the scope for metrics: PauseKindAll, PauseKindReplica or
// PauseKindPriority.
func (s PauseScope) Kind() string {
	switch {
	case s.BelowPriority != nil:
		return PauseKindPriority
	case s.ReplicaServerID != 0:
		return PauseKindReplica
	}
	return PauseKindAll
}

// String says what the scope covers, in words.
func (s PauseScope) String() string {
	var what string
	if s.BelowPriority != nil {
		what = "topics with priority below " + strconv.FormatInt(*s.BelowPriority, 10)
	} else {
		what = "every topic"
	}
	if s.ReplicaServerID != 0 {
		return fmt.Sprintf("%s on replica %d", what, s.ReplicaServerID)
	}
	return what + " on every replica"
}

// Covers says whether the scope applies to workers on the replica with
// server id serverID.
func (s PauseScope) Covers(serverID uint32) bool {
	return s.ReplicaServerID == 0 || s.ReplicaServerID == serverID
}

// Same says whether s and o are the same scope.
func (s PauseScope) Same(o PauseScope) bool {
	if s.ReplicaServerID != o.ReplicaServerID || (s.BelowPriority == nil) != (o.BelowPriority == nil) {
		return false
	}
	return s.BelowPriority == nil || *s.BelowPriority == *o.BelowPriority
}

// Validate checks the scope's values: a priority bound within the priority
// column's INT range.
func (s PauseScope) Validate() error {
	if p := s.BelowPriority; p != nil && (*p <= math.MinInt32 || *p > math.MaxInt32) {
		return fmt.Errorf("below priority %d: want an integer from %d to %d: %w", *p, math.MinInt32+1, math.MaxInt32, ErrBadPause)
	}
	return nil
}

// Pause is one pause in force, as read from the pause table.
type Pause struct {
	ID     int64      `json:"id"`
	Scope  PauseScope `json:"scope"`
	By     string     `json:"paused_by"`
	Reason string     `json:"reason"`
	// CreatedAt and ExpiresAt are on the primary's clock; a zero
	// ExpiresAt means until resumed.
	CreatedAt time.Time `json:"created_at"`
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// Age is how long ago it was created, Left how long it still runs
	// (0 when it runs until resumed), both measured on the primary when
	// read.
	Age  time.Duration `json:"age_ns"`
	Left time.Duration `json:"left_ns"`
}

// Until says when the pause ends, in words.
func (p Pause) Until() string {
	if p.ExpiresAt.IsZero() {
		return "until resumed"
	}
	return fmt.Sprintf("until %s (%s left)", p.ExpiresAt.Format("2006-01-02 15:04:05"), p.Left.Round(time.Second))
}

// String describes the pause in one line: scope, who, why, until when.
func (p Pause) String() string {
	s := fmt.Sprintf("pause %d: %s, by %s %s ago, %s", p.ID, p.Scope, p.By, p.Age.Round(time.Second), p.Until())
	if p.Reason != "" {
		s += ": " + strconv.Quote(p.Reason)
	}
	return s
}

// Pauses reads and writes the pause table on the primary (docs/design.md,
// "Pause"). A pause stops claims of what it covers; runs in flight finish.
type Pauses struct {
	// Primary is a pool on the primary.
	Primary *sql.DB
	// Schema is the meta schema holding the pause table.
	Schema string
}

// PauseParams describe a new pause.
type PauseParams struct {
	Scope PauseScope
	// By is who pauses: user@host, or the dashboard's operator. Required.
	By     string
	Reason string
	// For makes the pause end by itself after this long; 0 means until
	// resumed.
	For time.Duration
}

// Validate checks p: a valid scope, By given, a bounded reason, For from
// 0 to MaxPauseFor. Errors wrap ErrBadPause.
func (p *PauseParams) Validate() error {
	if err := p.Scope.Validate(); err != nil {
		return err
	}
	if err := checkText("paused by", p.By, MaxPauseBy); err != nil {
		return err
	}
	if strings.TrimSpace(p.By) == "" {
		return fmt.Errorf("paused by: is required: %w", ErrBadPause)
	}
	if err := checkText("reason", p.Reason, MaxPauseReason); err != nil {
		return err
	}
	if p.For < 0 || p.For > MaxPauseFor {
		return fmt.Errorf("for %v: want a positive duration up to %v (or none: until resumed): %w", p.For, MaxPauseFor, ErrBadPause)
	}
	return nil
}

func checkText(what, s string, max int) error {
	if !utf8.ValidString(s) {
		return fmt.Errorf("%s: not valid UTF-8: %w", what, ErrBadPause)
	}
	if n := utf8.RuneCountInString(s); n > max {
		return fmt.Errorf("%s: %d characters, at most %d: %w", what, n, max, ErrBadPause)
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("%s: contains control characters: %w", what, ErrBadPause)
	}
	return nil
}

func (ps *Pauses) table() (string, error) {
	if ps.Primary == nil {
		return "", &ConfigError{Field: "pauses.primary", Err: errors.New("no primary pool")}
	}
	if err := ident.Validate(ps.Schema); err != nil {
		return "", &ConfigError{Field: "pauses.schema", Err: err}
	}
	return ident.Qualified(ps.Schema, PauseTable), nil
}

// pauseActive is the condition of a pause in force.
const pauseActive = `(expires_at IS NULL OR expires_at > NOW(6))`

// pauseSelect reads pauses with their age and time left on the primary's
// clock, so no host's clock skew enters.
const pauseSelect = `SELECT /* nonqueue */ ` + pauseCols + ` FROM %s`

// pauseCols are a pause row's columns, as scanPause reads them.
const pauseCols = `id, replica_server_id, below_priority, paused_by, reason, created_at, expires_at,
 TIMESTAMPDIFF(MICROSECOND, created_at, NOW(6)), TIMESTAMPDIFF(MICROSECOND, NOW(6), expires_at)`

// Add records a pause and returns it as stored. It takes effect on every
// worker it covers within one gate sample interval.
func (ps *Pauses) Add(ctx context.Context, p *PauseParams) (*Pause, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	t, err := ps.table()
	if err != nil {
		return nil, err
	}
	var replica, prio any
	if p.Scope.ReplicaServerID != 0 {
		replica = p.Scope.ReplicaServerID
	}
	if p.Scope.BelowPriority != nil {
		prio = *p.Scope.BelowPriority
	}
	res, err := ps.Primary.ExecContext(ctx, "INSERT /* nonqueue */ INTO "+t+
		" (replica_server_id, below_priority, paused_by, reason, created_at, expires_at) VALUES (?, ?, ?, ?, NOW(6), IF(? = 0, NULL, NOW(6) + INTERVAL ? MICROSECOND))",
		replica, prio, p.By, p.Reason, p.For.Microseconds(), p.For.Microseconds())
	if err != nil {
		return nil, fmt.Errorf("record pause of %s: %w", p.Scope, noTable(err))
	}
	id, err := res.LastInsertId()
	if err != nil {
		return nil, fmt.Errorf("record pause of %s: %w", p.Scope, err)
	}
	got, err := ps.query(ctx, fmt.Sprintf(pauseSelect, t)+" WHERE id = ?", id)
	if err != nil {
		return nil, err
	}
	if len(got) == 0 {
		return nil, fmt.Errorf("read back pause %d: %w", id, ErrPauseNotFound)
	}
	return &got[0], nil
}

// Active returns the pauses in force, oldest first.
func (ps *Pauses) Active(ctx context.Context) ([]Pause, error) {
	t, err := ps.table()
	if err != nil {
		return nil, err
	}
	return ps.query(ctx, fmt.Sprintf(pauseSelect, t)+" WHERE "+pauseActive+" ORDER BY id")
}

// ResumeParams choose the pauses to end: one by ID, every one (All), or
// those of exactly Scope (the zero Scope: the pauses of everything).
type ResumeParams struct {
	ID    int64
	All   bool
	Scope PauseScope
	// By is who resumes; recorded in the row. Required.
	By string
}

// Resume ends the chosen pauses in force (sets their expiry to now and
// records who resumed them) and returns them; none matching is not an
// error (nothing is returned). Claims resume within one gate sample
// interval, unless another pause still covers them.
func (ps *Pauses) Resume(ctx context.Context, p *ResumeParams) ([]Pause, error) {
	if err := checkText("resumed by", p.By, MaxPauseBy); err != nil {
		return nil, err
	}
	if strings.TrimSpace(p.By) == "" {
		return nil, fmt.Errorf("resumed by: is required: %w", ErrBadPause)
	}
	if err := p.Scope.Validate(); err != nil {
		return nil, err
	}
	active, err := ps.Active(ctx)
	if err != nil {
		return nil, err
	}
	t, _ := ps.table()
	var ended []Pause
	for _, a := range active {
		switch {
		case p.ID != 0 && a.ID != p.ID, p.ID == 0 && !p.All && !a.Scope.Same(p.Scope):
			continue
		}
		res, err := ps.Primary.ExecContext(ctx, "UPDATE /* nonqueue */ "+t+" SET expires_at = NOW(6), resumed_by = ? WHERE id = ? AND "+pauseActive, p.By, a.ID)
		if err != nil {
			return ended, fmt.Errorf("resume pause %d: %w", a.ID, err)
		}
		if n, err := res.RowsAffected(); err == nil && n > 0 {
			ended = append(ended, a)
		}
	}
	return ended, nil
}

func (ps *Pauses) query(ctx context.Context, stmt string, args ...any) ([]Pause, error) {
	rows, err := ps.Primary.QueryContext(ctx, stmt, args...)
	if err != nil {
		return nil, fmt.Errorf("read pauses: %w", noTable(err))
	}
	defer rows.Close()
	var out []Pause
	for rows.Next() {
		p, err := scanPause(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read pauses: %w", err)
	}
	return out, nil
}

// noTable adds ErrNoPauseTable to a "table doesn't exist" error (1146).
func noTable(err error) error {
	if me := (*mysql.MySQLError)(nil); errors.As(err, &me) && me.Number == 1146 {
		return fmt.Errorf("%w: %w", ErrNoPauseTable, err)
	}
	return err
}

func scanPause(rows *sql.Rows) (Pause, error) {
	p, _, err := scanPauseAfter(rows, nil)
	return p, err
}

// scanPauseAfter reads a row of extra values (into extra) followed by a
// pause's columns, which may all be NULL (a LEFT JOIN that found no
// pause): ok says a pause was there.
func scanPauseAfter(rows *sql.Rows, extra []any) (p Pause, ok bool, err error) {
	var (
		id, replica, prio, ageUS, leftUS sql.NullInt64
		by, reason                       sql.NullString
		created, expires                 sql.NullTime
	)
	dest := append(extra[:len(extra):len(extra)], &id, &replica, &prio, &by, &reason, &created, &expires, &ageUS, &leftUS)
	if err := rows.Scan(dest...); err != nil {
		return p, false, fmt.Errorf("read pauses: %w", err)
	}
	if !id.Valid {
		return p, false, nil
	}
	p.ID, p.By, p.Reason, p.CreatedAt = id.Int64, by.String, reason.String, created.Time
	p.Scope.ReplicaServerID = uint32(replica.Int64)
	if prio.Valid {
		v := prio.Int64
		p.Scope.BelowPriority = &v
	}
	if expires.Valid {
		p.ExpiresAt = expires.Time
	}
	p.Age = time.Duration(ageUS.Int64) * time.Microsecond
	if leftUS.Valid {
		p.Left = max(time.Duration(leftUS.Int64)*time.Microsecond, 0)
	}
	return p, true, nil
}
