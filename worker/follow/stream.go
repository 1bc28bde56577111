package follow

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/nonqueue/nonqueue/queue"
)

// ErrUnmapped: a followed table's row cannot be mapped to its columns
// (the binlog carries no column names and the table's current columns do
// not match the row). Set binlog_row_metadata=FULL on the source.
var ErrUnmapped = errors.New("cannot map binlog row to the table's columns")

// tableMap is a followed table as one TableMapEvent describes it: the
// column index of each of its rules.
type tableMap struct {
	rules []*compiled
	index []int // per rule, the column's index in the row
}

// stream is the state of one active period: the changes read since the
// last flush, grouped for requests, and the position they lead to.
type stream struct {
	f *Follower
	// tables by binlog table id, valid until the next DDL or reconnect.
	tables map[uint64]*tableMap
	// columns of followed tables read from information_schema (when the
	// binlog has no column names), until the next DDL.
	columns map[string][]string

	// The transaction being read.
	txTopics map[groupKey]map[int64]struct{}
	txKeys   map[*compiled]map[any]struct{}
	txEvents uint64
	// txOwn: the transaction wrote only the follow table (a follower's own
	// commit, replicated); txOther: it wrote another table.
	txOwn, txOther bool
	// moved: the position moved past a transaction other than a
	// follower's own commit since the last save.
	moved bool

	// Committed, not yet flushed.
	topics  map[groupKey]map[int64]struct{}
	keys    map[*compiled]map[any]struct{}
	events  uint64
	pending int
	pos     gomysql.GTIDSet // after the last commit read
	saved   string          // the last position saved
	lastTS  time.Time       // commit time of the last transaction read
	delay   time.Duration

	lastSave   time.Time
	savedDelay time.Duration
	// Rates over windows of at least rateWindow.
	rateAt                 time.Time
	rateEvents, rateReqs   uint64
	totalEvents, totalReqs uint64
	evRate, reqRate        float64
}

const rateWindow = 5 * time.Second

func newStream(f *Follower, start gomysql.GTIDSet) *stream {
	now := time.Now()
	return &stream{
		f: f, tables: map[uint64]*tableMap{}, columns: map[string][]string{},
		txTopics: map[groupKey]map[int64]struct{}{}, txKeys: map[*compiled]map[any]struct{}{},
		topics: map[groupKey]map[int64]struct{}{}, keys: map[*compiled]map[any]struct{}{},
		pos: start, saved: start.String(), lastSave: now, rateAt: now,
	}
}

func (s *stream) pendingIDs() int { return s.pending }

// sinceFlush is the time since the last commit of requests or position.
func (s *stream) sinceFlush() time.Duration { return time.Since(s.lastSave) }

// handle reads one event.
func (s *stream) handle(ctx context.Context, ev *replication.BinlogEvent) error {
	switch e := ev.Event.(type) {
	case *replication.MariadbGTIDEvent:
		s.beginTx()
	case *replication.TableMapEvent:
		return s.tableMap(ctx, e)
	case *replication.RowsEvent:
		return s.rows(e)
	case *replication.XIDEvent:
		s.commit(ev.Header.Timestamp, e.GSet)
	case *replication.QueryEvent:
		q := strings.TrimSpace(string(e.Query))
		switch {
		case strings.EqualFold(q, "BEGIN"):
		case strings.EqualFold(q, "COMMIT"):
			s.commit(ev.Header.Timestamp, e.GSet)
		default:
			// DDL (or another statement logged as such): columns may have
			// changed; table ids are new after it.
			clear(s.columns)
			clear(s.tables)
			s.commit(ev.Header.Timestamp, e.GSet)
		}
	case *replication.RotateEvent:
		// A reconnect or a new file: table ids start over.
		clear(s.tables)
	case *replication.GenericEvent:
		if ev.Header.EventType == replication.HEARTBEAT_EVENT && len(s.txTopics) == 0 && len(s.txKeys) == 0 {
			// The source had nothing newer to send: caught up.
			s.delay = 0
			s.f.delayNS.Store(0)
		}
	}
	return nil
}

func (s *stream) beginTx() {
	clear(s.txTopics)
	clear(s.txKeys)
	s.txEvents = 0
	s.txOwn, s.txOther = false, false
}

func (s *stream) commit(ts uint32, gset gomysql.GTIDSet) {
	for g, ids := range s.txTopics {
		dst := s.topics[g]
		if dst == nil {
			dst = make(map[int64]struct{}, len(ids))
			s.topics[g] = dst
		}
		for id := range ids {
			if _, ok := dst[id]; !ok {
				dst[id] = struct{}{}
				s.pending++
			}
		}
	}
	for r, keys := range s.txKeys {
		dst := s.keys[r]
		if dst == nil {
			dst = make(map[any]struct{}, len(keys))
			s.keys[r] = dst
		}
		for k := range keys {
			if _, ok := dst[k]; !ok {
				dst[k] = struct{}{}
				s.pending++
			}
		}
	}
	s.events += s.txEvents
	s.f.events.Add(s.txEvents)
	if !s.txOwn || s.txOther {
		s.moved = true
	}
	s.beginTx()
	if gset != nil {
		s.pos = gset
	}
	if ts > 0 {
		s.lastTS = time.Unix(int64(ts), 0)
		s.delay = max(0, time.Since(s.lastTS))
		s.f.delayNS.Store(int64(s.delay))
	}
}

// tableMap resolves the followed columns of a table map event.
func (s *stream) tableMap(ctx context.Context, e *replication.TableMapEvent) error {
	rules := s.f.byTable[string(e.Schema)+"."+string(e.Table)]
	if string(e.Schema) == s.f.metaSchema && string(e.Table) == queue.FollowTable {
		s.txOwn = true
	} else {
		s.txOther = true
	}
	if rules == nil {
		return nil
	}
	names := make([]string, len(e.ColumnName))
	for i, n := range e.ColumnName {
		names[i] = string(n)
	}
	if len(names) == 0 {
		// No binlog_row_metadata=FULL: the table's current columns, which
		// must match the row's count.
		var err error
		names, err = s.tableColumns(ctx, string(e.Schema), string(e.Table), int(e.ColumnCount))
		if err != nil {
			return err
		}
	}
	tm := &tableMap{rules: rules, index: make([]int, len(rules))}
	for i, r := range rules {
		tm.index[i] = slices.IndexFunc(names, func(n string) bool { return strings.EqualFold(n, r.column) })
		if tm.index[i] < 0 {
			return fmt.Errorf("%w: %s.%s has no column %s (columns: %s)", ErrUnmapped, r.schema, r.table, r.column, strings.Join(names, ", "))
		}
	}
	s.tables[e.TableID] = tm
	return nil
}

const columnsQuery = `SELECT /* nonqueue follow */ COLUMN_NAME FROM information_schema.COLUMNS
 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION`

func (s *stream) tableColumns(ctx context.Context, schema, table string, want int) ([]string, error) {
	key := schema + "." + table
	if c, ok := s.columns[key]; ok && len(c) == want {
		return c, nil
	}
	rows, err := s.f.d.SourceDB.QueryContext(ctx, columnsQuery, schema, table)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s on %s: %w", key, s.f.d.Source.Name, err)
	}
	defer rows.Close()
	var cols []string
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			return nil, fmt.Errorf("read columns of %s: %w", key, err)
		}
		cols = append(cols, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", key, err)
	}
	if len(cols) != want {
		return nil, fmt.Errorf("%w: %s has %d columns in the binlog and %d now; set binlog_row_metadata=FULL on %s",
			ErrUnmapped, key, want, len(cols), s.f.d.Source.Name)
	}
	s.columns[key] = cols
	return cols, nil
}

// rows adds the topic ids (or lookup keys) of a rows event to the
// transaction. An UPDATE's rows come in pairs, before and after: both
// count.
func (s *stream) rows(e *replication.RowsEvent) error {
	tm := s.tables[e.TableID]
	if tm == nil {
		return nil
	}
	s.txEvents += uint64(len(e.Rows))
	if e.Type() == replication.EnumRowsEventTypeUpdate {
		s.txEvents -= uint64(len(e.Rows) / 2)
	}
	for i, r := range tm.rules {
		col := tm.index[i]
		for _, row := range e.Rows {
			if col >= len(row) || row[col] == nil {
				continue // NULL, or left out of the image
			}
			if r.lookup != "" {
				k := row[col]
				if b, ok := k.([]byte); ok {
					k = string(b)
				}
				m := s.txKeys[r]
				if m == nil {
					m = map[any]struct{}{}
					s.txKeys[r] = m
				}
				m[k] = struct{}{}
				continue
			}
			id, ok := toID(row[col])
			if !ok || id <= 0 {
				continue // not a topic id
			}
			m := s.txTopics[r.group]
			if m == nil {
				m = map[int64]struct{}{}
				s.txTopics[r.group] = m
			}
			m[id] = struct{}{}
		}
	}
	return nil
}

// toID reads an integer column value as go-mysql decodes it.
func toID(v any) (int64, bool) {
	switch x := v.(type) {
	case int8:
		return int64(x), true
	case int16:
		return int64(x), true
	case int32:
		return int64(x), true
	case int64:
		return x, true
	case uint8:
		return int64(x), true
	case uint16:
		return int64(x), true
	case uint32:
		return int64(x), true
	case uint64:
		if x > 1<<63-1 {
			return 0, false
		}
		return int64(x), true
	case int:
		return int64(x), true
	}
	return 0, false
}

// flush commits what was read: the requests and the position, in one
// transaction on the primary. With nothing to request the position is
// saved at most every DefaultSaveInterval, and the counters refreshed every
// rateWindow; force saves now.
func (s *stream) flush(ctx context.Context, lock *queue.FollowLock, force bool) error {
	now := time.Now()
	pos := s.pos.String()
	switch {
	case s.pending > 0 || force:
	case s.moved && now.Sub(s.lastSave) >= DefaultSaveInterval:
	case now.Sub(s.lastSave) >= rateWindow && (s.evRate != 0 || s.reqRate != 0 || s.delay != s.savedDelay):
	default:
		return nil
	}
	if err := s.lookups(ctx); err != nil {
		return err
	}
	save := &queue.FollowSave{Pos: pos, Events: s.events, Delay: s.delay, LastCommit: s.lastTS}
	var requested uint64
	for _, g := range slices.SortedFunc(maps.Keys(s.topics), func(a, b groupKey) int {
		if a.scope != b.scope {
			return b.scope - a.scope
		}
		return int(a.after - b.after)
	}) {
		ids := s.topics[g]
		if len(ids) == 0 {
			continue
		}
		p := &queue.RequestParams{IDs: slices.Sorted(maps.Keys(ids)), Scope: g.scope, Delay: g.after}
		if g.hasPrio {
			p.Priority = &g.prio
		}
		save.Requests = append(save.Requests, p)
		requested += uint64(len(ids))
	}
	save.RequestedTopics = requested
	// Rates over the window ending now.
	if el := now.Sub(s.rateAt); el >= rateWindow {
		s.evRate = float64(s.totalEvents+s.events-s.rateEvents) / el.Seconds()
		s.reqRate = float64(s.totalReqs+requested-s.rateReqs) / el.Seconds()
		s.rateAt, s.rateEvents, s.rateReqs = now, s.totalEvents+s.events, s.totalReqs+requested
	}
	save.EventsPerS, save.RequestsPerS = s.evRate, s.reqRate
	res, err := s.f.d.Queue.FollowCommit(ctx, lock, save)
	if err != nil {
		return err
	}
	if len(res.Missing) > 0 {
		s.f.log.DebugContext(ctx, "follower: changed rows name topics the topic table lacks", "count", len(res.Missing), "first", res.Missing[0])
	}
	s.totalEvents += s.events
	s.totalReqs += requested
	s.f.requests.Add(requested)
	s.f.flushes.Add(1)
	s.f.setPos(pos)
	s.saved, s.lastSave, s.savedDelay, s.moved = pos, now, s.delay, false
	s.events, s.pending = 0, 0
	clear(s.topics)
	clear(s.keys)
	return nil
}

// lookups turns the keys of indirect rules into topic ids, running each
// rule's lookup on the source once per key.
func (s *stream) lookups(ctx context.Context) error {
	for r, keys := range s.keys {
		if len(keys) == 0 {
			continue
		}
		st, err := s.f.d.SourceDB.PrepareContext(ctx, r.lookup)
		if err != nil {
			return fmt.Errorf("follow %s: prepare lookup: %w", r.Table, err)
		}
		err = func() error {
			defer st.Close()
			for k := range keys {
				rows, err := st.QueryContext(ctx, k)
				if err != nil {
					return fmt.Errorf("follow %s: lookup of %v: %w", r.Table, k, err)
				}
				ids, err := scanIDs(rows)
				if err != nil {
					return fmt.Errorf("follow %s: lookup of %v: %w", r.Table, k, err)
				}
				m := s.topics[r.group]
				if m == nil {
					m = map[int64]struct{}{}
					s.topics[r.group] = m
				}
				for _, id := range ids {
					m[id] = struct{}{}
				}
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	return nil
}

func scanIDs(rows *sql.Rows) ([]int64, error) {
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return nil, err
	}
	var id sql.NullInt64
	dest := make([]any, len(cols))
	dest[0] = &id
	for i := 1; i < len(dest); i++ {
		dest[i] = new(sql.RawBytes)
	}
	var ids []int64
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("the first column must be a topic id: %w", err)
		}
		if id.Valid && id.Int64 > 0 {
			ids = append(ids, id.Int64)
		}
	}
	return ids, rows.Err()
}
