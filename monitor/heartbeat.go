package monitor

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nonqueue/nonqueue/internal/ident"
	"github.com/nonqueue/nonqueue/internal/meta"
	"github.com/nonqueue/nonqueue/internal/startstop"
	"github.com/nonqueue/nonqueue/internal/transient"
)

// HeartbeatTable is the heartbeat table's name inside the meta schema;
// internal/meta owns it and its DDL (meta.DDL, applied by queue's schema).
const HeartbeatTable = meta.HeartbeatTable

// DefaultHeartbeatInterval is Heartbeat.Interval when left zero.
const DefaultHeartbeatInterval = 250 * time.Millisecond

// heartbeatWriteSQL upserts one writer's clock; %s is the quoted table.
// The value is bound twice instead of VALUES(ts_us), which MySQL 8
// deprecates.
const heartbeatWriteSQL = "INSERT /* nonqueue heartbeat */ INTO %s (id, ts_us) VALUES (?, ?) ON DUPLICATE KEY UPDATE ts_us = ?"

// Heartbeat writes this process's clock (microseconds since the epoch) into
// row WriterID of <Schema>.heartbeat on the primary every Interval, so a
// Gate in the same process can read it back on its replica and measure lag
// without clock skew. The write runs in an ordinary session (binary logging
// on): it must replicate.
//
// A failed write is logged and retried on the next tick; it is never fatal,
// because a heartbeat that stops advancing already closes the gate (the
// lag read back grows). Fields must not change after Start.
type Heartbeat struct {
	// Primary is a pool on the primary.
	Primary *sql.DB
	// Schema holds the heartbeat table (the meta schema).
	Schema string
	// WriterID is the row written: one per writing process; the Gate that
	// reads it back must use the same id.
	WriterID uint32
	// Interval between writes; default 250ms. It adds up to one Interval
	// to the lag a Gate measures, so keep it well under GateConfig.MaxLag.
	Interval time.Duration
	// Logger receives write failures and recoveries; nil discards.
	Logger *slog.Logger
	// SkipFunc, if set, is asked before each periodic write; true skips
	// it. An idle worker process skips while its gate measures lag from
	// position proofs instead (Gate.Prove, Gate.ProofFresh): nobody then
	// needs the row to move, and the write would be most of what an idle
	// process costs the primary. The first write (Start) always happens.
	SkipFunc func() bool

	loop    startstop.Loop
	failing bool // last write failed; touched only by the loop goroutine
}

func (h *Heartbeat) check() (stmt string, interval time.Duration, err error) {
	if h.Primary == nil {
		return "", 0, &ConfigError{Field: "heartbeat.primary", Err: errors.New("no primary pool")}
	}
	if err := ident.Validate(h.Schema); err != nil {
		return "", 0, &ConfigError{Field: "heartbeat.schema", Err: err}
	}
	if h.Interval < 0 {
		return "", 0, &ConfigError{Field: "heartbeat.interval", Err: fmt.Errorf("%v is negative", h.Interval)}
	}
	interval = h.Interval
	if interval == 0 {
		interval = DefaultHeartbeatInterval
	}
	return fmt.Sprintf(heartbeatWriteSQL, ident.Qualified(h.Schema, HeartbeatTable)), interval, nil
}

func (h *Heartbeat) logger() *slog.Logger {
	if h.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return h.Logger
}

// Start validates the fields, writes once synchronously (so a Gate started
// right after can see a row soon and a misconfiguration surfaces at once),
// then launches the loop and returns. A first write that fails for good
// (no table, no privilege) is returned and nothing is started; one that
// may cure itself (the primary restarting) is logged, and the loop writes
// again: until a row arrives the lag gate stays closed, which is what it
// should do without a proof. Starting a running Heartbeat is an error.
func (h *Heartbeat) Start(ctx context.Context) error {
	stmt, interval, err := h.check()
	if err != nil {
		return err
	}
	if err := h.write(ctx, stmt, interval); err != nil {
		if !transient.Is(err) {
			return err
		}
		h.logger().WarnContext(ctx, "first lag heartbeat write failed; the loop writes again", "err", err)
	}
	if err := h.loop.Start(ctx, func(ctx context.Context) { h.run(ctx, stmt, interval) }); err != nil {
		return fmt.Errorf("start heartbeat: %w", err)
	}
	return nil
}

func (h *Heartbeat) run(ctx context.Context, stmt string, interval time.Duration) {
	log := h.logger()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if h.SkipFunc != nil && h.SkipFunc() {
			continue
		}
		err := h.write(ctx, stmt, interval)
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil && !h.failing:
			h.failing = true
			log.WarnContext(ctx, "heartbeat write failing; measured lag will grow", "writer_id", h.WriterID, "err", err)
		case err != nil:
			log.DebugContext(ctx, "heartbeat write failed", "writer_id", h.WriterID, "err", err)
		case h.failing:
			h.failing = false
			log.InfoContext(ctx, "heartbeat write recovered", "writer_id", h.WriterID)
		}
	}
}

// write upserts the row once, bounded so a hung primary cannot pile up
// writes: a write slower than a few intervals is useless anyway.
func (h *Heartbeat) write(ctx context.Context, stmt string, interval time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, max(4*interval, time.Second))
	defer cancel()
	now := time.Now().UnixMicro()
	if _, err := h.Primary.ExecContext(wctx, stmt, h.WriterID, now, now); err != nil {
		return fmt.Errorf("write heartbeat %d to %s.%s on the primary: %w", h.WriterID, h.Schema, HeartbeatTable, err)
	}
	return nil
}

// RunOnce writes the heartbeat once, synchronously, and returns the error
// of that write. Tests use it to drive one pass.
func (h *Heartbeat) RunOnce(ctx context.Context) error {
	stmt, interval, err := h.check()
	if err != nil {
		return err
	}
	return h.write(ctx, stmt, interval)
}

// Stop ends the loop and waits for it, or for ctx. It is idempotent and
// safe before Start; after Stop the Heartbeat may be started again.
func (h *Heartbeat) Stop(ctx context.Context) error {
	if err := h.loop.Stop(ctx); err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	return nil
}
