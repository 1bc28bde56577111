package procs

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
	f   *os.File
	w   *bufio.Writer
	err error
}

func openRunLog(path string) (*runLog, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create log directory: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return nil, fmt.Errorf("create run log: %w", err)
	}
	return &runLog{f: f, w: bufio.NewWriter(f)}, nil
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
			l.w.WriteByte('\t')
		}
		l.w.WriteString(escapeCell(c))
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
