package transfer

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"time"

	"github.com/nonqueue/nonqueue/internal/batch"
	"github.com/nonqueue/nonqueue/internal/cleanup"
)

// Dropper drops the tables publishes swapped out, on the primary, in the
// background and many per statement. After the swap an old table carries
// its claim's token in its name and nothing else reaches it, so the drop
// need not hold up the instance; and one DROP of a batch costs the server
// less than one per publish (part of a DROP's cost, the syncs of the
// server's DDL log, is per statement). Tables left when the process dies
// are CleanupPrimary's.
type Dropper struct {
	s  *Shipper
	db *sql.DB
	b  *batch.Batcher[string]
}

// Dropper limits: how long a table may wait for company and how many one
// DROP names.
const (
	dropDelay    = 200 * time.Millisecond
	maxDropBatch = 64
)

// NewDropper starts a dropper for the primary pool (the publishing pool, the
// one given to Ship). Hand it to Ship through ShipParams.Dropper, and Close
// it after the last Ship.
func (s *Shipper) NewDropper(primary *sql.DB) *Dropper {
	d := &Dropper{s: s, db: primary}
	d.b = batch.Start(maxDropBatch, dropDelay, d.drop)
	return d
}

// Close drops what is queued and stops; ctx bounds the wait. It is
// idempotent; tables handed over after Close are dropped at once.
func (d *Dropper) Close(ctx context.Context) error {
	if err := d.b.Close(ctx); err != nil {
		return fmt.Errorf("drop swapped-out tables: %w", err)
	}
	return nil
}

func (d *Dropper) drop(names []string) {
	ctx, cancel := context.WithTimeout(context.Background(), cleanup.Timeout)
	defer cancel()
	log := d.s.logger
	sess, err := openSession(ctx, d.db, "primary", d.s.cfg.NoBinlogPools)
	if err != nil {
		log.WarnContext(ctx, "drop swapped-out tables on the primary; CleanupPrimary will", "tables", names, "err", err)
		return
	}
	defer sess.close(ctx)
	if err := d.s.dropSwappedOut(ctx, sess.conn, names, log); err != nil {
		sess.bad = true
		return
	}
	log.LogAttrs(ctx, slog.LevelDebug, "dropped swapped-out tables", slog.Int("tables", len(names)))
}
