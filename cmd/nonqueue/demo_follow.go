package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	gomysql "github.com/go-mysql-org/go-mysql/mysql"

	"github.com/nonqueue/nonqueue/internal/child"
)

// demoFollowTOML is what the demo adds to the first replica's
// configuration for its follower: new blog posts re-request their topic
// (partial, 2 s after the change, so a burst of posts makes one run).
const demoFollowTOML = `
[follower]
name = "demo"
flush_interval = "100ms"

[[follow]]
table = "app.BlogPost"
topic_column = "topicFilterId"
scope = "partial"
after = "2s"
`

// waitDemoFollower waits until the follower has saved its first
// position: changes from then on are followed.
func waitDemoFollower(ctx context.Context, db *sql.DB, p *child.Process) error {
	for range 300 {
		var pos string
		err := db.QueryRowContext(ctx, "SELECT gtid_pos FROM nonqueue.follow WHERE name = 'demo'").Scan(&pos)
		if err == nil && pos != "" {
			return nil
		}
		if p.Exited() {
			return fmt.Errorf("demo: the follower exited (see follow.log)")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("demo: the follower did not start within 30s (see follow.log)")
}

// startDemoFollower runs `nonqueue follow` on the first replica's binlog,
// with cfg (that replica's configuration) and demoFollowTOML.
func startDemoFollower(kids *child.Set, exe, dir, cfg string) (*child.Process, string, error) {
	body, err := os.ReadFile(cfg)
	if err != nil {
		return nil, "", err
	}
	path := filepath.Join(dir, "demo-follow.toml")
	if err := os.WriteFile(path, append(body, demoFollowTOML...), 0o600); err != nil {
		return nil, "", err
	}
	logPath := filepath.Join(dir, "follow.log")
	p, err := kids.Start("follower", logPath, false, exe, "follow", "--config", path)
	if err != nil {
		return nil, "", err
	}
	return p, path, nil
}

// demoPosts adds blog posts on the primary while the workers run: a
// batch a second to a few random topics, as an application would.
type demoPosts struct {
	db       *sql.DB
	rng      *rand.Rand
	next     int64 // next blogPostId
	topics   int
	batches  int // left to write
	posts    int
	touched  map[int64]bool
	since    string // the primary's clock before the first batch
	finalPos string // the primary's position after the last batch
}

func newDemoPosts(db *sql.DB, firstID int64, topics int) *demoPosts {
	return &demoPosts{db: db, rng: rand.New(rand.NewPCG(3, 4)), next: firstID, topics: topics, batches: 8, touched: map[int64]bool{}}
}

// step writes one batch, if any is left: 1 to 5 posts for each of a few
// topics.
func (d *demoPosts) step(ctx context.Context) error {
	if d.batches == 0 {
		return nil
	}
	if d.since == "" {
		if err := d.db.QueryRowContext(ctx, "SELECT NOW(6)").Scan(&d.since); err != nil {
			return fmt.Errorf("demo: read the primary's clock: %w", err)
		}
	}
	d.batches--
	var vals []string
	var args []any
	for range 1 + min(d.topics/40, 9) {
		topic := int64(1 + d.rng.IntN(d.topics))
		d.touched[topic] = true
		for range 1 + d.rng.IntN(5) {
			vals = append(vals, "(?, ?, ?, ?, ?, ?, NOW())")
			args = append(args, d.next, topic, "newcomer", 2, d.rng.IntN(5000), d.rng.IntN(800))
			d.next++
			d.posts++
		}
	}
	if _, err := d.db.ExecContext(ctx, "INSERT INTO app.BlogPost VALUES "+strings.Join(vals, ","), args...); err != nil {
		return fmt.Errorf("demo: add blog posts: %w", err)
	}
	if d.batches == 0 {
		if err := d.db.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos").Scan(&d.finalPos); err != nil {
			return fmt.Errorf("demo: read the primary's position: %w", err)
		}
	}
	return nil
}

// followed reports whether every batch is written and the follower has
// saved a position at or past the last one's.
func (d *demoPosts) followed(ctx context.Context) bool {
	if d.batches > 0 {
		return false
	}
	var pos string
	if err := d.db.QueryRowContext(ctx, "SELECT gtid_pos FROM nonqueue.follow WHERE name = 'demo'").Scan(&pos); err != nil {
		return false
	}
	return gtidReached(pos, d.finalPos)
}

// gtidReached: position got has reached want in want's domains.
func gtidReached(got, want string) bool {
	g, err := gomysql.ParseMariadbGTIDSet(got)
	if err != nil {
		return false
	}
	w, err := gomysql.ParseMariadbGTIDSet(want)
	if err != nil {
		return false
	}
	gs := g.(*gomysql.MariadbGTIDSet).Sets
	for d, wg := range w.(*gomysql.MariadbGTIDSet).Sets {
		if gg, ok := gs[d]; !ok || gg.SequenceNumber < wg.SequenceNumber {
			return false
		}
	}
	return true
}

// summary prints what the follower did.
func (d *demoPosts) summary(ctx context.Context, w io.Writer) error {
	var events, requests int64
	if err := d.db.QueryRowContext(ctx, "SELECT events, requests FROM nonqueue.follow WHERE name = 'demo'").Scan(&events, &requests); err != nil {
		return fmt.Errorf("demo summary: read the follower: %w", err)
	}
	var runs int
	ids := make([]string, 0, len(d.touched))
	for id := range d.touched {
		ids = append(ids, fmt.Sprint(id))
	}
	if len(ids) > 0 {
		if err := d.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM nonqueue.run WHERE outcome = 'done' AND finished_at > ? AND topic_id IN ("+strings.Join(ids, ",")+")",
			d.since).Scan(&runs); err != nil {
			return fmt.Errorf("demo summary: count the re-runs: %w", err)
		}
	}
	fmt.Fprintf(w, "    follower: %d new blog posts on %d topics while the workers ran; it read %d row changes and made %d requests; %d runs of those topics since\n",
		d.posts, len(d.touched), events, requests, runs)
	return nil
}
