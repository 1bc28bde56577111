package procs

import (
	"bufio"
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// resolveLogPath decides where a run's log goes: an absolute logPath as
// given; a relative one inside dir, refused if it would leave dir (no path
// injection through a caller-built name); an empty one as
// dir/topic_<id>_<UTC time>.log.
func resolveLogPath(dir, logPath string, topicID int64, at time.Time) (string, error) {
	switch {
	case logPath == "":
		return filepath.Join(dir, fmt.Sprintf("topic_%d_%s.log", topicID, at.UTC().Format("20060102T150405.000000Z"))), nil
	case filepath.IsAbs(logPath):
		return filepath.Clean(logPath), nil
	case !filepath.IsLocal(logPath):
		return "", fmt.Errorf("log path %q leaves the log directory", logPath)
	}
	return filepath.Join(dir, logPath), nil
}

// runLog writes one run's output. Write errors are kept, not returned at
// each call: the run goes on and the first error is reported at close.
type runLog struct {
	path string
	f    *os.File
	w    *bufio.Writer
	err  error
}

// openRunLog opens path for one run, reusing the file if it exists: a run
// log is rewritten in place (truncated under an exclusive flock held until
// close) rather than created anew, so a log per topic stays one file and
// costs no new inode per run. If another run holds the lock, this one
// writes beside it, in path with the time before the extension (created
// exclusively).
func openRunLog(path string, now time.Time) (*runLog, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create log directory: %w", err)
	}
	f, err := lockedLog(path, os.O_WRONLY|os.O_CREATE)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		path = withTag(path, now.UTC().Format("20060102T150405.000000000Z"))
		f, err = lockedLog(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL)
	}
	if err != nil {
		return nil, fmt.Errorf("create run log: %w", err)
	}
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, fmt.Errorf("truncate run log: %w", err)
	}
	return &runLog{path: path, f: f, w: bufio.NewWriter(f)}, nil
}

// withTag puts "."+tag before path's extension: 42.log -> 42.<tag>.log.
func withTag(path, tag string) string {
	ext := filepath.Ext(path)
	return strings.TrimSuffix(path, ext) + "." + tag + ext
}

// lockedLog opens path and takes an exclusive flock on it without
// waiting; syscall.EWOULDBLOCK says another run holds it.
func lockedLog(path string, flag int) (*os.File, error) {
	f, err := os.OpenFile(path, flag, 0o640)
	if err != nil {
		return nil, err
	}
	conn, err := f.SyscallConn()
	if err == nil {
		cerr := conn.Control(func(fd uintptr) {
			err = syscall.Flock(int(fd), syscall.LOCK_EX|syscall.LOCK_NB)
		})
		err = cmp.Or(cerr, err)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// keepAsFailed renames the log to <name>.failed<ext> (replacing an older
// failure's) while the lock is held, so the topic's next run, which
// reuses <name><ext>, leaves it readable. It returns the log's path, the
// old one if the rename failed (the run's outcome does not depend on it).
func (l *runLog) keepAsFailed() string {
	if strings.HasSuffix(strings.TrimSuffix(l.path, filepath.Ext(l.path)), ".failed") {
		return l.path
	}
	failed := withTag(l.path, "failed")
	if err := os.Rename(l.path, failed); err != nil {
		return l.path
	}
	l.path = failed
	return failed
}

func (l *runLog) printf(format string, args ...any) {
	if l.err == nil {
		_, l.err = fmt.Fprintf(l.w, format, args...)
	}
}

// row writes cells tab separated, escaped the way `mariadb --batch` does
// so that one row stays one line.
func (l *runLog) row(cells []string) {
	if l.err != nil {
		return
	}
	for i, c := range cells {
		if i > 0 {
			_ = l.w.WriteByte('\t') // bufio's error is sticky: the last write returns it
		}
		_, _ = l.w.WriteString(escapeCell(c))
	}
	_, l.err = l.w.WriteString("\n")
}

var cellEscaper = strings.NewReplacer(`\`, `\\`, "\t", `\t`, "\n", `\n`, "\r", `\r`, "\x00", `\0`)

func escapeCell(s string) string { return cellEscaper.Replace(s) }

// close flushes and closes the file, returning the first error of the
// whole log. It does not fsync: a run log is a diagnostic, and a sync per
// run (a journal commit) costs more than a log lost to a crash of the host.
func (l *runLog) close() error {
	if err := l.w.Flush(); l.err == nil {
		l.err = err
	}
	if err := l.f.Close(); l.err == nil {
		l.err = err
	}
	return l.err
}

// formatCell renders a scanned value; NULL as "NULL" like the client does.
func formatCell(v any) string {
	switch x := v.(type) {
	case nil:
		return "NULL"
	case []byte:
		return string(x)
	case string:
		return x
	case time.Time:
		return x.Format("2006-01-02 15:04:05.999999")
	default:
		return fmt.Sprint(x)
	}
}
