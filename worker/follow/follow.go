package follow

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"

	"github.com/nonqueue/nonqueue/queue"
)

// Source is how to reach the server whose binary log is followed, over
// the replication protocol.
type Source struct {
	Name     string // shown in status and logs: "replica 127.0.0.1:3307"
	Addr     string // host:port, or a unix socket path
	User     string
	Password string
}

// Deps are what a Follower uses.
type Deps struct {
	// Queue issues the requests and keeps the position on the primary.
	Queue *queue.Queue
	// Source is read over the replication protocol.
	Source Source
	// SourceDB is an SQL pool on the same server: its GTID state, the
	// followed tables' columns, the lookups of indirect rules.
	SourceDB *sql.DB
	Host     string // this host, recorded as the active follower's
	PID      int
	Logger   *slog.Logger
}

// Stats are a follower's counters since it started, for metrics.
type Stats struct {
	Active    bool          // holds its name's lock and reads from a fixed position
	Events    uint64        // row changes of followed tables read
	Requests  uint64        // topic requests committed (a topic counts once per flush)
	Flushes   uint64        // commits of position and requests
	Errors    uint64        // active periods ended by an error
	Takeovers uint64        // times it took the lock
	Delay     time.Duration // behind its source: now minus the commit time of the last change read
	Pos       string        // the last position saved
}

// Follower reads row changes of the followed tables from its source's
// binary log and requests their topics, through the queue's request
// statements, in one transaction with its position on the primary. Several
// processes may run it under one name; the one holding the name's lock
// follows, the others wait as standbys.
type Follower struct {
	cfg   Config
	rules []*compiled
	// byTable: rules of each "schema.table".
	byTable map[string][]*compiled
	d       Deps
	log     *slog.Logger
	// metaSchema holds the follow table, whose writes (the followers' own
	// commits) do not count as progress worth a save.
	metaSchema string

	events, requests, flushes, errs, takeovers atomic.Uint64
	active                                     atomic.Bool
	delayNS                                    atomic.Int64
	mu                                         sync.Mutex
	pos                                        string
}

// New checks cfg and rules and returns a Follower.
func New(cfg Config, rules []Rule, d Deps) (*Follower, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cr, err := compileRules(rules)
	if err != nil {
		return nil, err
	}
	if d.Queue == nil || d.SourceDB == nil {
		return nil, errors.New("follow: Queue and SourceDB are required")
	}
	f := &Follower{cfg: cfg, rules: cr, byTable: map[string][]*compiled{}, d: d, log: d.Logger, metaSchema: d.Queue.Config().MetaSchema}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	f.log = f.log.With("follower", cfg.Name)
	for _, r := range cr {
		k := r.schema + "." + r.table
		f.byTable[k] = append(f.byTable[k], r)
	}
	return f, nil
}

// Config returns the configuration in force, defaults filled.
func (f *Follower) Config() Config { return f.cfg }

// Stats returns the counters; safe for concurrent use.
func (f *Follower) Stats() Stats {
	f.mu.Lock()
	pos := f.pos
	f.mu.Unlock()
	return Stats{
		Active: f.active.Load(), Events: f.events.Load(), Requests: f.requests.Load(), Flushes: f.flushes.Load(),
		Errors: f.errs.Load(), Takeovers: f.takeovers.Load(), Delay: time.Duration(f.delayNS.Load()), Pos: pos,
	}
}

// Run follows until ctx ends: it waits for the name's lock (standby), then
// follows from the saved position until ctx ends or an error (source gone
// longer than its retries, the primary unreachable, the lock lost), after
// which it lets the lock go and starts over. It returns nil when ctx ends.
func (f *Follower) Run(ctx context.Context) error {
	standbyLogged := false
	for ctx.Err() == nil {
		lock, err := f.d.Queue.TryFollowLock(ctx, f.cfg.Name)
		switch {
		case err != nil:
			f.log.WarnContext(ctx, "follower: cannot take the lock", "err", err)
		case lock == nil:
			if !standbyLogged {
				f.log.InfoContext(ctx, "follower: standby: another process follows under this name")
				standbyLogged = true
			}
		default:
			standbyLogged = false
			f.takeovers.Add(1)
			err := f.follow(ctx, lock)
			f.active.Store(false)
			lock.Release(ctx)
			if ctx.Err() != nil {
				break // stopping: the error is the cancellation
			}
			f.errs.Add(1)
			f.log.WarnContext(ctx, "follower: stopped following; will retry", "err", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(f.cfg.LockPoll):
		}
	}
	return nil
}

// follow is one active period under lock.
func (f *Follower) follow(ctx context.Context, lock *queue.FollowLock) error {
	saved, err := f.d.Queue.FollowStart(ctx, lock, f.d.Host, f.d.PID, f.d.Source.Name)
	if err != nil {
		return err
	}
	start, err := f.startPos(ctx, saved)
	if err != nil {
		return err
	}
	if saved == "" {
		// First run: from here on, saved at once, so a restart before the
		// first change does not skip what came in between.
		if _, err := f.d.Queue.FollowCommit(ctx, lock, &queue.FollowSave{Pos: start.String()}); err != nil {
			return err
		}
	}
	f.setPos(start.String())
	f.log.InfoContext(ctx, "follower: active", "source", f.d.Source.Name, "gtid_pos", start.String())
	var meta string
	if err := f.d.SourceDB.QueryRowContext(ctx, "SELECT /* nonqueue follow */ @@GLOBAL.binlog_row_metadata").Scan(&meta); err == nil && !strings.EqualFold(meta, "FULL") {
		f.log.WarnContext(ctx, "follower: the source's binlog_row_metadata is not FULL: columns are read from information_schema, and a DDL on a followed table while the follower is behind stops it (set binlog_row_metadata=FULL)",
			"binlog_row_metadata", meta)
	}

	syncer := replication.NewBinlogSyncer(f.syncerConfig())
	defer syncer.Close()
	streamer, err := syncer.StartSyncGTID(start)
	if err != nil {
		return fmt.Errorf("follow %s from %s: %w", f.d.Source.Name, start, err)
	}
	// Active from here: the position is fixed, every later change is read.
	f.active.Store(true)
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	evc := make(chan *replication.BinlogEvent, 4096)
	errc := make(chan error, 1)
	go func() {
		for {
			ev, err := streamer.GetEvent(rctx)
			if err != nil {
				errc <- err
				return
			}
			select {
			case evc <- ev:
			case <-rctx.Done():
				errc <- rctx.Err()
				return
			}
		}
	}()

	st := newStream(f, start)
	tick := time.NewTicker(f.cfg.FlushInterval)
	defer tick.Stop()
	lockCheck := time.NewTicker(5 * time.Second)
	defer lockCheck.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-errc:
			return fmt.Errorf("read binlog of %s: %w", f.d.Source.Name, err)
		case ev := <-evc:
			if err := st.handle(ctx, ev); err != nil {
				return err
			}
			// Under load changes are batched by the ticker; when the source
			// has nothing more to send right now, what was read is requested
			// at once (a flush at most every minFlushGap), so a lone change
			// waits for no tick.
			if n := st.pendingIDs(); n >= maxPending || n > 0 && len(evc) == 0 && st.sinceFlush() >= minFlushGap {
				if err := st.flush(ctx, lock, true); err != nil {
					return err
				}
			}
		case <-tick.C:
			if err := st.flush(ctx, lock, false); err != nil {
				return err
			}
		case <-lockCheck.C:
			if err := lock.Check(ctx); err != nil {
				return err
			}
		}
	}
}

// maxPending bounds the changes held between flushes.
const maxPending = 50_000

// minFlushGap is the shortest time between two flushes started because
// the source went quiet.
const minFlushGap = 20 * time.Millisecond

func (f *Follower) setPos(p string) {
	f.mu.Lock()
	f.pos = p
	f.mu.Unlock()
}

func (f *Follower) syncerConfig() replication.BinlogSyncerConfig {
	host, port := f.d.Source.Addr, uint16(0)
	if !strings.Contains(host, "/") {
		if i := strings.LastIndexByte(host, ':'); i >= 0 {
			var p int
			if _, err := fmt.Sscanf(host[i+1:], "%d", &p); err == nil {
				host, port = host[:i], uint16(p)
			}
		}
	}
	return replication.BinlogSyncerConfig{
		ServerID:             f.cfg.ServerID,
		Flavor:               gomysql.MariaDBFlavor,
		Host:                 host,
		Port:                 port,
		User:                 f.d.Source.User,
		Password:             f.d.Source.Password,
		Logger:               f.log.With("component", "binlog"),
		HeartbeatPeriod:      time.Second,
		ReadTimeout:          10 * time.Second,
		MaxReconnectAttempts: 30,
		DiscardGTIDSet:       false,
		RowsEventDecodeFunc:  f.decodeRows,
	}
}

// decodeRows decodes only the rows of followed tables: the others' are
// skipped after their header.
func (f *Follower) decodeRows(re *replication.RowsEvent, data []byte) error {
	pos, err := re.DecodeHeader(data)
	if err != nil {
		return err
	}
	if re.Table == nil || f.byTable[string(re.Table.Schema)+"."+string(re.Table.Table)] == nil {
		return nil
	}
	return re.DecodeData(pos, data)
}

// startPos is where to read from: the saved position, adjusted to the
// source's GTID domains, or the source's current position for a follower
// never run. A domain of the source that the saved position lacks (another
// replica's local writes: the saved position came from another host) starts
// at the source's current position; a saved domain the source lacks is
// dropped, so the source does not refuse the request.
func (f *Follower) startPos(ctx context.Context, saved string) (*gomysql.MariadbGTIDSet, error) {
	var cur string
	if err := f.d.SourceDB.QueryRowContext(ctx, "SELECT /* nonqueue follow */ @@GLOBAL.gtid_binlog_pos").Scan(&cur); err != nil {
		return nil, fmt.Errorf("read gtid_binlog_pos of %s: %w", f.d.Source.Name, err)
	}
	cs, err := gomysql.ParseMariadbGTIDSet(cur)
	if err != nil {
		return nil, fmt.Errorf("gtid_binlog_pos of %s %q: %w", f.d.Source.Name, cur, err)
	}
	curSet := cs.(*gomysql.MariadbGTIDSet)
	if saved == "" {
		return curSet, nil
	}
	ss, err := gomysql.ParseMariadbGTIDSet(saved)
	if err != nil {
		return nil, fmt.Errorf("saved position %q: %w", saved, err)
	}
	out := ss.(*gomysql.MariadbGTIDSet)
	for d := range out.Sets {
		if _, ok := curSet.Sets[d]; !ok {
			delete(out.Sets, d)
		}
	}
	for d, g := range curSet.Sets {
		if _, ok := out.Sets[d]; !ok {
			out.Sets[d] = g
		}
	}
	return out, nil
}
