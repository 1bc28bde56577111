package transfer

import "time"

// Retries of failed drops (Dropper): the tables of a DROP that failed wait
// in a dropRetries and are tried again after a pause that starts at
// dropRetryFirst and doubles up to dropRetryMax, for dropRetryFor after
// their first failure; then they are left to CleanupPrimary. At most
// maxDropPending names wait: more are left to CleanupPrimary at once.
const (
	dropRetryFirst = time.Second
	dropRetryMax   = time.Minute
	dropRetryFor   = 15 * time.Minute
	maxDropPending = 10000
)

// dropGroup is tables whose DROP failed together, tried again together.
type dropGroup struct {
	names []string
	since time.Time // the first failure
	tries int       // failed tries, the first one included
	next  time.Time // when it is due again
}

// dropRetries is the pending set of a Dropper: groups of tables due again
// at some time, in the order they are to be tried. It does no I/O and is
// not safe for concurrent use (the Dropper guards it).
//
// A round of retries (due, then done or failed) stops at its first
// failure: a backup lock, a restarting primary or a lost network fails
// every DROP alike, and one try per round is enough to learn it. The
// groups not tried count as failed (their pause grows) and come first in
// the next round, and the failed group goes last, split in halves when a
// table's lock made it fail: one held table then holds up fewer and fewer
// others, and never the other groups for longer than their own pause.
type dropRetries struct {
	groups []*dropGroup
	n      int // names pending, in groups or out in a round
	// Limits, the constants above but for tests.
	first, max, giveUpAfter time.Duration
	cap                     int
}

func newDropRetries() *dropRetries {
	return &dropRetries{first: dropRetryFirst, max: dropRetryMax, giveUpAfter: dropRetryFor, cap: maxDropPending}
}

// pause is the wait after a group's tries-th failed try.
func (r *dropRetries) pause(tries int) time.Duration {
	p := r.first
	for i := 1; i < tries && p < r.max; i++ {
		p *= 2
	}
	return min(p, r.max)
}

// add queues names whose first DROP failed at now, due after the first
// pause. It returns the names beyond the cap, which are not queued.
func (r *dropRetries) add(names []string, now time.Time) (over []string) {
	room := max(r.cap-r.n, 0)
	if len(names) > room {
		names, over = names[:room], names[room:]
	}
	if len(names) > 0 {
		r.groups = append(r.groups, &dropGroup{names: names, since: now, tries: 1, next: now.Add(r.pause(1))})
		r.n += len(names)
	}
	return over
}

// pending is the number of names pending.
func (r *dropRetries) pending() int { return r.n }

// next is when the earliest group is due; ok is false when none waits.
func (r *dropRetries) next() (at time.Time, ok bool) {
	for _, g := range r.groups {
		if !ok || g.next.Before(at) {
			at, ok = g.next, true
		}
	}
	return at, ok
}

// due takes out the groups due at now, in order: the caller tries them
// and reports each with done, or the first failure with failed.
func (r *dropRetries) due(now time.Time) []*dropGroup {
	var due, keep []*dropGroup
	for _, g := range r.groups {
		if g.next.After(now) {
			keep = append(keep, g)
		} else {
			due = append(due, g)
		}
	}
	r.groups = keep
	return due
}

// done forgets a group whose DROP succeeded.
func (r *dropRetries) done(g *dropGroup) { r.n -= len(g.names) }

// failed puts back a round's groups after its first failure at now: g
// failed (split in halves when split), rest were not tried. Groups past
// giveUpAfter since their first failure are not put back; their names are
// returned, left to CleanupPrimary.
func (r *dropRetries) failed(g *dropGroup, split bool, rest []*dropGroup, now time.Time) (gaveUp []string) {
	back := func(g *dropGroup) []*dropGroup {
		g.tries++
		if now.Sub(g.since) >= r.giveUpAfter {
			r.n -= len(g.names)
			gaveUp = append(gaveUp, g.names...)
			return nil
		}
		g.next = now.Add(r.pause(g.tries))
		return []*dropGroup{g}
	}
	var front []*dropGroup
	for _, u := range rest {
		front = append(front, back(u)...)
	}
	last := back(g)
	if split && len(last) == 1 && len(g.names) > 1 {
		h := len(g.names) / 2
		g2 := *g
		g.names, g2.names = g.names[:h:h], g.names[h:]
		last = append(last, &g2)
	}
	r.groups = append(append(front, r.groups...), last...)
	return gaveUp
}

// all takes out every group, due or not, and forgets them: the caller
// makes the last try (Dropper.Close). Call it with no round out.
func (r *dropRetries) all() []*dropGroup {
	g := r.groups
	r.groups, r.n = nil, 0
	return g
}
