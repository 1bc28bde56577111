package dashboard

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nonqueue/nonqueue/internal/flavor"
	"github.com/nonqueue/nonqueue/monitor"
	"github.com/nonqueue/nonqueue/queue"
)

// Replica is a replica the dashboard reads live (replication threads and
// heartbeat lag).
type Replica struct {
	// Name labels it on the page (host:port).
	Name string
	DB   *sql.DB
	// Flavor is detected on first use when nil.
	Flavor flavor.Flavor
}

// Sources are what the dashboard and `nonqueue status` read: the topic
// table through Queue, nonqueue's meta tables through History (its
// Primary may be Queue.DB()), and optionally live replicas.
type Sources struct {
	Queue    *queue.Queue
	History  *monitor.History
	Replicas []Replica
	// Metrics, if set, is served at /metrics (Prometheus exposition of
	// the topic table: monitor/metrics.NewTopicCollector).
	Metrics http.Handler
}

// pauses is the pause table, beside the history's tables.
func (s *Sources) pauses() *monitor.Pauses {
	return &monitor.Pauses{Primary: s.History.Primary, Schema: s.History.Schema}
}

func (s *Sources) check() error {
	if s.Queue == nil || s.History == nil || s.History.Primary == nil {
		return errors.New("dashboard: Sources needs a Queue and a History with a Primary pool")
	}
	return nil
}

// InstanceView is an instance with what the dashboard derives for it.
type InstanceView struct {
	monitor.InstanceRecord
	// LastSeen is the youngest sign of life: the registry row, or the
	// running topic's claim heartbeat (an instance writes no registry
	// row during a long run).
	LastSeen time.Duration `json:"last_seen_ns"`
	// Stale: not exited, yet silent for longer than the lease; the
	// process is probably gone or stuck.
	Stale bool `json:"stale"`
}

// Summary is the overview: the topic table, the run history over the last
// hour and day, phase times, running topics and instances.
type Summary struct {
	Topics *queue.Overview     `json:"topics"`
	Hour   *monitor.Throughput `json:"hour"` // 1-minute buckets
	Day    *monitor.Throughput `json:"day"`  // 15-minute buckets
	Phases *monitor.PhaseStats `json:"phases"`
	// Running are the running topics, oldest lease first (at most 20).
	Running   []queue.TopicRow `json:"running"`
	Instances []InstanceView   `json:"instances"`
	// InstanceStates counts instances by state, exited ones included.
	InstanceStates map[string]int `json:"instance_states"`
	// Throttled counts the instances the throttle holds back, by reason
	// (the registry's reason column: threads_running, throttle_url); an
	// instance held for two reasons counts under each.
	Throttled map[string]int `json:"throttled,omitempty"`
	Lease     time.Duration  `json:"lease_ns"`
	Elapsed   time.Duration  `json:"elapsed_ns"`
	// Pauses are the operators' pauses in force, oldest first (none
	// before schema apply created the pause table).
	Pauses []monitor.Pause `json:"pauses"`
	// Followers are the binlog followers (nonqueue follow) by name.
	Followers []queue.FollowerRow `json:"followers"`
}

// Windows of the summary.
const (
	hourWindow, hourBucket = time.Hour, time.Minute
	dayWindow, dayBucket   = 24 * time.Hour, 15 * time.Minute
	runningShown           = 20
)

// Summary reads everything the overview shows, concurrently: the topic
// counts dominate on a large table, the rest are index range reads. Any
// failed read fails the whole summary, naming each failure.
func (s *Sources) Summary(ctx context.Context) (*Summary, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	start := time.Now()
	sum := &Summary{Lease: s.Queue.Config().Lease}
	var instances []monitor.InstanceRecord
	var wg sync.WaitGroup
	errs := make([]error, 8)
	run := func(i int, f func() error) {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = f() }()
	}
	run(0, func() (err error) { sum.Topics, err = s.Queue.Overview(ctx); return })
	run(1, func() (err error) { sum.Hour, err = s.History.Throughput(ctx, hourWindow, hourBucket); return })
	run(2, func() (err error) { sum.Day, err = s.History.Throughput(ctx, dayWindow, dayBucket); return })
	run(3, func() (err error) { sum.Phases, err = s.History.Phases(ctx, hourWindow, 0); return })
	var running []queue.TopicRow // all of them (to date instances' signs of life), the first few shown
	run(4, func() (err error) { running, err = s.Queue.Running(ctx, queue.MaxTopicLimit); return })
	run(5, func() (err error) { instances, err = s.History.Instances(ctx); return })
	run(6, func() (err error) {
		sum.Pauses, err = s.pauses().Active(ctx)
		if errors.Is(err, monitor.ErrNoPauseTable) {
			err = nil
		}
		return
	})
	run(7, func() (err error) { sum.Followers, err = s.Queue.Followers(ctx); return })
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("read overview: %w", err)
	}
	sum.Running = running[:min(len(running), runningShown)]
	sum.Instances = s.instanceViews(ctx, instances, running)
	sum.InstanceStates = map[string]int{}
	for _, in := range sum.Instances {
		sum.InstanceStates[in.State]++
		if in.State == monitor.StateThrottled && !in.Stale && in.Reason != "" {
			if sum.Throttled == nil {
				sum.Throttled = map[string]int{}
			}
			for _, r := range strings.Split(in.Reason, ",") {
				sum.Throttled[r]++
			}
		}
	}
	sum.Elapsed = time.Since(start)
	return sum, nil
}

// instanceViews derives TopicID, LastSeen and Stale. running are topics
// known to be running (complete unless capped at queue.MaxTopicLimit): the
// topic table, not the registry, says which topic an instance holds right
// now (a busy instance refreshes its registry row every few seconds, not
// per topic), and a claim's heartbeat counts as a sign of life.
func (s *Sources) instanceViews(ctx context.Context, recs []monitor.InstanceRecord, running []queue.TopicRow) []InstanceView {
	held := map[int64]queue.TopicRow{}
	for _, t := range running {
		held[t.Running] = t
	}
	complete := len(running) < queue.MaxTopicLimit
	lease := s.Queue.Config().Lease
	out := make([]InstanceView, 0, len(recs))
	for _, r := range recs {
		v := InstanceView{InstanceRecord: r, LastSeen: r.HeartbeatAge}
		t, ok := held[r.ID]
		if !ok && !complete && r.State == monitor.StateRunning && r.TopicID != 0 {
			if tr, err := s.Queue.Topic(ctx, r.TopicID); err == nil && tr.Running == r.ID {
				t, ok = *tr, true
			}
		}
		v.TopicID = 0
		if ok {
			v.TopicID = t.ID
			if !t.HeartbeatAt.IsZero() {
				v.LastSeen = min(v.LastSeen, t.HeartbeatAge)
			}
		}
		v.Stale = r.State != monitor.StateExited && v.LastSeen > lease
		out = append(out, v)
	}
	return out
}

// ReplicaGroup is one replica as seen through its instances, its lag
// heartbeat row on the primary, its newest run and, when the dashboard
// can reach it, a live read.
type ReplicaGroup struct {
	ServerID  uint32         `json:"server_id"`
	Instances []InstanceView `json:"instances"`
	// States counts its instances by state.
	States map[string]int `json:"states"`
	// Writer is the heartbeat row its worker process writes on the
	// primary (nil when none).
	Writer *monitor.WriterBeat `json:"writer,omitempty"`
	// LastRun is the newest run of one of its instances among the
	// recent runs (nil when none); its LagWait is the newest causal wait.
	LastRun *monitor.RunRecord `json:"last_run,omitempty"`
	// Live is the live read of a configured replica with this server id.
	Live *monitor.ReplicaView `json:"live,omitempty"`
	// SourceServerID is the server it replicates from: the live read's
	// when there is one, else what its instances last recorded
	// (History.SetSource); 0 when unknown.
	SourceServerID uint32 `json:"source_server_id,omitempty"`
	// Depth is its depth in Tree: 1 under the primary, 2 under a
	// first-tier replica; 0 when its source is unknown.
	Depth int `json:"depth"`
}

// ReplicaNode is one server of the replication tree the replicas page
// draws: the primary, a replica with instances, or a replica known only as
// the source of another (a middle tier that runs no worker).
type ReplicaNode struct {
	ServerID uint32 `json:"server_id"`
	// Primary marks the primary (the dashboard's own connection's
	// @@server_id).
	Primary bool `json:"primary,omitempty"`
	// Group is false for a server known only as another's source.
	Group    bool           `json:"group"`
	Children []*ReplicaNode `json:"children,omitempty"`
}

// ReplicasView is the replicas page.
type ReplicasView struct {
	Groups []ReplicaGroup `json:"groups"`
	// Unmatched are live replicas whose server id has no instance (or
	// that could not be read).
	Unmatched []*monitor.ReplicaView `json:"unmatched,omitempty"`
	Lease     time.Duration          `json:"lease_ns"`
	// Tree is the replication tree: the primary first, with the replicas
	// under their sources, then the replicas (or chains) whose source is
	// unknown. Groups are in the same depth-first order.
	Tree []*ReplicaNode `json:"tree"`
	// SourcesError is why the recorded sources could not be read (the
	// tree then has only the live reads' sources); empty when they were.
	SourcesError string `json:"sources_error,omitempty"`
}

// recentRunsScanned bounds how far back the replicas page looks for each
// replica's newest run.
const recentRunsScanned = 2000

// ReplicaGroups reads the instance registry, the heartbeat rows, the recent
// runs and every configured replica, and groups them by replica server
// id.
func (s *Sources) ReplicaGroups(ctx context.Context) (*ReplicasView, error) {
	if err := s.check(); err != nil {
		return nil, err
	}
	recs, err := s.History.Instances(ctx)
	if err != nil {
		return nil, err
	}
	running, err := s.Queue.Running(ctx, queue.MaxTopicLimit)
	if err != nil {
		return nil, err
	}
	writers, err := s.History.Writers(ctx)
	if err != nil {
		return nil, err
	}
	runs, err := s.History.RecentRuns(ctx, recentRunsScanned)
	if err != nil {
		return nil, err
	}
	live := make([]*monitor.ReplicaView, len(s.Replicas))
	var wg sync.WaitGroup
	for i, r := range s.Replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
			defer cancel()
			live[i] = monitor.ReadReplica(rctx, r.Name, r.Flavor, r.DB, s.History.Schema, writers)
		}()
	}
	wg.Wait()

	v := &ReplicasView{Lease: s.Queue.Config().Lease}
	byServer := map[uint32]*ReplicaGroup{}
	group := func(id uint32) *ReplicaGroup {
		g := byServer[id]
		if g == nil {
			g = &ReplicaGroup{ServerID: id, States: map[string]int{}}
			byServer[id] = g
		}
		return g
	}
	serverOf := map[int64]uint32{}
	for _, in := range s.instanceViews(ctx, recs, running) {
		g := group(in.ReplicaServerID)
		g.Instances = append(g.Instances, in)
		g.States[in.State]++
		serverOf[in.ID] = in.ReplicaServerID
	}
	for i := range writers {
		if g, ok := byServer[writers[i].WriterID]; ok {
			g.Writer = &writers[i]
		}
	}
	for i := range runs { // newest first
		sid, ok := serverOf[runs[i].InstanceID]
		if g := byServer[sid]; ok && g.LastRun == nil && runs[i].Outcome != monitor.OutcomeReaped {
			g.LastRun = &runs[i]
		}
	}
	for _, lv := range live {
		if g, ok := byServer[lv.ServerID]; ok && lv.Err == "" {
			g.Live = lv
		} else {
			v.Unmatched = append(v.Unmatched, lv)
		}
	}
	for _, g := range byServer {
		v.Groups = append(v.Groups, *g)
	}
	slices.SortFunc(v.Groups, func(a, b ReplicaGroup) int { return cmp.Compare(a.ServerID, b.ServerID) })
	var primaryID uint32
	if err := s.History.Primary.QueryRowContext(ctx, "SELECT /* nonqueue report */ @@server_id").Scan(&primaryID); err != nil {
		primaryID = 0 // the tree then starts at the first tier's replicas
	}
	recorded, err := s.History.Sources(ctx)
	if err != nil {
		// A schema from before the table (schema apply not run yet):
		// the tree shows what the live reads know.
		v.SourcesError = err.Error()
	}
	v.Tree, v.Groups = replicaTree(primaryID, v.Groups, recorded)
	return v, nil
}

// replicaTree sets each group's SourceServerID (a live read first, else
// what its instances recorded) and returns the replication tree and the
// groups in its depth-first order, with their Depth. A source that is
// neither the primary nor a group becomes a node of its own. The primary
// comes first among the roots; other roots and siblings go by server id.
func replicaTree(primaryID uint32, groups []ReplicaGroup, recorded map[uint32]uint32) ([]*ReplicaNode, []ReplicaGroup) {
	nodes := map[uint32]*ReplicaNode{}
	node := func(id uint32) *ReplicaNode {
		n := nodes[id]
		if n == nil {
			n = &ReplicaNode{ServerID: id, Primary: id != 0 && id == primaryID}
			nodes[id] = n
		}
		return n
	}
	if primaryID != 0 {
		node(primaryID)
	}
	byID := map[uint32]*ReplicaGroup{}
	for i := range groups {
		g := &groups[i]
		byID[g.ServerID] = g
		if g.Live != nil && g.Live.Status.SourceServerID != 0 {
			g.SourceServerID = g.Live.Status.SourceServerID
		} else {
			g.SourceServerID = recorded[g.ServerID]
		}
		node(g.ServerID).Group = true
	}
	parent := map[uint32]uint32{}
	for _, g := range groups {
		src := g.SourceServerID
		if src == 0 || src == g.ServerID {
			continue
		}
		// A chain of sources that leads back here (records from before a
		// replica was re-pointed) is cut where it would close.
		loop := false
		for a, n := src, 0; a != 0 && n <= len(groups); a, n = parent[a], n+1 {
			if a == g.ServerID {
				loop = true
				break
			}
		}
		if loop {
			continue
		}
		parent[g.ServerID] = src
		node(src).Children = append(node(src).Children, node(g.ServerID))
	}
	var roots []*ReplicaNode
	for _, n := range nodes {
		if _, has := parent[n.ServerID]; !has {
			roots = append(roots, n)
		}
	}
	slices.SortFunc(roots, func(a, b *ReplicaNode) int {
		if a.Primary != b.Primary {
			if a.Primary {
				return -1
			}
			return 1
		}
		return cmp.Compare(a.ServerID, b.ServerID)
	})
	out := make([]ReplicaGroup, 0, len(groups))
	var walk func(n *ReplicaNode, depth int)
	walk = func(n *ReplicaNode, depth int) {
		slices.SortFunc(n.Children, func(a, b *ReplicaNode) int { return cmp.Compare(a.ServerID, b.ServerID) })
		if g := byID[n.ServerID]; g != nil {
			g.Depth = depth
			out = append(out, *g)
		}
		for _, c := range n.Children {
			walk(c, depth+1)
		}
	}
	for _, r := range roots {
		walk(r, 0)
	}
	return roots, out
}

// FailureGroup is the failed runs that share one error, numbers aside.
type FailureGroup struct {
	// Key is the error with every run of digits replaced by "#".
	Key string `json:"key"`
	// Example is the newest error of the group, as recorded.
	Example  string            `json:"example"`
	Outcomes map[string]int    `json:"outcomes"`
	Count    int               `json:"count"`
	Topics   int               `json:"topics"` // distinct topics
	Newest   monitor.RunRecord `json:"newest"`
	// TopicIDs are up to 20 of its topics, newest first.
	TopicIDs []int64 `json:"topic_ids"`
}

var digits = regexp.MustCompile(`[0-9]+`)

// groupFailures groups runs (newest first) by their error with numbers
// masked, biggest group first.
func groupFailures(runs []monitor.RunRecord) []FailureGroup {
	idx := map[string]int{}
	var out []FailureGroup
	seen := map[string]map[int64]bool{}
	for _, r := range runs {
		key := digits.ReplaceAllString(r.Error, "#")
		if key == "" {
			key = "(no error recorded)"
		}
		i, ok := idx[key]
		if !ok {
			i = len(out)
			idx[key] = i
			out = append(out, FailureGroup{Key: key, Example: r.Error, Outcomes: map[string]int{}, Newest: r})
			seen[key] = map[int64]bool{}
		}
		g := &out[i]
		g.Count++
		g.Outcomes[r.Outcome]++
		if !seen[key][r.TopicID] {
			seen[key][r.TopicID] = true
			g.Topics++
			if len(g.TopicIDs) < 20 {
				g.TopicIDs = append(g.TopicIDs, r.TopicID)
			}
		}
	}
	slices.SortStableFunc(out, func(a, b FailureGroup) int { return b.Count - a.Count })
	return out
}
