// Command nqsoak is nonqueue's chaos soak, run by `make soak` (built to
// bin/nqsoak). It starts its own sandbox (a primary, two GTID replicas and
// sshd on loopback), puts a simulated 1 ms network (internal/netsim) in
// front of the primary's MySQL port and sshd, runs one `nonqueue work`
// process of 4 instances per replica on a tagged procedure, and for
// SOAK_MINUTES (default 10) sends requests (queue.Request and the
// application's plain UPDATE), reads the result tables as the application
// would, and injects random overlapping faults. Then it stops the faults,
// lets the fleet drain, and checks the recorded history (check.go): lost
// requests, stale publishes, torn reads, leftovers, errant GTIDs and
// pt-table-checksum differences. The last line it prints is one JSON
// object with those counts; any non-zero count exits 1.
package main

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/nonqueue/nonqueue/internal/child"
	"github.com/nonqueue/nonqueue/internal/netsim"
	"github.com/nonqueue/nonqueue/internal/sandbox"
	"github.com/nonqueue/nonqueue/queue"
)

// options are the sizes of one soak.
type options struct {
	Duration    time.Duration
	Topics      int
	Replicas    int
	Instances   int
	RTT         time.Duration
	Lease       time.Duration
	MaxAttempts int
	// FaultEvery bounds the pause between two fault starts (uniform in
	// [FaultEvery/4, FaultEvery]).
	FaultEvery time.Duration
	// RequestEvery is the pause between two requests of the load
	// generator; Readers the number of application readers.
	RequestEvery time.Duration
	Readers      int
	// Drain bounds the wait for the fleet to finish after the faults stop.
	Drain time.Duration
	Seed  int64
	Keep  bool
}

// soak is one run: the sandbox, the network, the workers and what was
// recorded.
type soak struct {
	opt      options
	stdout   io.Writer
	nonqueue string
	dir      string
	start    time.Time

	sb           *sandbox.Sandbox
	nw           *netsim.Network
	route        *netsim.Route
	primary      *sql.DB // the application account on the primary
	primaryNoBin *sql.DB // the same with sql_log_bin=0
	replicas     []*sql.DB
	q            *queue.Queue
	configs      []string
	op           *operator
	// window: when the load and the faults started and stopped, by the
	// primary's clock.
	window [2]string

	kids     child.Set
	wmu      sync.Mutex
	workers  []*worker
	stopping bool     // the workers are being stopped: exits are expected
	exits    []string // workers that exited by themselves

	log *recorder
}

// worker is the `nonqueue work` process of one replica, restarted after
// a kill.
type worker struct {
	replica  int // 0-based
	proc     *child.Process
	killed   bool // SIGKILLed by a fault: its exit is expected
	restarts int
}

func (s *soak) say(format string, a ...any) {
	fmt.Fprintf(s.stdout, "==> "+format+"\n", a...)
}

func (s *soak) info(format string, a ...any) {
	fmt.Fprintf(s.stdout, "    "+format+"\n", a...)
}

// elapsed is the time since the load started, for the event lines.
func (s *soak) elapsed() float64 { return time.Since(s.start).Seconds() }

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nqsoak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	minutes := 10.0
	if v := os.Getenv("SOAK_MINUTES"); v != "" {
		m, err := strconv.ParseFloat(v, 64)
		if err != nil || m <= 0 {
			fmt.Fprintf(stderr, "nqsoak: SOAK_MINUTES=%q: want a positive number of minutes\n", v)
			return 2
		}
		minutes = m
	}
	var opt options
	fs.DurationVar(&opt.Duration, "duration", time.Duration(minutes*float64(time.Minute)), "how long faults and load run (SOAK_MINUTES sets the default)")
	fs.IntVar(&opt.Topics, "topics", 200, "topics in the table")
	fs.IntVar(&opt.Instances, "instances", 4, "instances per replica (one `nonqueue work` process per replica)")
	fs.DurationVar(&opt.RTT, "rtt", time.Millisecond, "round trip added to every worker connection to the primary and sshd")
	fs.DurationVar(&opt.Lease, "lease", 10*time.Second, "the workers' [topics] lease")
	fs.IntVar(&opt.MaxAttempts, "max-attempts", 2, "the workers' [topics] max_attempts (low, so faults park topics and requests must unpark them)")
	fs.DurationVar(&opt.FaultEvery, "fault-every", 4*time.Second, "longest pause between two fault starts")
	fs.DurationVar(&opt.RequestEvery, "request-every", 25*time.Millisecond, "pause between two requests")
	fs.IntVar(&opt.Readers, "readers", 2, "application readers of the result tables")
	fs.DurationVar(&opt.Drain, "drain", 3*time.Minute, "bound of the wait for the fleet to drain after the faults")
	fs.Int64Var(&opt.Seed, "seed", 0, "random seed (0: from the clock); printed, so a run can be repeated")
	fs.BoolVar(&opt.Keep, "keep", false, "leave the sandbox directory (logs, datadirs) even when the soak passes")
	bin := fs.String("nonqueue", "bin/nonqueue", "the nonqueue binary the workers run")
	dir := fs.String("dir", "", "sandbox directory (default: a new temporary one)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	opt.Replicas = 2
	if opt.Seed == 0 {
		opt.Seed = time.Now().UnixNano()
	}
	nq, err := filepath.Abs(*bin)
	if err == nil {
		_, err = os.Stat(nq)
	}
	if err != nil {
		fmt.Fprintf(stderr, "nqsoak: the nonqueue binary %s: %v (run `make build` first)\n", *bin, err)
		return 2
	}
	// The driver logs every broken idle connection to stderr; the soak
	// breaks them on purpose.
	_ = mysql.SetLogger(log.New(io.Discard, "", 0))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s := &soak{opt: opt, stdout: stdout, nonqueue: nq}
	res, err := s.runAll(ctx, *dir)
	if err != nil {
		fmt.Fprintf(stdout, "nqsoak: %v\n", err)
	}
	if res == nil {
		return 1
	}
	line, _ := json.Marshal(res)
	fmt.Fprintln(stdout, string(line))
	if err != nil || !res.ok() {
		return 1
	}
	return 0
}

// runAll starts the sandbox and the network, runs the soak and the checker,
// and stops everything it started, whatever happens.
func (s *soak) runAll(ctx context.Context, dir string) (res *Result, err error) {
	if err := sandbox.Check(); err != nil {
		return nil, err
	}
	made := false
	if dir == "" {
		if dir, err = os.MkdirTemp(cmp.Or(os.Getenv("NQSOAK_TMPDIR"), sandbox.TempBase()), "nqsoak-"); err != nil {
			return nil, err
		}
		made = true
	}
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, err
	}
	s.dir = dir
	if err := os.MkdirAll(filepath.Join(dir, "soak"), 0o700); err != nil {
		return nil, err
	}
	s.log, err = newRecorder(filepath.Join(dir, "soak"))
	if err != nil {
		return nil, err
	}
	defer s.log.close()
	s.say("nonqueue soak: %v of faults and load, seed %d, nonqueue %s", s.opt.Duration, s.opt.Seed, s.nonqueue)
	s.say("starting a primary, %d replicas and sshd in %s", s.opt.Replicas, dir)
	s.info("if this process is killed, stop them with: %s sandbox down --dir %s", s.nonqueue, dir)
	sb, err := sandbox.Up(ctx, sandbox.Options{Dir: dir, Replicas: s.opt.Replicas, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return nil, fmt.Errorf("sandbox up: %w", err)
	}
	s.sb = sb
	defer func() {
		if serr := s.kids.StopAll(30 * time.Second); serr != nil {
			s.info("stopping workers: %v", serr)
		}
		s.closeAll()
		tctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if derr := sb.Down(tctx); derr != nil {
			err = errors.Join(err, fmt.Errorf("sandbox down: %w", derr))
			s.say("the sandbox did NOT stop cleanly: %v; stop it with: %s sandbox down --dir %s", derr, s.nonqueue, dir)
			return
		}
		s.say("sandbox stopped")
		if made && err == nil && res != nil && res.ok() && !s.opt.Keep {
			os.RemoveAll(dir)
		} else {
			s.info("kept %s (worker logs in soak/, the fault, request and reader logs in soak/*.jsonl)", dir)
		}
	}()
	for _, srv := range sb.Servers() {
		s.info("%-9s 127.0.0.1:%d (server_id %d)", srv.Name, srv.Port, srv.ServerID)
	}
	if s.nw, err = netsim.New(s.opt.RTT); err != nil {
		return nil, err
	}
	if s.route, err = s.nw.RouteSandbox(sb); err != nil {
		return nil, err
	}
	s.info("network: workers reach the primary at 127.0.0.1:%d and sshd at 127.0.0.1:%d through toxiproxy, %v round trip",
		s.route.MySQL.Port(), s.route.SSH.Port(), s.opt.RTT)
	s.say("loading the tagged procedure, %d topics and their source rows", s.opt.Topics)
	if err := s.setup(ctx); err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	base, err := s.errantGTIDs(ctx)
	if err != nil {
		return nil, err
	}
	if len(base) > 0 {
		return nil, fmt.Errorf("errant GTIDs on the replicas before the soak started: %v", base)
	}
	s.say("starting %d worker processes of %d instances", s.opt.Replicas, s.opt.Instances)
	for k := range s.sb.Replicas {
		if err := s.startWorker(ctx, k); err != nil {
			return nil, err
		}
	}
	if err := s.waitIdle(ctx); err != nil {
		return nil, err
	}
	if s.op, err = s.startDashboard(ctx); err != nil {
		return nil, err
	}
	s.info("dashboard on %s, operator \"soak\" logged in (releases go through its forms)", s.op.base)

	s.say("soaking for %v: requests every %v, %d readers, a fault every %v-%v", s.opt.Duration, s.opt.RequestEvery,
		s.opt.Readers, s.opt.FaultEvery/4, s.opt.FaultEvery)
	if s.window[0], err = s.primaryNow(ctx); err != nil {
		return nil, err
	}
	s.start = time.Now()
	soakCtx, cancel := context.WithTimeout(ctx, s.opt.Duration)
	defer cancel()
	var wg sync.WaitGroup
	load := s.startLoad(soakCtx, &wg)
	faults := s.runFaults(soakCtx)
	wg.Wait()
	soakEnd := time.Now()
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	if s.window[1], err = s.primaryNow(ctx); err != nil {
		return nil, err
	}
	s.say("faults stopped (%d injected); every fault reverted; draining", faults.injected())
	if err := s.quiesce(ctx); err != nil {
		return nil, err
	}
	n, err := s.requestParked(ctx)
	if err != nil {
		return nil, err
	}
	s.info("the application re-requested the %d parked topics", n)
	drained, err := s.drain(ctx)
	if err != nil {
		return nil, err
	}
	s.say("stopping the workers")
	s.stopWorkers()

	s.say("checking the history")
	h, err := s.collect(ctx, load, faults)
	if err != nil {
		return nil, fmt.Errorf("collect the history: %w", err)
	}
	h.SoakSeconds = soakEnd.Sub(s.start).Seconds()
	h.Drained = drained
	res = Check(h)
	for _, d := range res.Details {
		s.info("%s", d)
	}
	s.wmu.Lock()
	s.info("%d worker exits not caused by a fault (restarted as systemd would)", len(s.exits))
	for _, e := range s.exits {
		s.info("  %s", e)
	}
	s.wmu.Unlock()
	unknown, unsent := h.indeterminate()
	s.info("%d requests (%d not sent: no connection; %d without a known outcome, not checked; %d on topics parked by later failures), %d reads (%d changes of a topic seen), %d procedure calls, runs: %s; %d faults",
		len(h.Requests), unsent, unknown, res.Parked, h.Reads, len(h.Seen), len(h.Calls), h.outcomes(), res.FaultsInjected)
	return res, nil
}

// closeAll closes the soak's connections and the network.
func (s *soak) closeAll() {
	if s.q != nil {
		s.q.Close()
	}
	for _, db := range append([]*sql.DB{s.primary, s.primaryNoBin}, s.replicas...) {
		if db != nil {
			db.Close()
		}
	}
	if s.nw != nil {
		s.nw.Close()
	}
}

// startWorker starts (or restarts) replica k's `nonqueue work` process.
func (s *soak) startWorker(ctx context.Context, k int) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	for len(s.workers) <= k {
		s.workers = append(s.workers, &worker{replica: len(s.workers)})
	}
	w := s.workers[k]
	if w.proc != nil && !w.proc.Exited() {
		return nil
	}
	name := fmt.Sprintf("nonqueue work (replica%d)", k+1)
	logPath := filepath.Join(s.dir, "soak", fmt.Sprintf("worker-replica%d-%d.log", k+1, w.restarts))
	p, err := s.kids.Start(name, logPath, false, s.nonqueue, "work", "--config", s.configs[k],
		"--instances", strconv.Itoa(s.opt.Instances))
	if err != nil {
		return err
	}
	w.proc, w.killed = p, false
	w.restarts++
	go s.supervise(ctx, w, p)
	return ctx.Err()
}

// supervise restarts a worker process that exits by itself, 5 s later,
// as the systemd unit does (Restart=on-failure, RestartSec=5), and records
// the exit with the end of its log.
func (s *soak) supervise(ctx context.Context, w *worker, p *child.Process) {
	<-p.Done()
	s.wmu.Lock()
	expected := w.proc != p || w.killed || s.stopping
	if !expected {
		last := strings.TrimSpace(child.LogTail(p.LogPath))
		if i := strings.LastIndexByte(last, '\n'); i >= 0 {
			last = strings.TrimSpace(last[i+1:])
		}
		e := fmt.Sprintf("%6.1fs  %s exited by itself (%v): %s", s.elapsed(), p.Name, p.Err(), last)
		s.exits = append(s.exits, e)
		s.info("%s; restarted in 5s", e)
	}
	s.wmu.Unlock()
	if expected {
		return
	}
	if sleepCtx(context.WithoutCancel(ctx), 5*time.Second) == nil && !s.isStopping() {
		if err := s.startWorker(context.WithoutCancel(ctx), w.replica); err != nil {
			s.info("restart %s: %v", p.Name, err)
		}
	}
}

func (s *soak) isStopping() bool {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.stopping
}

// waitIdle waits until every instance has registered as idle.
func (s *soak) waitIdle(ctx context.Context) error {
	want := s.opt.Replicas * s.opt.Instances
	deadline := time.Now().Add(time.Minute)
	for {
		var idle int
		err := s.primary.QueryRowContext(ctx, "SELECT COUNT(*) FROM nonqueue.instance WHERE state = 'idle'").Scan(&idle)
		if err == nil && idle >= want {
			return nil
		}
		for _, w := range s.workers {
			if w.proc.Exited() {
				return fmt.Errorf("%s exited at start: %v%s", w.proc.Name, w.proc.Err(), child.LogTail(w.proc.LogPath))
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d of %d instances idle after a minute (err %v)", idle, want, err)
		}
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// stopWorkers stops the workers with SIGTERM (their clean shutdown) and
// reports any that did not exit cleanly.
func (s *soak) stopWorkers() {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.stopping = true
	for _, w := range s.workers {
		if w.proc == nil {
			continue
		}
		if err := w.proc.Stop(30 * time.Second); err != nil {
			s.info("%v", err)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
