package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/pkg/sftp"
)

// Copy and read-back, the second phase of Ship: stream the table files to
// their staging names on the primary's host over SFTP, a few at a time,
// under stall watchdogs, reading small files back when verify = "bytes".

// fileParallelism is how many files are streamed at once over the shared
// SFTP session. Each stream keeps about 2 MiB of writes in flight (64 of
// 32 KiB, or 8 of 255 KiB with OpenSSH), so memory stays around 8 MiB
// whatever the table size.
const fileParallelism = 4

// stream copies the files, data files first and .frm files last, and
// retries once on a new connection when the connection dropped. A stall
// (ErrStalled: the link was abandoned) is not retried: the server stopped
// answering, and dialling it again now would only add the dial's timeout
// before the claim is released; the next run dials.
func (s *Shipper) stream(ctx context.Context, files []*stagedFile, log *slog.Logger) error {
	l, err := s.link(ctx)
	if err != nil {
		return err
	}
	if s.testHookStream != nil {
		s.testHookStream(0)
	}
	err = putAll(ctx, s.putter(l), files)
	if err != nil && ctx.Err() == nil && !errors.Is(err, ErrStalled) && connLost(l, err) {
		log.WarnContext(ctx, "ssh connection lost during the transfer; dialling again and retrying once", "err", err)
		l2, derr := s.redial(ctx, l)
		if derr != nil {
			return fmt.Errorf("%w (dialling again failed: %w)", err, derr)
		}
		if s.testHookStream != nil {
			s.testHookStream(1)
		}
		err = putAll(ctx, s.putter(l2), files)
	}
	return err
}

// putter is what the copy of a file needs from the Shipper: the link, the
// step bounds, whether to fsync, and the tests' hook.
type putter struct {
	l     *link
	stall time.Duration
	bulk  func(size int64) time.Duration
	sync  bool
	// written, if set, hears each file once its bytes are written and
	// before it is read back or synced (tests).
	written func(remote string)
}

func (s *Shipper) putter(l *link) *putter {
	return &putter{
		l: l, stall: s.cfg.SSH.StallTimeout, bulk: s.bulkTimeout,
		sync: !s.cfg.NoSync && l.fsync, written: s.testHookWritten,
	}
}

// putAll copies files, the data and index files first and the .frm
// files last; putFile syncs each one on the handle that wrote it.
func putAll(ctx context.Context, p *putter, files []*stagedFile) error {
	var data, frm []*stagedFile
	for _, f := range files {
		if f.frm {
			frm = append(frm, f)
		} else {
			data = append(data, f)
		}
	}
	if err := putParallel(ctx, p, data); err != nil {
		return err
	}
	return putParallel(ctx, p, frm)
}

// putParallel copies files, fileParallelism at a time; the first failure
// stops the others. Small files go as one pipelined batch (putBatch) where
// the link allows.
func putParallel(ctx context.Context, p *putter, files []*stagedFile) error {
	if p.pipelined(files) {
		return putBatch(ctx, p, files)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sem := make(chan struct{}, fileParallelism)
	errs := make([]error, len(files))
	var wg sync.WaitGroup
	for i, f := range files {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := putFile(ctx, p, f); err != nil {
				errs[i] = err
				cancel()
			}
		}()
	}
	wg.Wait()
	// Report the cause, not the cancellations it triggered.
	var first error
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
		if first == nil {
			first = err
		}
	}
	return first
}

// putFile streams one local file to its remote path (never buffering it
// whole) and checks that every byte was written and acknowledged and that
// Close succeeded: with the SSH transport's integrity that is the copy.
// When p.sync, the file is fsynced on the same handle once every byte is
// written (and read back) and before the close: opening it again to sync
// it cost two more requests per file through the link's one sftp-server,
// which handles requests one at a time. A readBack file is read back over
// the same handle and compared; the others are verified after the transfer
// (cksum or CHECKSUM TABLE). A chmod, when configured, runs concurrently
// with the writes. Every SFTP call runs under a watchdog (putter.stall
// without progress; a stream makes progress with every chunk) that
// abandons the link when it expires.
func putFile(ctx context.Context, p *putter, f *stagedFile) error {
	c := p.l.sftp
	src, err := os.Open(f.local)
	if err != nil {
		return fmt.Errorf("open %s: %w", f.local, err)
	}
	defer src.Close()
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if f.readBack {
		flags = os.O_RDWR | os.O_CREATE | os.O_TRUNC
	}
	var dst *sftp.File
	err = p.l.step("create "+f.remote, p.stall, func() (err error) { dst, err = c.OpenFile(f.remote, flags); return err })
	if err != nil {
		return fmt.Errorf("create %s over sftp: %w", f.remote, err)
	}
	chmod := make(chan error, 1)
	if f.mode != 0 {
		go func() {
			chmod <- p.l.step("chmod "+f.remote, p.stall, func() error { return c.Chmod(f.remote, f.mode) })
		}()
	} else {
		chmod <- nil
	}
	var n int64
	if f.size <= smallFile {
		n, err = putSmall(ctx, p, dst, src, f)
	} else {
		w := p.l.watch("write "+f.remote, p.stall)
		n, err = dst.ReadFrom(&ctxReader{err: ctx.Err, r: src, size: f.size, progress: w.kick})
		err = w.done(err)
		if err == nil && p.written != nil {
			p.written(f.remote)
		}
		if err == nil && f.readBack {
			err = compareStreams(ctx, p, dst, src, f.size)
		}
	}
	if err == nil && p.sync {
		if err = p.l.step("fsync "+f.remote, p.bulk(f.size), dst.Sync); err != nil {
			err = fmt.Errorf("fsync on the primary's host: %w", err)
		}
	}
	if cerr := p.l.step("close "+f.remote, p.stall, dst.Close); err == nil && cerr != nil {
		err = fmt.Errorf("close: %w", cerr)
	}
	if cerr := <-chmod; err == nil && cerr != nil {
		err = fmt.Errorf("chmod %o: %w", f.mode, cerr)
	}
	if err != nil {
		return fmt.Errorf("copy %s to %s over sftp: %w", f.local, f.remote, err)
	}
	if n != f.size {
		return fmt.Errorf("copy %s to %s: wrote %d bytes, the file has %d", f.local, f.remote, n, f.size)
	}
	return nil
}

// smallFile is the size up to which a file goes in one write from a pooled
// buffer (and, with VerifyBytes, is read back in one read): sftp's
// ReadFrom allocates a whole packet (255 KiB with OpenSSH) per file, which
// for the small tables of a typical topic made the garbage collector a
// tenth of the worker's CPU.
const smallFile = 64 << 10

var smallBufs = sync.Pool{New: func() any { b := make([]byte, smallFile+1); return &b }}

// putSmall copies a file of f.size bytes (at most smallFile) with one
// write and, for a readBack file, reads it back and compares.
func putSmall(ctx context.Context, p *putter, dst *sftp.File, src io.Reader, f *stagedFile) (int64, error) {
	bp := smallBufs.Get().(*[]byte)
	defer smallBufs.Put(bp)
	// One byte more than expected tells a file that grew from one that
	// did not (neither can happen under the export lock).
	n, err := io.ReadFull(src, (*bp)[:f.size+1])
	if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		if err == nil {
			return 0, fmt.Errorf("the file has more than the %d bytes it had", f.size)
		}
		return 0, err
	}
	sent := (*bp)[:n]
	var m int
	err = p.l.step("write "+f.remote, p.stall, func() (err error) { m, err = dst.Write(sent); return err })
	if err != nil {
		return int64(m), err
	}
	if p.written != nil {
		p.written(f.remote)
	}
	if !f.readBack {
		return int64(m), nil
	}
	return int64(m), compareStreams(ctx, p, dst, bytes.NewReader(sent), int64(len(sent)))
}

// compareStreams reads a file back through its SFTP handle, a chunk at a
// time (never the whole file in memory, each read under the stall bound),
// and compares it with want, the bytes sent: the local file read again for
// a big file, the sent buffer for a small one.
func compareStreams(ctx context.Context, p *putter, dst *sftp.File, want io.ReaderAt, size int64) error {
	a, b := smallBufs.Get().(*[]byte), smallBufs.Get().(*[]byte)
	defer smallBufs.Put(a)
	defer smallBufs.Put(b)
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := int(min(int64(smallFile), size-off))
		got, sent := (*a)[:n], (*b)[:n]
		var k int
		err := p.l.step("read back "+dst.Name(), p.stall, func() (err error) { k, err = dst.ReadAt(got, off); return err })
		if k != n {
			return fmt.Errorf("read back at %d: %d of %d bytes: %w", off, k, n, err)
		}
		if k, err := want.ReadAt(sent, off); k != n {
			return fmt.Errorf("read the sent bytes again at %d: %d of %d bytes: %w", off, k, n, err)
		}
		if !bytes.Equal(got, sent) {
			return fmt.Errorf("%w: %s: the bytes read back from the primary's host at %d differ from those sent", ErrChecksumMismatch, dst.Name(), off)
		}
		off += int64(n)
	}
	return nil
}

// ctxReader stops a copy when its context ends, and reports progress (each
// read means earlier writes were acknowledged: pkg/sftp keeps a bounded
// number in flight). Size lets sftp's ReadFrom pipeline the writes.
type ctxReader struct {
	err      func() error
	r        io.Reader
	size     int64
	progress func()
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.err(); err != nil {
		return 0, err
	}
	c.progress()
	return c.r.Read(p)
}

func (c *ctxReader) Size() int64 { return c.size }
