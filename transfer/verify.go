package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"
)

// Verification of a shipment: cksum of big files on both hosts, the
// primary's check of the staged tables before the swap, and what `nonqueue
// check` reports about it (Config.Verify).

// verifyPrimary checks the staged tables on the primary before the swap:
// with VerifyBytes (the bytes are verified already) that the server opens
// them; otherwise that CHECKSUM TABLE matches the replica's.
func (s *Shipper) verifyPrimary(ctx context.Context, prim *session, tables []*stagedTable, tmp []string) error {
	if s.cfg.Verify == VerifyBytes {
		var probes []string
		for _, n := range tmp {
			probes = append(probes, "(SELECT 1 FROM "+s.qualified(n)+" LIMIT 0)")
		}
		if _, err := prim.conn.ExecContext(ctx, "DO /* nonqueue */ "+strings.Join(probes, ", ")); err != nil {
			return fmt.Errorf("%w: the primary cannot open the shipped tables: %w", ErrChecksumMismatch, err)
		}
		return nil
	}
	sums, err := checksums(ctx, prim.conn, s.cfg.Schema, tmp)
	if err != nil {
		return fmt.Errorf("checksum shipped tables on the primary: %w", err)
	}
	for _, t := range tables {
		got, ok := sums[t.tmp]
		if !ok {
			return fmt.Errorf("%w: %s (shipped as %s) cannot be opened on the primary", ErrChecksumMismatch, t.live, t.tmp)
		}
		if got != t.sum {
			return fmt.Errorf("%w: %s: replica %s, primary %s (shipped as %s)", ErrChecksumMismatch, t.live, t.sum, got, t.tmp)
		}
	}
	return nil
}

// cksumCmd is the command line that prints "CRC SIZE NAME" per file, the
// same program on both hosts so the two outputs compare as text.
func cksumCmd(paths []string) string {
	cmd := "cksum --"
	for _, p := range paths {
		cmd += " " + shellQuote(p)
	}
	return cmd
}

// parseCksum maps each file named in cksum's output to "CRC SIZE".
func parseCksum(out []byte) map[string]string {
	got := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.SplitN(line, " ", 3); len(f) == 3 {
			got[f[2]] = f[0] + " " + f[1]
		}
	}
	return got
}

// localCksums runs cksum on this host over the files' local paths.
func localCksums(ctx context.Context, files []*stagedFile) (map[string]string, error) {
	args := []string{"--"}
	for _, f := range files {
		args = append(args, f.local)
	}
	out, err := exec.CommandContext(ctx, "cksum", args...).Output()
	if err != nil {
		return nil, fmt.Errorf("cksum on this host (verify = %q needs coreutils here too): %w", VerifyBytes, err)
	}
	return parseCksum(out), nil
}

// verifyRemote runs cksum on the primary's host over an SSH exec session
// and compares every shipped file's CRC and size with local's (the files
// as read on the replica host).
func (s *Shipper) verifyRemote(ctx context.Context, files []*stagedFile, local map[string]string) error {
	remote := make([]string, len(files))
	for i, f := range files {
		remote[i] = f.remote
	}
	var size int64
	for _, f := range files {
		size += f.size
	}
	out, err := s.primaryExec(ctx, cksumCmd(remote), size)
	if err != nil {
		return fmt.Errorf("verify shipped files: cksum on the primary's host (needs a shell there; or set verify = %q): %w", VerifyChecksum, err)
	}
	got := parseCksum(out)
	for _, f := range files {
		want, ok := local[f.local]
		if !ok || !strings.HasSuffix(want, " "+strconv.FormatInt(f.size, 10)) {
			return fmt.Errorf("%w: %s: cksum on this host gave %q, %d bytes were sent", ErrChecksumMismatch, f.local, want, f.size)
		}
		if got[f.remote] != want {
			return fmt.Errorf("%w: %s: %s here, the primary's host has %q", ErrChecksumMismatch, f.remote, want, got[f.remote])
		}
	}
	return nil
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// CheckVerify says how shipped files will be verified, for `nonqueue
// check`. With VerifyBytes it probes cksum on both hosts (one SSH exec):
// without it big files are read back over SFTP instead, which works but
// sends each of them twice; that is said, not returned as an error.
func (s *Shipper) CheckVerify(ctx context.Context) (string, error) {
	if s.cfg.Verify != VerifyBytes {
		return "verify = " + s.cfg.Verify + ": CHECKSUM TABLE on both servers", nil
	}
	if err := s.probeCksum(ctx); err != nil {
		if ctx.Err() != nil {
			return "", err
		}
		return fmt.Sprintf("verify = %s: files read back over SFTP; files over %d KiB too, since %v", VerifyBytes, smallFile>>10, err), nil
	}
	return fmt.Sprintf("verify = %s: files up to %d KiB read back over SFTP, bigger ones compared by cksum on both hosts", VerifyBytes, smallFile>>10), nil
}

// probeCksum runs cksum here and, over an SSH exec session, on the
// primary's host.
func (s *Shipper) probeCksum(ctx context.Context) error {
	if _, err := exec.LookPath("cksum"); err != nil {
		return fmt.Errorf("cksum cannot run on this host: %w", err)
	}
	if _, err := s.primaryExec(ctx, "cksum -- /dev/null", 0); err != nil {
		return fmt.Errorf("cksum cannot run on the primary's host (it needs a shell and coreutils there): %w", err)
	}
	return nil
}

// primaryExec runs cmd on the primary's host over one SSH exec session of
// the shared connection, closed when ctx ends, and returns its standard
// output; a failure carries what it wrote to standard error. The command
// reads size bytes there: it has the bulk bound of that size, after which
// the link is abandoned (the keepalive catches a dead server sooner).
func (s *Shipper) primaryExec(ctx context.Context, cmd string, size int64) ([]byte, error) {
	l, err := s.link(ctx)
	if err != nil {
		return nil, err
	}
	var sess *ssh.Session
	err = l.step("open an ssh session", s.cfg.SSH.StallTimeout, func() (err error) { sess, err = l.ssh.NewSession(); return err })
	if err != nil {
		return nil, fmt.Errorf("open an ssh session: %w", err)
	}
	defer sess.Close()
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	defer stop()
	var stderr bytes.Buffer
	sess.Stderr = &stderr
	var out []byte
	name, _, _ := strings.Cut(cmd, " ")
	err = l.step(name+" on the primary's host", s.bulkTimeout(size), func() (err error) { out, err = sess.Output(cmd); return err })
	if err != nil {
		return out, fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// cksumUsable reports whether big files can be compared by cksum on both
// hosts. The first call with a big file probes (one SSH exec) and the
// answer is kept for the Shipper's life; a probe cut short by ctx is not
// kept.
func (s *Shipper) cksumUsable(ctx context.Context) bool {
	s.cksumMu.Lock()
	defer s.cksumMu.Unlock()
	if s.cksumKnown {
		return s.cksumOK
	}
	err := s.probeCksum(ctx)
	if ctx.Err() != nil || errors.Is(err, ErrStalled) {
		return false // says nothing about cksum: probe again next time
	}
	s.cksumKnown, s.cksumOK = true, err == nil
	if err != nil {
		s.logger.WarnContext(ctx, "verify = bytes: files over 64 KiB are read back over SFTP instead of compared by cksum (each is sent twice)", "err", err)
	}
	return s.cksumOK
}
