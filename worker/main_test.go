package worker_test

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nonqueue/nonqueue/internal/flavor"
	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/procs"
	"github.com/nonqueue/nonqueue/queue"
	"github.com/nonqueue/nonqueue/transfer"
	"github.com/nonqueue/nonqueue/worker"
)

var env *testdb.Env

func TestMain(m *testing.M) { os.Exit(testdb.Main(m, "worker", 2, &env)) }

type bundle struct {
	env     *testdb.Env // the topology: env, or a test's own (setupOn)
	db      string
	primary *sql.DB
	q       *queue.Queue
	ctx     context.Context
	logDir  string
	// transferTweak, if set, changes the pools' transfer settings.
	transferTweak func(*transfer.Config)
	// depsTweak, if set, changes each pool's Deps (throttle, slots).
	depsTweak func(*worker.Deps)
	// heartbeat, if set, is the lag heartbeat's interval (else 100ms).
	heartbeat time.Duration
}

func setup(t *testing.T, lease time.Duration) *bundle {
	t.Helper()
	return setupOn(t, env, lease)
}

// setupOn is setup on topology e.
func setupOn(t *testing.T, env *testdb.Env, lease time.Duration) *bundle {
	t.Helper()
	name := env.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	q, err := queue.Open(ctx, env.Primary(""), queue.Config{Schema: name, MetaSchema: name, Lease: lease})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	if err := q.ApplySchema(ctx); err != nil {
		t.Fatal(err)
	}
	p := testdb.Open(t, env.Primary(name))
	if err := testdb.InstallCalc(ctx, p); err != nil {
		t.Fatal(err)
	}
	if err := env.WaitReplicas(ctx, p); err != nil {
		t.Fatal(err)
	}
	return &bundle{env: env, db: name, primary: p, q: q, ctx: ctx, logDir: t.TempDir()}
}

// addTopics inserts n topics with rows of source data each and requests
// them.
func (b *bundle) addTopics(t *testing.T, from, n int) []int64 {
	t.Helper()
	var ids []int64
	for id := from; id < from+n; id++ {
		for k := 1; k <= 20; k++ {
			if _, err := b.primary.ExecContext(b.ctx, "INSERT INTO src VALUES (?, ?, ?)", id, k, id*1000+k); err != nil {
				t.Fatal(err)
			}
		}
		ids = append(ids, int64(id))
	}
	if _, err := b.q.Request(b.ctx, &queue.RequestParams{IDs: ids, Scope: queue.ScopeFull, Create: true}); err != nil {
		t.Fatal(err)
	}
	return ids
}

// pool is one in-process worker process on one replica.
type pool struct {
	soft, hard context.CancelFunc
	done       chan error
	runs       chan *monitor.Run
	shipper    *transfer.Shipper
	// ended maps each run (*monitor.Run) to when the worker reported it
	// over (time.Time).
	ended sync.Map
}

func (b *bundle) startPool(t *testing.T, replica, instances int, tweak func(*worker.Config, *monitor.GateConfig)) *pool {
	t.Helper()
	ctx := b.ctx
	env := b.env
	rdb := testdb.Open(t, env.Replica(replica, b.db))
	rdb.SetMaxOpenConns(6*instances + 4) // as cmd/nonqueue's, pipelined: two runs per instance
	// As cmd/nonqueue's pools: arguments interpolated, one round trip a
	// statement (TestIdleProcessCost counts them).
	pmc := env.Primary(b.db)
	pmc.InterpolateParams = true
	pdb := testdb.Open(t, pmc)
	f, err := flavor.Detect(ctx, rdb)
	if err != nil {
		t.Fatal(err)
	}
	var serverID uint32
	var datadir string
	if err := rdb.QueryRowContext(ctx, "SELECT @@server_id, @@datadir").Scan(&serverID, &datadir); err != nil {
		t.Fatal(err)
	}
	sb := env.SB
	tc := transfer.Config{
		SSH:            transfer.SSHConfig{Host: sb.SSH.Host, Port: sb.SSH.Port, User: sb.SSH.User, KeyFile: sb.SSH.KeyFile, KnownHosts: sb.SSH.KnownHosts},
		PrimaryDatadir: sb.Primary.Datadir, Schema: b.db, Tables: []string{"R_{id}", "S_{id}"},
	}.WithDefaults()
	if b.transferTweak != nil {
		b.transferTweak(&tc)
	}
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	sh, err := transfer.NewShipper(tc, logger)
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sh.Close() })
	wc := worker.Config{LogDir: filepath.Join(b.logDir, fmt.Sprint(replica)), IdleWait: 50 * time.Millisecond, BackoffBase: time.Hour}
	gc := monitor.GateConfig{MaxLag: 5 * time.Second, StoppedBackoff: 200 * time.Millisecond, SampleInterval: 100 * time.Millisecond}
	if tweak != nil {
		tweak(&wc, &gc)
	}
	wc = wc.WithDefaults(b.q.Config().Lease)
	if err := wc.Validate(b.q.Config().Lease); err != nil {
		t.Fatal(err)
	}
	p := &pool{done: make(chan error, 1), runs: make(chan *monitor.Run, 1000), shipper: sh}
	numbers := make([]int, instances)
	for i := range numbers {
		numbers[i] = i + 1
	}
	wp := &worker.Pool{
		Config: wc, ServerID: serverID, Numbers: numbers, Version: "test",
		Deps: &worker.Deps{
			Queue: b.q, History: &monitor.History{Primary: pdb, Schema: b.db},
			Gate: &monitor.Gate{Replica: rdb, Flavor: f, Schema: b.db, WriterID: serverID, Config: gc.WithDefaults(), Logger: logger},
			Pause: &monitor.PauseWatch{Pauses: &monitor.Pauses{Primary: pdb, Schema: b.db}, ServerID: serverID,
				Config: gc.WithDefaults(), Logger: logger},
			Flavor: f, Primary: pdb, Replica: rdb,
			Runner:         &procs.Runner{DB: rdb, Config: procs.Config{Procedure: b.db + ".calc", Marker: "SUMMARY", LogDir: wc.LogDir}.WithDefaults(), Logger: logger},
			Shipper:        sh,
			ReplicaDatadir: datadir, ReplicaName: fmt.Sprintf("replica%d", replica+1), Logger: logger,
			Observer: func(r *monitor.Run) {
				p.ended.Store(r, time.Now())
				select {
				case p.runs <- r:
				default:
				}
			},
		},
		Heartbeat: &monitor.Heartbeat{Primary: pdb, Schema: b.db, WriterID: serverID, Interval: cmp.Or(b.heartbeat, 100*time.Millisecond), Logger: logger},
	}
	if b.depsTweak != nil {
		b.depsTweak(wp.Deps)
	}
	soft, cancelSoft := context.WithCancel(ctx)
	hard, cancelHard := context.WithCancel(context.WithoutCancel(ctx))
	p.soft, p.hard = cancelSoft, cancelHard
	go func() { p.done <- wp.Run(soft, hard) }()
	t.Cleanup(func() { p.stop(t) })
	return p
}

// stop stops the pool: no new claims, runs finish; bounded.
func (p *pool) stop(t *testing.T) {
	p.soft()
	defer p.hard()
	select {
	case err, ok := <-p.done:
		if ok && err != nil {
			t.Errorf("pool: %v", err)
		}
		if ok {
			close(p.done)
		}
	case <-time.After(60 * time.Second):
		t.Error("pool did not stop in 60s")
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) { w.t.Log(string(b)); return len(b), nil }

func (b *bundle) count(t *testing.T, q string, args ...any) int {
	t.Helper()
	var n sql.NullInt64
	if err := b.primary.QueryRowContext(b.ctx, q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return int(n.Int64)
}

var bg = context.Background()

type contextT = context.Context

var queueRequestFull1 = queue.RequestParams{IDs: []int64{1}, Scope: queue.ScopeFull}

// rootDB opens replica i as root over its socket, for replication control.
func rootDB(t *testing.T, i int) *sql.DB {
	t.Helper()
	mc := env.SB.MySQLConfig(env.SB.Replicas[i])
	mc.Net, mc.Addr, mc.User, mc.Passwd = "unix", env.SB.Replicas[i].Socket, "root", ""
	return testdb.Open(t, mc)
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
