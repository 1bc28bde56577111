package dashboard

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"
)

// maxLogBytes is how much of a run log a page shows: its end, where the
// outcome is.
const maxLogBytes = 256 << 10

// logText is what readLog read of a run log.
type logText struct {
	// Text is the file's last max bytes (all of it unless Truncated);
	// Size the file's size.
	Text      string
	Size      int64
	Truncated bool
	// First is the file's first line (at most 512 bytes), where the
	// worker names the run the file holds.
	First string
}

// readLog reads the last max bytes of the run log at path, only if path is
// a clean absolute path inside one of dirs. The file is opened through
// os.OpenInRoot, so a symbolic link inside a log directory cannot lead out
// of it either. Anything else is ErrLogNotAllowed; a missing file wraps
// fs.ErrNotExist.
func readLog(dirs []string, path string, max int64) (logText, error) {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return logText{}, ErrLogNotAllowed
	}
	for _, dir := range dirs {
		rel, err := filepath.Rel(dir, path)
		if err != nil || !filepath.IsLocal(rel) {
			continue
		}
		f, err := os.OpenInRoot(dir, rel)
		if err != nil {
			if os.IsNotExist(err) {
				return logText{}, fmt.Errorf("open run log: %w", err)
			}
			return logText{}, fmt.Errorf("open run log: %w: %w", ErrLogNotAllowed, err)
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return logText{}, fmt.Errorf("open run log: %w", err)
		}
		if !fi.Mode().IsRegular() {
			return logText{}, fmt.Errorf("%w: %s is not a regular file", ErrLogNotAllowed, path)
		}
		lt := logText{Size: fi.Size()}
		off := int64(0)
		if lt.Size > max {
			off, lt.Truncated = lt.Size-max, true
		}
		b, err := io.ReadAll(io.NewSectionReader(f, off, lt.Size-off))
		if err != nil {
			return logText{}, fmt.Errorf("read run log: %w", err)
		}
		head := b[:min(len(b), 512)]
		if lt.Truncated { // the start is not in b
			head = make([]byte, 512)
			n, err := f.ReadAt(head, 0)
			if n == 0 && err != nil {
				return logText{}, fmt.Errorf("read run log: %w", err)
			}
			head = head[:n]
		}
		lt.First, _, _ = strings.Cut(string(head), "\n")
		for lt.Truncated && len(b) > 0 && !utf8.RuneStart(b[0]) { // start on a character
			b = b[1:]
		}
		lt.Text = string(b)
		return lt, nil
	}
	return logText{}, ErrLogNotAllowed
}

// loggedClaimToken is the claim token the worker writes in a run log's
// first line ("…, claim token N, instance I"), 0 when there is none.
func loggedClaimToken(first string) uint64 {
	_, rest, ok := strings.Cut(first, "claim token ")
	if !ok {
		return 0
	}
	if i := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		rest = rest[:i]
	}
	n, _ := strconv.ParseUint(rest, 10, 64)
	return n
}
