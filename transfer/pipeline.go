package transfer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/crypto/ssh"
)

// Pipelined copy of small files: the round trips of a copy, not its bytes,
// are what a network between the replica and the primary makes a topic
// wait for. pkg/sftp sends one request per call and waits for its answer,
// so a small file cost five round trips in a row (open, write, read back,
// fsync, close), and the .frm files five more after the data files.
//
// OpenSSH's sftp-server handles the requests of one session strictly in
// order, so once a file's handle is known, everything else on it can be
// sent at once: WRITE, FSETSTAT, READ (the read-back), fsync@openssh.com
// and CLOSE, answered in that order. A batch of small files therefore
// takes two round trips on a session of its own: every OPEN, then every
// file's remaining requests. Nothing is skipped or reordered on a file:
// the read-back still reads what the server holds after the write, the
// fsync still precedes the close, and the data files are still complete
// and synced before any .frm is created (putAll runs the two phases in
// turn).
//
// The sessions (each an SFTP subsystem channel on the link's SSH
// connection) are pooled on the link, one batch at a time each; they end
// with the link.

// SFTP v3 (draft-ietf-secsh-filexfer-02) packet types and flags used here.
const (
	fxpInit     = 1
	fxpVersion  = 2
	fxpOpen     = 3
	fxpClose    = 4
	fxpRead     = 5
	fxpWrite    = 6
	fxpFsetstat = 10
	fxpStatus   = 101
	fxpHandle   = 102
	fxpData     = 103
	fxpExtended = 200

	fxfRead  = 0x01
	fxfWrite = 0x02
	fxfCreat = 0x08
	fxfTrunc = 0x10

	fxAttrPermissions = 0x04

	fxOK = 0
)

// maxPipes bounds the idle sessions kept on a link (the instances of one
// process share it).
const maxPipes = 8

// sftpPipe is one SFTP session used for pipelined batches.
type sftpPipe struct {
	sess *ssh.Session
	w    io.WriteCloser
	r    *bufio.Reader
	id   uint32
	out  []byte // the round being built
	in   []byte // the packet being read
}

// getPipe takes an idle session of the link or opens one (three round
// trips, once per session: channel, subsystem, version).
func (l *link) getPipe() (*sftpPipe, error) {
	select {
	case p := <-l.pipes:
		return p, nil
	default:
	}
	sess, err := l.ssh.NewSession()
	if err != nil {
		return nil, fmt.Errorf("open an ssh session: %w", err)
	}
	p := &sftpPipe{sess: sess}
	fail := func(err error) (*sftpPipe, error) {
		sess.Close()
		return nil, err
	}
	if p.w, err = sess.StdinPipe(); err != nil {
		return fail(err)
	}
	out, err := sess.StdoutPipe()
	if err != nil {
		return fail(err)
	}
	p.r = bufio.NewReaderSize(out, 64<<10)
	if err := sess.RequestSubsystem("sftp"); err != nil {
		return fail(fmt.Errorf("start an sftp session: %w", err))
	}
	p.out = binary.BigEndian.AppendUint32(p.out[:0], 5)
	p.out = append(p.out, fxpInit)
	p.out = binary.BigEndian.AppendUint32(p.out, 3)
	if _, err := p.w.Write(p.out); err != nil {
		return fail(fmt.Errorf("start an sftp session: %w", err))
	}
	p.out = p.out[:0]
	typ, _, err := p.read()
	if err != nil {
		return fail(fmt.Errorf("start an sftp session: %w", err))
	}
	if typ != fxpVersion {
		return fail(fmt.Errorf("start an sftp session: got packet type %d, want a version", typ))
	}
	return p, nil
}

// putPipe gives a healthy session back to the link's pool.
func (l *link) putPipe(p *sftpPipe) {
	select {
	case l.pipes <- p:
	default:
		p.sess.Close()
	}
}

// closePipes ends the pooled sessions (the link is closing).
func (l *link) closePipes() {
	for {
		select {
		case p := <-l.pipes:
			p.sess.Close()
		default:
			return
		}
	}
}

// read reads one packet into p.in and returns its type and body (after
// the type byte).
func (p *sftpPipe) read() (byte, []byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(p.r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n < 1 || n > 1<<20 {
		return 0, nil, fmt.Errorf("sftp packet of %d bytes", n)
	}
	if cap(p.in) < int(n) {
		p.in = make([]byte, n)
	}
	p.in = p.in[:n]
	if _, err := io.ReadFull(p.r, p.in); err != nil {
		return 0, nil, err
	}
	return p.in[0], p.in[1:], nil
}

// request appends one request (type, a fresh id, then body) to the round
// and returns the id.
func (p *sftpPipe) request(typ byte, body ...[]byte) uint32 {
	p.id++
	n := 1 + 4
	for _, b := range body {
		n += len(b)
	}
	p.out = binary.BigEndian.AppendUint32(p.out, uint32(n))
	p.out = append(p.out, typ)
	p.out = binary.BigEndian.AppendUint32(p.out, p.id)
	for _, b := range body {
		p.out = append(p.out, b...)
	}
	return p.id
}

func sftpString(b []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(b))), b...)
}

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

// reply is what came back for one request.
type reply struct {
	typ    byte
	status uint32
	msg    string
	handle []byte
}

// roundTrip sends the round built since the last one and reads one answer
// per request, handing each to got (DATA bodies are only valid during the
// call). It fails only when the session does: a failed request is a reply.
func (p *sftpPipe) roundTrip(first uint32, got func(id uint32, r reply, data []byte)) error {
	if _, err := p.w.Write(p.out); err != nil {
		return err
	}
	p.out = p.out[:0]
	for want := p.id - first + 1; want > 0; want-- {
		typ, body, err := p.read()
		if err != nil {
			return err
		}
		if len(body) < 4 {
			return fmt.Errorf("short sftp packet of type %d", typ)
		}
		id := binary.BigEndian.Uint32(body)
		body = body[4:]
		r := reply{typ: typ}
		var data []byte
		switch typ {
		case fxpStatus:
			if len(body) < 4 {
				return errors.New("short sftp status")
			}
			r.status = binary.BigEndian.Uint32(body)
			if len(body) >= 8 {
				if n := binary.BigEndian.Uint32(body[4:]); int(n) <= len(body)-8 {
					r.msg = string(body[8 : 8+n])
				}
			}
		case fxpHandle, fxpData:
			if len(body) < 4 || int(binary.BigEndian.Uint32(body)) > len(body)-4 {
				return fmt.Errorf("short sftp packet of type %d", typ)
			}
			s := body[4 : 4+binary.BigEndian.Uint32(body)]
			if typ == fxpHandle {
				r.handle = bytes.Clone(s)
			} else {
				data = s
			}
		default:
			return fmt.Errorf("unexpected sftp packet of type %d", typ)
		}
		if id < first || id > p.id {
			return fmt.Errorf("sftp reply to request %d, not one of %d..%d", id, first, p.id)
		}
		got(id, r, data)
	}
	return nil
}

// statusErr turns a failed request's reply into an error.
func statusErr(op string, r reply) error {
	if r.typ == fxpStatus && r.status == fxOK {
		return nil
	}
	if r.typ != fxpStatus {
		return fmt.Errorf("%s: unexpected sftp reply type %d", op, r.typ)
	}
	err := fmt.Errorf("%s: sftp status %d: %s", op, r.status, r.msg)
	if r.status == 2 { // SSH_FX_NO_SUCH_FILE
		err = fmt.Errorf("%w: %w", err, os.ErrNotExist)
	}
	return err
}

// pipelined says whether putParallel can send these files as one
// pipelined batch: the link supports it and every file is small.
func (p *putter) pipelined(files []*stagedFile) bool {
	if !p.l.pipeline || len(files) == 0 {
		return false
	}
	for _, f := range files {
		if f.size > smallFile {
			return false
		}
	}
	return true
}

// batchFile is one file of a pipelined batch.
type batchFile struct {
	f      *stagedFile
	buf    *[]byte
	sent   []byte
	handle []byte
	err    error // the first failure of this file
	read   int   // bytes read back so far
}

func (b *batchFile) fail(err error) {
	if b.err == nil {
		b.err = err
	}
}

// putBatch copies small files with two round trips in all (see above): it
// does what putFile does for each of them, request for request.
func putBatch(ctx context.Context, p *putter, files []*stagedFile) (err error) {
	bf := make([]*batchFile, len(files))
	for i, f := range files {
		b := &batchFile{f: f, buf: smallBufs.Get().(*[]byte)}
		defer smallBufs.Put(b.buf)
		bf[i] = b
		if err := readSmall(f, b); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	pipe, err := p.l.getPipe()
	if err != nil {
		return err
	}
	healthy := false
	defer func() {
		if healthy {
			p.l.putPipe(pipe)
		} else {
			pipe.sess.Close()
		}
	}()
	var total int64
	for _, b := range bf {
		total += int64(len(b.sent))
	}

	// Round 1: open every file.
	first := pipe.id + 1
	opened := map[uint32]*batchFile{}
	for _, b := range bf {
		flags := uint32(fxfWrite | fxfCreat | fxfTrunc)
		if b.f.readBack {
			flags |= fxfRead
		}
		opened[pipe.request(fxpOpen, sftpString([]byte(b.f.remote)), u32(flags), u32(0))] = b
	}
	err = p.l.step(fmt.Sprintf("create %d files", len(bf)), p.stall, func() error {
		return pipe.roundTrip(first, func(id uint32, r reply, _ []byte) {
			b := opened[id]
			if r.typ == fxpHandle {
				b.handle = r.handle
				return
			}
			b.fail(fmt.Errorf("create %s over sftp: %w", b.f.remote, statusErr("open", r)))
		})
	})
	if err != nil {
		return fmt.Errorf("create %d files over sftp: %w", len(bf), err)
	}

	// Round 2: everything else, per file in putFile's order. With the
	// tests' hook, the writes go first on their own, the hook runs, and
	// the rest follows (three round trips).
	type op struct {
		b    *batchFile
		name string
	}
	ops := map[uint32]op{}
	first = pipe.id + 1
	write := func() {
		for _, b := range bf {
			if b.handle == nil {
				continue
			}
			h := sftpString(b.handle)
			ops[pipe.request(fxpWrite, h, u64(0), sftpString(b.sent))] = op{b, "write"}
			if b.f.mode != 0 {
				ops[pipe.request(fxpFsetstat, h, u32(fxAttrPermissions), u32(uint32(b.f.mode.Perm())))] = op{b, fmt.Sprintf("chmod %o", b.f.mode)}
			}
		}
	}
	rest := func() {
		for _, b := range bf {
			if b.handle == nil {
				continue
			}
			h := sftpString(b.handle)
			if b.f.readBack {
				ops[pipe.request(fxpRead, h, u64(0), u32(uint32(len(b.sent))))] = op{b, "read back"}
			}
			if p.sync {
				ops[pipe.request(fxpExtended, sftpString([]byte("fsync@openssh.com")), h)] = op{b, "fsync on the primary's host"}
			}
			ops[pipe.request(fxpClose, h)] = op{b, "close"}
		}
	}
	got := func(id uint32, r reply, data []byte) {
		o := ops[id]
		b := o.b
		if o.name != "read back" {
			if err := statusErr(o.name, r); err != nil {
				b.fail(fmt.Errorf("copy %s to %s over sftp: %w", b.f.local, b.f.remote, err))
			}
			return
		}
		if r.typ != fxpData {
			b.fail(fmt.Errorf("copy %s to %s over sftp: %w", b.f.local, b.f.remote, statusErr("read back", r)))
			return
		}
		if b.err == nil && !bytes.Equal(data, b.sent[:min(len(data), len(b.sent))]) {
			b.fail(fmt.Errorf("copy %s to %s over sftp: %w: %s: the bytes read back from the primary's host at 0 differ from those sent",
				b.f.local, b.f.remote, ErrChecksumMismatch, b.f.remote))
		}
		b.read = len(data)
	}
	what := fmt.Sprintf("write, check and close %d files", len(bf))
	if p.written != nil {
		write()
		if err := p.l.step(what, p.bulk(total), func() error { return pipe.roundTrip(first, got) }); err != nil {
			return fmt.Errorf("%s over sftp: %w", what, err)
		}
		for _, b := range bf {
			if b.handle != nil && b.err == nil {
				p.written(b.f.remote)
			}
		}
		first = pipe.id + 1
		rest()
	} else {
		write()
		rest()
	}
	if err := p.l.step(what, p.bulk(total), func() error { return pipe.roundTrip(first, got) }); err != nil {
		return fmt.Errorf("%s over sftp: %w", what, err)
	}
	healthy = true
	for _, b := range bf {
		if b.err != nil {
			return b.err
		}
		if b.f.readBack && b.read < len(b.sent) {
			// A server that answers a read with less than asked (never
			// OpenSSH's for a small file): read the rest the usual way.
			if err := readBackRest(ctx, p, b); err != nil {
				return err
			}
		}
	}
	return ctx.Err()
}

// readSmall reads a small file whole into its buffer, failing if it grew
// (it cannot under the export lock).
func readSmall(f *stagedFile, b *batchFile) error {
	src, err := os.Open(f.local)
	if err != nil {
		return fmt.Errorf("open %s: %w", f.local, err)
	}
	defer src.Close()
	n, err := io.ReadFull(src, (*b.buf)[:f.size+1])
	if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		if err == nil {
			err = fmt.Errorf("the file has more than the %d bytes it had", f.size)
		}
		return fmt.Errorf("copy %s to %s: %w", f.local, f.remote, err)
	}
	if int64(n) != f.size {
		return fmt.Errorf("copy %s to %s: read %d bytes, the file has %d", f.local, f.remote, n, f.size)
	}
	b.sent = (*b.buf)[:n]
	return nil
}

// readBackRest reads back what a short read left, over pkg/sftp.
func readBackRest(ctx context.Context, p *putter, b *batchFile) error {
	var f interface {
		io.ReaderAt
		Name() string
		Close() error
	}
	err := p.l.step("open "+b.f.remote, p.stall, func() error {
		sf, err := p.l.sftp.Open(b.f.remote)
		if err == nil {
			f = sf
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("read back %s over sftp: %w", b.f.remote, err)
	}
	defer f.Close()
	rest := b.sent[b.read:]
	got := make([]byte, len(rest))
	var k int
	err = p.l.step("read back "+b.f.remote, p.stall, func() (err error) { k, err = f.ReadAt(got, int64(b.read)); return err })
	if k != len(rest) {
		return fmt.Errorf("read back %s at %d: %d of %d bytes: %w", b.f.remote, b.read, k, len(rest), err)
	}
	if !bytes.Equal(got, rest) {
		return fmt.Errorf("%w: %s: the bytes read back from the primary's host at %d differ from those sent", ErrChecksumMismatch, b.f.remote, b.read)
	}
	return ctx.Err()
}
