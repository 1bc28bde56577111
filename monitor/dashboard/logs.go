package dashboard

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"unicode/utf8"
)

// maxLogBytes is how much of a run log a page shows: its end, where the
// outcome is.
const maxLogBytes = 256 << 10

// readLog reads the last max bytes of the run log at path, only if path is
// a clean absolute path inside one of dirs. The file is opened through
// os.OpenInRoot, so a symbolic link inside a log directory cannot lead out
// of it either. Anything else is ErrLogNotAllowed; a missing file wraps
// fs.ErrNotExist.
func readLog(dirs []string, path string, max int64) (text string, size int64, truncated bool, err error) {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return "", 0, false, ErrLogNotAllowed
	}
	for _, dir := range dirs {
		rel, err := filepath.Rel(dir, path)
		if err != nil || !filepath.IsLocal(rel) {
			continue
		}
		f, err := os.OpenInRoot(dir, rel)
		if err != nil {
			if os.IsNotExist(err) {
				return "", 0, false, fmt.Errorf("open run log: %w", err)
			}
			return "", 0, false, fmt.Errorf("open run log: %w: %w", ErrLogNotAllowed, err)
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return "", 0, false, fmt.Errorf("open run log: %w", err)
		}
		if !fi.Mode().IsRegular() {
			return "", 0, false, fmt.Errorf("%w: %s is not a regular file", ErrLogNotAllowed, path)
		}
		size = fi.Size()
		off := int64(0)
		if size > max {
			off, truncated = size-max, true
		}
		b, err := io.ReadAll(io.NewSectionReader(f, off, size-off))
		if err != nil {
			return "", 0, false, fmt.Errorf("read run log: %w", err)
		}
		for truncated && len(b) > 0 && !utf8.RuneStart(b[0]) { // start on a character
			b = b[1:]
		}
		return string(b), size, truncated, nil
	}
	return "", 0, false, ErrLogNotAllowed
}
