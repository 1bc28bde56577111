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

// verification is how a shipment is checked, chosen from Config.Verify in
// one place (Shipper.verification) so that Ship's phases call it instead of
// each branching on the setting: byteVerification for verify = "bytes"
// (the default), tableChecksum for verify = "checksum".
type verification interface {
	// plan marks the files to read back as they are written (putFile) and
	// returns those to compare by cksum on both hosts instead.
	plan(ctx context.Context, files []*stagedFile) (cksummed []*stagedFile)
	// replicaSums runs under the export lock while the files stream.
	replicaSums(ctx context.Context, rep *session, live []string, cksummed []*stagedFile) (map[string]string, error)
	// queriesReplica says whether replicaSums queries the replica's locked
	// session, which a cancelled query leaves unusable.
	queriesReplica() bool
	// afterCopy checks the copy against those sums, still under the lock.
	afterCopy(ctx context.Context, tables []*stagedTable, cksummed []*stagedFile, sums map[string]string) error
	// primary checks the staged tables on the primary before the swap, or
	// returns probes: scalar subqueries that must run without error, which
	// the first GET_LOCK of the swap carries (one round trip less).
	primary(ctx context.Context, prim *session, tables []*stagedTable, tmp []string) (probes []string, err error)
	// describe says how shipped files will be verified, for CheckVerify.
	describe(ctx context.Context) (string, error)
}

// verification returns the Shipper's verification: byteVerification for
// VerifyBytes (WithDefaults' default, and what it maps VerifyCksum to),
// tableChecksum for anything else, as the branches it replaces did.
func (s *Shipper) verification() verification {
	if s.cfg.Verify == VerifyBytes {
		return byteVerification{s}
	}
	return tableChecksum{s}
}

// byteVerification (verify = "bytes") compares the bytes themselves: a
// file up to smallFile is read back over the handle that wrote it, a bigger
// one is compared by cksum on both hosts (read back too when cksum cannot
// run there); the primary then only has to open the staged tables.
type byteVerification struct{ s *Shipper }

func (v byteVerification) plan(ctx context.Context, files []*stagedFile) []*stagedFile {
	var cksummed []*stagedFile // files too big to read back in one go
	for _, f := range files {
		f.readBack = f.size <= smallFile
		if !f.readBack {
			cksummed = append(cksummed, f)
		}
	}
	if len(cksummed) > 0 && !v.s.cksumUsable(ctx) {
		for _, f := range cksummed {
			f.readBack = true
		}
		cksummed = nil
	}
	return cksummed
}

// replicaSums: the files do not change under the export lock: cksum on
// this host reads them (from the page cache, at memory speed) while they
// stream, and afterCopy compares with cksum on the primary's host. Small
// files are read back as they are written (putSmall).
func (v byteVerification) replicaSums(ctx context.Context, _ *session, _ []string, cksummed []*stagedFile) (map[string]string, error) {
	if len(cksummed) == 0 {
		return nil, nil
	}
	return localCksums(ctx, cksummed)
}

func (byteVerification) queriesReplica() bool { return false }

func (v byteVerification) afterCopy(ctx context.Context, _ []*stagedTable, cksummed []*stagedFile, sums map[string]string) error {
	if len(cksummed) == 0 {
		return nil
	}
	return v.s.verifyRemote(ctx, cksummed, sums)
}

// primary: the bytes are verified already; the server must open them.
// The probes (SELECT 1 FROM each staging table LIMIT 0) go with the swap's
// GET_LOCK: the server opens every table of a statement before it runs
// any of it, so a table it cannot open fails the statement before the
// lock is taken (swap wraps that error in ErrChecksumMismatch).
func (v byteVerification) primary(_ context.Context, _ *session, _ []*stagedTable, tmp []string) ([]string, error) {
	var probes []string
	for _, n := range tmp {
		probes = append(probes, "(SELECT 1 FROM "+v.s.qualified(n)+" LIMIT 0)")
	}
	return probes, nil
}

// describe probes cksum on both hosts (one SSH exec): without it big files
// are read back over SFTP instead, which works but sends each of them
// twice; that is said, not returned as an error.
func (v byteVerification) describe(ctx context.Context) (string, error) {
	if err := v.s.probeCksum(ctx); err != nil {
		if ctx.Err() != nil {
			return "", err
		}
		return fmt.Sprintf("verify = %s: files read back over SFTP; files over %d KiB too, since %v", VerifyBytes, smallFile>>10, err), nil
	}
	return fmt.Sprintf("verify = %s: files up to %d KiB read back over SFTP, bigger ones compared by cksum on both hosts", VerifyBytes, smallFile>>10), nil
}

// tableChecksum (verify = "checksum") compares CHECKSUM TABLE … EXTENDED
// of the replica's tables, taken under the export lock, with the staged
// tables' on the primary.
type tableChecksum struct{ s *Shipper }

func (tableChecksum) plan(context.Context, []*stagedFile) []*stagedFile { return nil }

func (v tableChecksum) replicaSums(ctx context.Context, rep *session, live []string, _ []*stagedFile) (map[string]string, error) {
	return checksums(ctx, rep.conn, v.s.cfg.Schema, live)
}

func (tableChecksum) queriesReplica() bool { return true }

func (tableChecksum) afterCopy(_ context.Context, tables []*stagedTable, _ []*stagedFile, sums map[string]string) error {
	for _, t := range tables {
		sum, ok := sums[t.live]
		if !ok {
			return fmt.Errorf("checksum of %s on the replica: %w", t.live, ErrTableMissing)
		}
		t.sum = sum
	}
	return nil
}

func (v tableChecksum) primary(ctx context.Context, prim *session, tables []*stagedTable, tmp []string) ([]string, error) {
	sums, err := checksums(ctx, prim.conn, v.s.cfg.Schema, tmp)
	if err != nil {
		return nil, fmt.Errorf("checksum shipped tables on the primary: %w", err)
	}
	for _, t := range tables {
		got, ok := sums[t.tmp]
		if !ok {
			return nil, fmt.Errorf("%w: %s (shipped as %s) cannot be opened on the primary", ErrChecksumMismatch, t.live, t.tmp)
		}
		if got != t.sum {
			return nil, fmt.Errorf("%w: %s: replica %s, primary %s (shipped as %s)", ErrChecksumMismatch, t.live, t.sum, got, t.tmp)
		}
	}
	return nil, nil
}

func (v tableChecksum) describe(context.Context) (string, error) {
	return "verify = " + v.s.cfg.Verify + ": CHECKSUM TABLE on both servers", nil
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
	return s.verification().describe(ctx)
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
