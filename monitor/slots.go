package monitor

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/nonqueue/nonqueue/internal/cleanup"
)

// PublishSlots caps the publishes running at once on the primary,
// fleet-wide and without a coordinator: slot i is the named lock
// nonqueue:publish:<schema>:<i> on the primary, i = 1..Max, and a publish
// runs only while its session holds one. The server hands each lock to one
// session at a time and frees it when the session ends, so a crashed
// worker never keeps a slot. A nil *PublishSlots, or Max 0, admits every
// publish.
type PublishSlots struct {
	// Schema names the fleet (the meta schema): fleets sharing a primary
	// under different meta schemas have their own slots.
	Schema string
	// Max is how many publishes may run at once; 0 is no cap.
	Max int
	// Wait bounds Acquire; default DefaultPublishWait.
	Wait time.Duration
}

// PublishSlot is a slot held by one session.
type PublishSlot struct {
	conn *sql.Conn
	name string
	// Since is when the lock was granted, on the primary's clock
	// (SYSDATE(6) read right after GET_LOCK, in the same statement).
	Since time.Time
}

// LockName is slot i's named lock, at most 64 characters: a longer one
// ends with a hash of the schema instead of the schema.
func (s *PublishSlots) LockName(i int) string {
	name := "nonqueue:publish:" + s.Schema + ":" + strconv.Itoa(i)
	if len(name) <= 64 {
		return name
	}
	sum := sha256.Sum256([]byte(s.Schema))
	return "nonqueue:publish:" + hex.EncodeToString(sum[:16]) + ":" + strconv.Itoa(i)
}

const (
	// The SYSDATE(6) after GET_LOCK is read once the lock is granted,
	// the one before RELEASE_LOCK while it is still held: the recorded
	// window lies inside the hold, on one clock, so two windows of one slot
	// never overlap in the history.
	tryPublishSlotSQL     = "SELECT /* nonqueue publish slot */ GET_LOCK(?, 0), SYSDATE(6)"
	releasePublishSlotSQL = "SELECT /* nonqueue publish slot */ SYSDATE(6), RELEASE_LOCK(?)"
	slotBackoffMin        = 20 * time.Millisecond
	slotBackoffMax        = time.Second
)

// Acquire takes a free slot on conn (the publish's pinned session), trying
// the slots in turn from a random one, and again after a back-off (20ms
// doubling to 1s, jittered) while all are taken, at most Wait. It returns
// nil, nil when there is no cap; ErrNoPublishSlot (wrapped) when Wait ran
// out; the query's error when the primary did not answer (conn may then
// hold a slot: the caller must close it, which frees it).
func (s *PublishSlots) Acquire(ctx context.Context, conn *sql.Conn) (*PublishSlot, error) {
	if s == nil || s.Max <= 0 {
		return nil, nil
	}
	wait := s.Wait
	if wait <= 0 {
		wait = DefaultPublishWait
	}
	deadline := time.Now().Add(wait)
	backoff := slotBackoffMin
	for tries := 1; ; tries++ {
		first := rand.IntN(s.Max)
		for k := range s.Max {
			name := s.LockName((first+k)%s.Max + 1)
			var got sql.NullInt64
			var at time.Time
			if err := conn.QueryRowContext(ctx, tryPublishSlotSQL, name).Scan(&got, &at); err != nil {
				return nil, fmt.Errorf("take publish slot %q on the primary: %w", name, err)
			}
			if got.Valid && got.Int64 == 1 {
				return &PublishSlot{conn: conn, name: name, Since: at}, nil
			}
		}
		left := time.Until(deadline)
		if left <= 0 {
			return nil, fmt.Errorf("%w: all %d taken through %d rounds over %v", ErrNoPublishSlot, s.Max, tries, wait)
		}
		pause := min(backoff/2+rand.N(backoff/2+1), left)
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("wait for a publish slot: %w", ctx.Err())
		case <-t.C:
		}
		backoff = min(2*backoff, slotBackoffMax)
	}
}

// Release frees the slot and returns when it was still held, on the
// primary's clock (read in the same statement, before the release). It
// runs on a cleanup context (a cancelled run still frees its slot). An
// error means the slot may still be held: the caller must close the
// session, which frees it.
func (sl *PublishSlot) Release(ctx context.Context) (time.Time, error) {
	cctx, cancel := cleanup.Context(ctx)
	defer cancel()
	var at time.Time
	var rel sql.NullInt64
	if err := sl.conn.QueryRowContext(cctx, releasePublishSlotSQL, sl.name).Scan(&at, &rel); err != nil {
		return time.Time{}, fmt.Errorf("release publish slot %q: %w", sl.name, err)
	}
	if rel.Int64 != 1 {
		return at, fmt.Errorf("release publish slot %q: not held by this session (%v)", sl.name, rel)
	}
	return at, nil
}
