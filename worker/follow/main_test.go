package follow_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/testdb"
	"github.com/nonqueue/nonqueue/queue"
	"github.com/nonqueue/nonqueue/worker/follow"
)

var env *testdb.Env

// childEnv carries a childSpec to a follower child process: the test
// binary run again, which follows until it is killed.
const childEnv = "NQ_FOLLOW_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(runChild(spec))
	}
	os.Exit(testdb.Main(m, "follow", 1, &env))
}

// childSpec is what a child follower needs.
type childSpec struct {
	Primary, Source string // DSNs
	SourceAddr      string
	Schema          string
	Config          follow.Config
	Rules           []follow.Rule
}

func runChild(specJSON string) int {
	var sp childSpec
	if err := json.Unmarshal([]byte(specJSON), &sp); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	pmc, err := mysql.ParseDSN(sp.Primary)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	q, err := queue.Open(ctx, pmc, queue.Config{Schema: sp.Schema, MetaSchema: sp.Schema})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	defer q.Close()
	smc, err := mysql.ParseDSN(sp.Source)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	conn, err := mysql.NewConnector(smc)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	src := sql.OpenDB(conn)
	defer src.Close()
	f, err := follow.New(sp.Config, sp.Rules, follow.Deps{Queue: q, SourceDB: src, Host: "child", PID: os.Getpid(), Logger: log,
		Source: follow.Source{Name: "replica1", Addr: sp.SourceAddr, User: smc.User, Password: smc.Passwd}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 2
	}
	if err := f.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	return 0
}

// topics is how many topics the tests' source rows point at.
const topics = 2000

// bundle is one test's database: a topic table 1..topics with nothing
// requested, and a source table post(id, topic, body) on the primary.
type bundle struct {
	db      string
	primary *sql.DB
	replica *sql.DB
	q       *queue.Queue
	ctx     context.Context
}

func setup(t testing.TB) *bundle {
	t.Helper()
	name := env.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	t.Cleanup(cancel)
	q, err := queue.Open(ctx, env.Primary(""), queue.Config{Schema: name, MetaSchema: name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	if err := q.ApplySchema(ctx); err != nil {
		t.Fatal(err)
	}
	p := testdb.Open(t, env.Primary(name))
	stmts := []string{
		"CREATE TABLE post (id INT NOT NULL AUTO_INCREMENT PRIMARY KEY, topic BIGINT NULL, body VARCHAR(100) NOT NULL DEFAULT '') ENGINE=InnoDB",
	}
	var vals []string
	for id := 1; id <= topics; id++ {
		vals = append(vals, fmt.Sprintf("(%d)", id))
	}
	stmts = append(stmts, "INSERT INTO topic (id) VALUES "+strings.Join(vals, ","))
	for _, s := range stmts {
		if _, err := p.ExecContext(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.WaitReplicas(ctx, p); err != nil {
		t.Fatal(err)
	}
	return &bundle{db: name, primary: p, replica: testdb.Open(t, env.Replica(0, name)), q: q, ctx: ctx}
}

// rules follows post.topic.
func postRules(after time.Duration) []follow.Rule {
	return []follow.Rule{{Table: "", TopicColumn: "topic", Scope: "partial", After: after}}
}

func (b *bundle) rules(after time.Duration) []follow.Rule {
	r := postRules(after)
	r[0].Table = b.db + ".post"
	return r
}

// source is replica 1's binlog.
func (b *bundle) source() follow.Source {
	r := env.SB.Replicas[0]
	mc := env.Replica(0, "")
	return follow.Source{Name: r.Name, Addr: fmt.Sprintf("%s:%d", r.Host, r.Port), User: mc.User, Password: mc.Passwd}
}

// start runs a follower in this process until the test ends or stop is
// called.
func (b *bundle) start(t testing.TB, cfg follow.Config, rules []follow.Rule) (*follow.Follower, func()) {
	t.Helper()
	src := testdb.Open(t, env.Replica(0, ""))
	f, err := follow.New(cfg, rules, follow.Deps{Queue: b.q, Source: b.source(), SourceDB: src, Host: "test", PID: os.Getpid(),
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(b.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := f.Run(ctx); err != nil {
			t.Errorf("follower: %v", err)
		}
	}()
	stop := sync.OnceFunc(func() { cancel(); <-done })
	t.Cleanup(stop)
	return f, stop
}

// testWriter logs through t while the test runs.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// child is a follower in a process of its own.
type child struct {
	cmd *exec.Cmd
	log string
}

// startChild runs a follower child process; it is killed when the test
// ends.
func (b *bundle) startChild(t *testing.T, cfg follow.Config, rules []follow.Rule) *child {
	t.Helper()
	r := env.SB.Replicas[0]
	sp := childSpec{Primary: env.Primary("").FormatDSN(), Source: env.Replica(0, "").FormatDSN(),
		SourceAddr: fmt.Sprintf("%s:%d", r.Host, r.Port), Schema: b.db, Config: cfg, Rules: rules}
	js, err := json.Marshal(sp)
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(t.TempDir(), "child.log")
	out, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(js))
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, log: logPath}
	t.Cleanup(func() {
		c.kill()
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("child %d log:\n%s", cmd.Process.Pid, b)
			}
		}
	})
	return c
}

// kill SIGKILLs the child and reaps it; safe to call twice.
func (c *child) kill() {
	if c.cmd.ProcessState != nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	_ = c.cmd.Wait()
}

// load writes to post on the primary until stop: inserts, updates that
// move a post to another topic, and deletes. It records every topic whose
// rows changed (an update's old and new one).
type load struct {
	mu      sync.Mutex
	changed map[int64]bool
	ops     int
	err     error
	stop    chan struct{}
	done    chan struct{}
}

func (b *bundle) startLoad(t *testing.T, pause time.Duration) *load {
	t.Helper()
	l := &load{changed: map[int64]bool{}, stop: make(chan struct{}), done: make(chan struct{})}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	go func() {
		defer close(l.done)
		posts := map[int64]int64{} // post id -> topic
		var ids []int64
		for {
			select {
			case <-l.stop:
				return
			case <-time.After(pause):
			}
			var err error
			var touched []int64
			noop := false
			switch op := rng.IntN(10); {
			case op < 5 || len(ids) < 20:
				topic := 1 + rng.Int64N(topics)
				var r sql.Result
				r, err = b.primary.ExecContext(b.ctx, "INSERT INTO post (topic, body) VALUES (?, 'x')", topic)
				if err == nil {
					id, _ := r.LastInsertId()
					posts[id] = topic
					ids = append(ids, id)
					touched = []int64{topic}
				}
			case op < 8:
				id := ids[rng.IntN(len(ids))]
				topic := 1 + rng.Int64N(topics)
				var r sql.Result
				r, err = b.primary.ExecContext(b.ctx, "UPDATE post SET topic = ?, body = 'y' WHERE id = ?", topic, id)
				if err == nil {
					touched = []int64{posts[id], topic}
					posts[id] = topic
					// The same topic on a row updated before changes
					// nothing: no row event, so not a write to count.
					if n, _ := r.RowsAffected(); n == 0 {
						noop = true
					}
				}
			default:
				i := rng.IntN(len(ids))
				id := ids[i]
				_, err = b.primary.ExecContext(b.ctx, "DELETE FROM post WHERE id = ?", id)
				if err == nil {
					touched = []int64{posts[id]}
					delete(posts, id)
					ids = slices.Delete(ids, i, i+1)
				}
			}
			l.mu.Lock()
			if err != nil {
				l.err = err
				l.mu.Unlock()
				return
			}
			if !noop {
				l.ops++
			}
			for _, tp := range touched {
				l.changed[tp] = true
			}
			l.mu.Unlock()
		}
	}()
	t.Cleanup(l.end)
	return l
}

// end stops the load and waits for it.
func (l *load) end() {
	select {
	case <-l.stop:
	default:
		close(l.stop)
	}
	<-l.done
}

func (l *load) opsDone() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ops
}

// requested returns the topics requested since setup.
func (b *bundle) requested(t *testing.T) map[int64]bool {
	t.Helper()
	rows, err := b.primary.QueryContext(b.ctx, "SELECT id FROM topic WHERE request_version > 0")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		out[id] = true
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// waitCaughtUp waits until the follower name's saved position has the
// primary's current position (domain 0).
func (b *bundle) waitCaughtUp(t testing.TB, name string, d time.Duration) {
	t.Helper()
	var want string
	if err := b.primary.QueryRowContext(b.ctx, "SELECT @@gtid_binlog_pos").Scan(&want); err != nil {
		t.Fatal(err)
	}
	ws, err := gomysql.ParseMariadbGTIDSet(want)
	if err != nil {
		t.Fatal(err)
	}
	w := ws.(*gomysql.MariadbGTIDSet).Sets[0]
	var last string
	testdb.WaitFor(t, d, "follower position reaches the primary's "+want, func() bool {
		if err := b.primary.QueryRowContext(b.ctx, "SELECT gtid_pos FROM follow WHERE name = ?", name).Scan(&last); err != nil {
			return false
		}
		gs, err := gomysql.ParseMariadbGTIDSet(last)
		if err != nil {
			return false
		}
		g := gs.(*gomysql.MariadbGTIDSet).Sets[0]
		return g != nil && g.SequenceNumber >= w.SequenceNumber
	})
}

// checkSets compares the changed topics with the requested ones: none
// missing, and (with exact) none requested that did not change.
func (b *bundle) checkSets(t *testing.T, l *load, exact bool) {
	t.Helper()
	got := b.requested(t)
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		t.Fatalf("load: %v", l.err)
	}
	var missing, extra []int64
	for id := range l.changed {
		if !got[id] {
			missing = append(missing, id)
		}
	}
	for id := range got {
		if !l.changed[id] {
			extra = append(extra, id)
		}
	}
	slices.Sort(missing)
	slices.Sort(extra)
	t.Logf("%d writes changed %d topics; %d requested, %d missing, %d extra", l.ops, len(l.changed), len(got), len(missing), len(extra))
	if len(missing) > 0 {
		t.Errorf("%d changed topics were not requested: %v", len(missing), missing[:min(len(missing), 20)])
	}
	if exact && len(extra) > 0 {
		t.Errorf("%d topics requested that no change touched (mis-mapped column?): %v", len(extra), extra[:min(len(extra), 20)])
	}
}
