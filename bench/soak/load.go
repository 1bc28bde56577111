package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nonqueue/nonqueue/queue"
)

// recorder appends the soak's events to JSON-lines files in the sandbox
// directory (requests.jsonl, reads.jsonl for torn reads, faults.jsonl), so
// a failed run can be read back event by event, and keeps them in memory
// for the checker.
type recorder struct {
	mu       sync.Mutex
	files    map[string]*os.File
	requests []Request
	torn     []Read
	reads    int
	seen     []Seen
	faults   []Fault
}

func newRecorder(dir string) (*recorder, error) {
	r := &recorder{files: map[string]*os.File{}}
	for _, n := range []string{"requests", "reads", "faults"} {
		f, err := os.Create(filepath.Join(dir, n+".jsonl"))
		if err != nil {
			return nil, err
		}
		r.files[n] = f
	}
	return r, nil
}

func (r *recorder) write(file string, v any) {
	b, _ := json.Marshal(v)
	_, _ = r.files[file].Write(append(b, '\n'))
}

func (r *recorder) request(q Request) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests = append(r.requests, q)
	r.write("requests", q)
}

func (r *recorder) read(rd Read, torn bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reads++
	if torn {
		r.torn = append(r.torn, rd)
		r.write("reads", rd)
	}
}

// changed records a reader's new tag for a topic.
func (r *recorder) changed(sn Seen) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, sn)
}

func (r *recorder) fault(f Fault) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.faults = append(r.faults, f)
	r.write("faults", f)
}

func (r *recorder) close() {
	for _, f := range r.files {
		f.Close()
	}
}

// stamp is a wall-clock time for the logs.
func stamp() string { return time.Now().UTC().Format("15:04:05.000000") }

// load is the application side of the soak.
type load struct{}

// startLoad starts the request stream and the readers; they stop when ctx
// ends, and wg waits for them.
func (s *soak) startLoad(ctx context.Context, wg *sync.WaitGroup) *load {
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(uint64(s.opt.Seed), 1))
		for ctx.Err() == nil {
			id := int64(1 + rng.IntN(s.opt.Topics))
			kind := "request"
			if rng.IntN(2) == 0 {
				kind = "update"
			}
			s.log.request(s.request(ctx, id, kind))
			_ = sleepCtx(ctx, s.opt.RequestEvery)
		}
	}()
	for i := range s.opt.Readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(s.opt.Seed), uint64(100+i)))
			last := map[int64]int64{}
			for ctx.Err() == nil {
				id := int64(1 + rng.IntN(s.opt.Topics))
				rd, err := s.readTopic(ctx, id)
				if err == nil {
					torn := Torn(rd.Tags)
					s.log.read(rd, torn)
					if tag, _, has := single(rd.Tags); has && !torn && tag != last[id] {
						last[id] = tag
						s.log.changed(Seen{Reader: i, Topic: id, Tag: tag, At: rd.At})
					}
				} else {
					_ = sleepCtx(ctx, 100*time.Millisecond)
				}
			}
		}()
	}
	return &load{}
}

// request sends one request in its own transaction and reads back the
// topic's request_version in it: the row is locked by the request, so the
// version read is exactly the one the request left. kind "request" is
// queue.Request (what `nonqueue request` runs), "update" the application's
// plain UPDATE, which the request trigger turns into a request. Any error
// leaves the outcome unknown (recorded in Err).
func (s *soak) request(ctx context.Context, id int64, kind string) Request {
	q := Request{Topic: id, Kind: kind, At: stamp()}
	fail := func(err error) Request {
		q.Err = err.Error()
		return q
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
	defer cancel()
	tx, err := s.q.DB().BeginTx(rctx, nil)
	if err != nil {
		return fail(fmt.Errorf("%s: %w", notSent, err)) // nothing reached the primary
	}
	defer tx.Rollback()
	switch kind {
	case "request":
		_, err = s.q.RequestTx(rctx, tx, &queue.RequestParams{IDs: []int64{id}, Scope: queue.ScopeFull})
	default:
		_, err = tx.ExecContext(rctx, "UPDATE app.TopicFilter SET influencerRecalcReqd = 2, influencerRecalcDate = NOW() WHERE topicFilterId = ?", id)
	}
	if err != nil {
		return fail(fmt.Errorf("%s: %w", kind, err))
	}
	if err := tx.QueryRowContext(rctx, "SELECT request_version FROM app.TopicFilter WHERE topicFilterId = ?", id).Scan(&q.Version); err != nil {
		return fail(fmt.Errorf("read the request version: %w", err))
	}
	if err := tx.Commit(); err != nil {
		return fail(fmt.Errorf("commit: %w", err))
	}
	return q
}

// requestParked is the load's last step: the application re-requests
// every topic the faults left parked, half with queue.Request, half with
// its plain UPDATE. Each must unpark its topic, so the drain runs them
// all; a request that leaves its topic parked is a lost request.
func (s *soak) requestParked(ctx context.Context) (int, error) {
	rows, err := s.primary.QueryContext(ctx, "SELECT topicFilterId FROM app.TopicFilter WHERE parked_at IS NOT NULL")
	if err != nil {
		return 0, fmt.Errorf("list the parked topics: %w", err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return 0, err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	for i, id := range ids {
		kind := "request"
		if i%2 == 0 {
			kind = "update"
		}
		s.log.request(s.request(ctx, id, kind))
	}
	return len(ids), nil
}

// notSent starts the error of a request that never reached the primary
// (no connection): its outcome is known, nothing happened.
const notSent = "not sent"

// readTopicSQL reads the tags of both result tables of a topic in one
// statement: the server opens both tables before it runs it, so the
// statement sees one moment of the two (a swap renames them together).
const readTopicSQL = `SELECT /* soak reader */ (SELECT MIN(tag) FROM influencer.Post_%[1]d), (SELECT MAX(tag) FROM influencer.Post_%[1]d),
 (SELECT MIN(tag) FROM influencer.Dynamics_%[1]d), (SELECT MAX(tag) FROM influencer.Dynamics_%[1]d)`

// readTopic is one application read of a topic's published result.
func (s *soak) readTopic(ctx context.Context, id int64) (Read, error) {
	rd := Read{Topic: id, At: stamp()}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var v [4]sql.NullInt64
	if err := s.primary.QueryRowContext(rctx, fmt.Sprintf(readTopicSQL, id)).Scan(&v[0], &v[1], &v[2], &v[3]); err != nil {
		return rd, err
	}
	for i := range v {
		if v[i].Valid {
			x := v[i].Int64
			rd.Tags[i] = &x
		}
	}
	return rd, nil
}
