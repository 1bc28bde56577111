package transfer

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Shipper ships result tables from the local replica to the primary and
// publishes them there. It holds ONE SSH connection with ONE SFTP session,
// shared by every instance of the process: it is safe for concurrent use.
// The connection is dialled by Connect or lazily by the first call that
// needs it; when it breaks, the next call dials again, and a transfer that
// fails because the connection dropped is retried once on a new one.
// Nothing on the connection can hang: keepalives close it when the server
// stops answering (SSHConfig.KeepaliveInterval, KeepaliveTimeout), and
// every SFTP step and remote command has a deadline (StallTimeout without
// progress; MinThroughput for steps that cannot report any), past which
// the connection is closed and the transfer fails with ErrStalled.
type Shipper struct {
	cfg    Config
	logger *slog.Logger

	mu     sync.Mutex
	cur    *link // nil until dialled, or after a broken link was closed
	closed bool
	// The last failed dial and when it ended: callers that queued behind
	// it get its error instead of a dial each (see dialPause).
	dialErr   error
	dialErrAt time.Time

	// Tables whose DROP waits for a retry in one of the Shipper's
	// droppers (PendingDrops).
	pendingDrops atomic.Int64

	// With VerifyBytes: whether cksum runs on both hosts, once probed.
	cksumMu             sync.Mutex
	cksumKnown, cksumOK bool

	// testHookStream, set only by tests, runs before each streaming attempt
	// (0, then 1 for the retry).
	testHookStream func(attempt int)
	// testHookShipped, set only by tests, runs once the files are on the
	// primary's host, before they are verified.
	testHookShipped func()
	// testHookWritten, set only by tests, runs for each file once its
	// bytes are written and before they are verified.
	testHookWritten func(remote string)
}

// link is one SSH connection and its SFTP session.
type link struct {
	ssh  *ssh.Client
	sftp *sftp.Client
	conn net.Conn      // the socket under ssh: closing it unblocks every call on the link
	dead chan struct{} // closed when the SFTP session ends, for any reason
	// fsync: the server offers fsync@openssh.com.
	fsync bool
	// pipeline: the server is OpenSSH's (limits@openssh.com), which
	// answers a session's requests in order: small files go in pipelined
	// batches (putBatch) on the pooled sessions of pipes.
	pipeline bool
	pipes    chan *sftpPipe

	addr   string
	logger *slog.Logger
	gone   sync.Once
	whyMu  sync.Mutex
	why    error // set by abandon, before the socket closes
}

// broken says whether the link is gone: its SFTP session ended, or it was
// abandoned (its socket is closed; the session's end may not have been
// noticed yet).
func (l *link) broken() bool {
	select {
	case <-l.dead:
		return true
	default:
		return l.abandoned() != nil
	}
}

// linkCloseTimeout bounds a polite close (the SFTP session's close message
// is a write, which blocks on a connection whose peer stopped reading).
const linkCloseTimeout = 5 * time.Second

func (l *link) close() error {
	t := time.AfterFunc(linkCloseTimeout, func() { l.conn.Close() })
	defer t.Stop()
	l.closePipes()
	err := l.sftp.Close()
	if cerr := l.ssh.Close(); err == nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	return err
}

// abandon closes the link's socket because of cause (wrapping ErrStalled):
// pkg/sftp and x/crypto/ssh calls take no context, and a closed socket is
// what makes every call blocked on this link return. Only this link is
// closed; the next call on the Shipper dials a new one. Idempotent: the
// first cause is kept.
func (l *link) abandon(cause error) {
	l.gone.Do(func() {
		l.whyMu.Lock()
		l.why = cause
		l.whyMu.Unlock()
		l.logger.Warn("ssh connection abandoned; closing it (the next transfer dials again)", "addr", l.addr, "err", cause)
		l.conn.Close()
	})
}

// abandoned returns abandon's cause, or nil.
func (l *link) abandoned() error {
	l.whyMu.Lock()
	defer l.whyMu.Unlock()
	return l.why
}

// watchdog abandons its link unless it is stopped, or kicked by progress,
// within its bound.
type watchdog struct {
	l *link
	d time.Duration
	t *time.Timer

	mu      sync.Mutex
	stopped bool // a late kick must not re-arm a stopped watchdog
}

// watch arms a watchdog for one step on l: what names the step in the
// error, d is how long it may go without progress.
func (l *link) watch(what string, d time.Duration) *watchdog {
	w := &watchdog{l: l, d: d}
	w.t = time.AfterFunc(d, func() {
		l.abandon(fmt.Errorf("%w: %s made no progress for %v (bounds: ssh.stall_timeout, and ssh.min_throughput for fsync and cksum)", ErrStalled, what, d))
	})
	return w
}

// kick records progress: the step has d again.
func (w *watchdog) kick() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped {
		w.t.Reset(w.d)
	}
}

// done disarms the watchdog and returns err, with the cause in front when
// the link was abandoned meanwhile (by this watchdog or another step's, or
// by the keepalive), so the error says why the call failed.
func (w *watchdog) done(err error) error {
	w.mu.Lock()
	w.stopped = true
	w.t.Stop()
	w.mu.Unlock()
	if err == nil {
		return nil
	}
	if why := w.l.abandoned(); why != nil && !errors.Is(err, ErrStalled) {
		return fmt.Errorf("%w: %w", why, err)
	}
	return err
}

// step runs one blocking call on l under a watchdog of d.
func (l *link) step(what string, d time.Duration, f func() error) error {
	w := l.watch(what, d)
	return w.done(f())
}

// keepalive sends keepalive@openssh.com every interval until the link
// ends, and abandons the link when a reply (OpenSSH answers "failure", which
// is an answer) does not come within timeout. It is the link's only
// background goroutine besides the SFTP session's own.
func (l *link) keepalive(interval, timeout time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	reply := make(chan error, 1)
	for {
		select {
		case <-l.dead:
			return
		case <-t.C:
		}
		go func() {
			_, _, err := l.ssh.SendRequest("keepalive@openssh.com", true, nil)
			reply <- err
		}()
		wait := time.NewTimer(timeout)
		select {
		case err := <-reply:
			wait.Stop()
			if err != nil {
				return // the connection is gone; the SFTP session ends too
			}
		case <-wait.C:
			l.abandon(fmt.Errorf("%w: no reply to an ssh keepalive within %v (ssh.keepalive_timeout)", ErrStalled, timeout))
			<-reply //nolint:errcheck // the closed socket ends the request; abandon holds the cause
			return
		case <-l.dead:
			wait.Stop()
			return
		}
	}
}

// bulkTimeout is the deadline of a step that works through size bytes
// without reporting progress: the stall bound plus the bytes at the
// minimum throughput.
func (s *Shipper) bulkTimeout(size int64) time.Duration {
	c := s.cfg.SSH
	return c.StallTimeout + time.Duration(float64(size)/float64(int64(c.MinThroughput)<<20)*float64(time.Second))
}

// NewShipper validates cfg (after WithDefaults) and returns a Shipper that
// has not dialled yet. A nil logger discards logs.
func NewShipper(cfg Config, logger *slog.Logger) (*Shipper, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Shipper{cfg: cfg, logger: logger.With("component", "transfer")}, nil
}

// Config returns the configuration in effect (defaults applied).
func (s *Shipper) Config() Config { return s.cfg }

// Connect dials the primary's sshd now (instead of at the first Ship), so a
// wrong key, address or host key is reported at start-up. The host key is
// checked against Config.SSH.KnownHosts; an unknown or different key fails
// with an error wrapping ErrHostKey that says which host, which file and
// what to do. Connecting when already connected is a no-op.
func (s *Shipper) Connect(ctx context.Context) error {
	_, err := s.link(ctx)
	return err
}

// Close closes the connection. Calls after Close fail with ErrClosed; a
// transfer in flight fails. Close is idempotent.
func (s *Shipper) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.cur == nil {
		return nil
	}
	err := s.cur.close()
	s.cur = nil
	if err != nil {
		return fmt.Errorf("close ssh connection to %s: %w", s.cfg.SSH.Addr(), err)
	}
	return nil
}

// link returns the current connection, dialling when there is none or the
// current one broke. Dialling holds the mutex, so concurrent callers wait
// for one dial instead of each opening a connection.
func (s *Shipper) link(ctx context.Context) (*link, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	if s.cur != nil && !s.cur.broken() {
		return s.cur, nil
	}
	if s.cur != nil {
		s.logger.WarnContext(ctx, "ssh connection broke; dialling again", "addr", s.cfg.SSH.Addr())
		s.cur.close()
		s.cur = nil
	}
	if s.dialErr != nil && time.Since(s.dialErrAt) < dialPause {
		return nil, fmt.Errorf("%w (a dial failed %v ago; not dialling again yet)", s.dialErr, time.Since(s.dialErrAt).Round(time.Millisecond))
	}
	l, err := s.dial(ctx)
	if err != nil {
		if ctx.Err() == nil {
			s.dialErr, s.dialErrAt = err, time.Now()
		}
		return nil, err
	}
	s.dialErr = nil
	s.cur = l
	return l, nil
}

// dialPause is how long a failed dial answers for the next ones. Dials
// hold the Shipper's mutex, and a server that stopped answering keeps each
// for the whole DialTimeout: without the pause, the instances sharing the
// Shipper would wait for one another's dials in turn, the last one
// instances × DialTimeout, before they could release their claims.
const dialPause = 2 * time.Second

// redial replaces old by a new connection unless another caller already did.
func (s *Shipper) redial(ctx context.Context, old *link) (*link, error) {
	s.mu.Lock()
	if s.cur == old {
		old.close()
		s.cur = nil
	}
	s.mu.Unlock()
	return s.link(ctx)
}

// probeTimeout bounds the round trip connLost uses to tell a dead
// connection from a failed operation.
const probeTimeout = 5 * time.Second

// connLost says whether err means the connection l is gone (as opposed to
// a failure of the operation itself, such as a permission error). The first
// error after a drop can be a plain write error that does not say so, so
// unless it is clear, one cheap request asks the server.
func connLost(l *link, err error) bool {
	if errors.Is(err, sftp.ErrSSHFxConnectionLost) || l.broken() {
		return true
	}
	probe := make(chan error, 1)
	go func() {
		_, err := l.sftp.Getwd()
		probe <- err
	}()
	t := time.NewTimer(probeTimeout)
	defer t.Stop()
	select {
	case err := <-probe:
		return err != nil
	case <-l.dead:
		return true
	case <-t.C:
		return true // a hung connection is as good as lost
	}
}

// dial connects, verifies the host key, authenticates and starts SFTP.
func (s *Shipper) dial(ctx context.Context) (*link, error) {
	c := s.cfg.SSH
	addr := c.Addr()
	keyPEM, err := os.ReadFile(c.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("read ssh private key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		var pp *ssh.PassphraseMissingError
		if errors.As(err, &pp) {
			return nil, fmt.Errorf("ssh private key %s is protected by a passphrase; nonqueue needs a key without one (restrict it in authorized_keys instead): %w", c.KeyFile, err)
		}
		return nil, fmt.Errorf("parse ssh private key %s: %w", c.KeyFile, err)
	}
	check, err := knownhosts.New(c.KnownHosts)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot read known_hosts file %s (%v); create it with the host key of %s after checking its fingerprint, for example: ssh-keyscan -p %d %s >> %s",
			ErrHostKey, c.KnownHosts, err, addr, c.Port, c.Host, c.KnownHosts)
	}
	// The callback runs inside the handshake; remember what it saw so the
	// error can name the key.
	var (
		seenMu    sync.Mutex
		hostErr   error
		presented ssh.PublicKey
	)
	cfg := &ssh.ClientConfig{
		User: c.User,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: func(hostname string, remote net.Addr, key ssh.PublicKey) error {
			err := check(hostname, remote, key)
			seenMu.Lock()
			presented, hostErr = key, err
			seenMu.Unlock()
			return err
		},
		// Ask for the key types known_hosts has for this host: otherwise
		// the server may present another of its keys (say RSA when only
		// the ed25519 key is listed) and a legitimate host looks changed.
		HostKeyAlgorithms: knownAlgorithms(check, addr),
		Timeout:           c.DialTimeout,
	}
	dctx, cancel := context.WithTimeout(ctx, c.DialTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to sshd at %s: %w", addr, err)
	}
	// Neither the handshake nor the start of SFTP takes a context:
	// closing the socket aborts them.
	stop := context.AfterFunc(dctx, func() { nc.Close() })
	defer stop()
	sc, chans, reqs, err := ssh.NewClientConn(nc, addr, cfg)
	if err != nil {
		nc.Close()
		seenMu.Lock()
		defer seenMu.Unlock()
		if hostErr != nil {
			return nil, hostKeyError(c, addr, presented, hostErr)
		}
		if dctx.Err() != nil {
			return nil, fmt.Errorf("ssh handshake with %s: %w (%v)", addr, dctx.Err(), err)
		}
		return nil, fmt.Errorf("ssh login to %s as %s with key %s: %w", addr, c.User, c.KeyFile, err)
	}
	client := ssh.NewClient(sc, chans, reqs)
	sc2, err := sftp.NewClient(client, sftp.UseConcurrentWrites(true))
	if err != nil {
		client.Close()
		if dctx.Err() != nil {
			return nil, fmt.Errorf("start sftp on %s: %w (%v)", addr, dctx.Err(), err)
		}
		return nil, fmt.Errorf("start sftp on %s (the server needs an sftp subsystem): %w", addr, err)
	}
	_, openSSH := sc2.HasExtension("limits@openssh.com")
	if openSSH {
		// OpenSSH 8.6+ accepts writes up to its 256 KiB message limit less
		// 1 KiB (max-write-length of limits@openssh.com); the protocol's
		// portable 32 KiB would cost 8 times the requests on a big table.
		// The extension names the server; ask for the bigger writes on a
		// new session.
		// As many bytes in flight per file as 64 portable writes.
		big, berr := sftp.NewClient(client, sftp.UseConcurrentWrites(true), sftp.MaxPacketUnchecked(openSSHMaxWrite),
			sftp.MaxConcurrentRequestsPerFile(8))
		if berr == nil {
			sc2.Close()
			sc2 = big
		}
	}
	if !stop() {
		client.Close()
		return nil, fmt.Errorf("start sftp on %s: %w", addr, dctx.Err())
	}
	l := &link{ssh: client, sftp: sc2, conn: nc, dead: make(chan struct{}), addr: addr, logger: s.logger,
		pipeline: openSSH, pipes: make(chan *sftpPipe, maxPipes)}
	if v, ok := sc2.HasExtension("fsync@openssh.com"); ok && v == "1" {
		l.fsync = true
	} else if !s.cfg.NoSync {
		s.logger.WarnContext(ctx, "the sftp server does not offer fsync@openssh.com: shipped files go live without an fsync", "addr", addr)
	}
	go func() {
		sc2.Wait()
		close(l.dead)
	}()
	if c.KeepaliveInterval > 0 {
		go l.keepalive(c.KeepaliveInterval, c.KeepaliveTimeout)
	}
	s.logger.InfoContext(ctx, "ssh connected", "addr", addr, "user", c.User)
	return l, nil
}

// openSSHMaxWrite is OpenSSH sftp-server's write limit (SFTP_MAX_MSG_LENGTH
// 256 KiB less 1 KiB, as its limits@openssh.com reply says).
const openSSHMaxWrite = 255 * 1024

// knownAlgorithms returns the host key algorithms of the keys known_hosts
// lists for addr, or nil (library default) when it lists none. It asks the
// callback about a throwaway key: the mismatch error lists the known keys.
func knownAlgorithms(check ssh.HostKeyCallback, addr string) []string {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil
	}
	probe, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil
	}
	p, _ := strconv.Atoi(port)
	remote := &net.TCPAddr{IP: net.ParseIP(host), Port: p}
	if remote.IP == nil {
		remote.IP = net.IPv4zero
	}
	var ke *knownhosts.KeyError
	if err := check(addr, remote, probe); !errors.As(err, &ke) {
		return nil
	}
	var out []string
	seen := map[string]bool{}
	add := func(a string) {
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	for _, k := range ke.Want {
		t := k.Key.Type()
		if t == ssh.KeyAlgoRSA {
			add(ssh.KeyAlgoRSASHA512)
			add(ssh.KeyAlgoRSASHA256)
		}
		add(t)
	}
	return out
}

// hostKeyError turns a known_hosts verdict into a plain instruction.
func hostKeyError(c SSHConfig, addr string, key ssh.PublicKey, err error) error {
	fp := "(no key)"
	typ := "host"
	if key != nil {
		fp, typ = ssh.FingerprintSHA256(key), key.Type()
	}
	var ke *knownhosts.KeyError
	var re *knownhosts.RevokedError
	switch {
	case errors.As(err, &re):
		return fmt.Errorf("%w: %s presented %s key %s, which %s marks as @revoked (line %d); do not connect until the host's administrator confirms a new key",
			ErrHostKey, addr, typ, fp, re.Revoked.Filename, re.Revoked.Line)
	case errors.As(err, &ke) && len(ke.Want) == 0:
		return fmt.Errorf("%w: %s presented %s key %s, but %s has no entry for %s; check the fingerprint with the host's administrator, then add it, for example: ssh-keyscan -p %d %s >> %s",
			ErrHostKey, addr, typ, fp, c.KnownHosts, knownhosts.Normalize(addr), c.Port, c.Host, c.KnownHosts)
	case errors.As(err, &ke):
		lines := make([]string, len(ke.Want))
		for i, w := range ke.Want {
			lines[i] = fmt.Sprintf("%s:%d", w.Filename, w.Line)
		}
		return fmt.Errorf("%w: %s presented %s key %s, which does not match the key recorded for it in %s; the host was reinstalled or the connection is being intercepted: verify the new fingerprint with the host's administrator before replacing that line",
			ErrHostKey, addr, typ, fp, strings.Join(lines, ", "))
	default:
		return fmt.Errorf("%w: verify host key of %s against %s: %w", ErrHostKey, addr, c.KnownHosts, err)
	}
}

// CheckDatadir checks over SFTP that PrimaryDatadir/Schema is a directory
// the SSH user can create and remove files in, by writing and removing a
// probe file (named like a staging table, so CleanupPrimary would remove it
// if this were interrupted). It is a preflight for operators.
func (s *Shipper) CheckDatadir(ctx context.Context) error {
	l, err := s.link(ctx)
	if err != nil {
		return err
	}
	dir := path.Join(s.cfg.PrimaryDatadir, s.cfg.Schema)
	stall := s.cfg.SSH.StallTimeout
	var st os.FileInfo
	err = l.step("stat "+dir, stall, func() (err error) { st, err = l.sftp.Stat(dir); return err })
	if err != nil {
		return fmt.Errorf("stat %s on %s over sftp (does the schema exist on the primary?): %w", dir, s.cfg.SSH.Addr(), err)
	}
	if !st.IsDir() {
		return fmt.Errorf("%s on %s is not a directory", dir, s.cfg.SSH.Addr())
	}
	probe := path.Join(dir, tmpPrefix+"0_check.probe")
	var f *sftp.File
	err = l.step("create "+probe, stall, func() (err error) {
		f, err = l.sftp.OpenFile(probe, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
		return err
	})
	if err != nil {
		return fmt.Errorf("create %s over sftp as %s: %w", probe, s.cfg.SSH.User, err)
	}
	if err := l.step("close "+probe, stall, f.Close); err != nil {
		return fmt.Errorf("close %s over sftp: %w", probe, err)
	}
	if err := l.step("remove "+probe, stall, func() error { return l.sftp.Remove(probe) }); err != nil {
		return fmt.Errorf("remove %s over sftp: %w", probe, err)
	}
	return nil
}

func joinHostPort(host string, port int) string {
	return net.JoinHostPort(host, strconv.Itoa(port))
}
