package transfer

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// backupStamp names backups so that names sort by age.
const backupStamp = "20060102T150405.000000000Z"

// partialPrefix marks a backup being written or of a failed shipment.
const partialPrefix = ".partial-"

// partialMaxAge is how old an abandoned partial backup (of a crashed run)
// must be before pruning removes it.
const partialMaxAge = 24 * time.Hour

// backupFiles copies the tables' local files, while the replica still holds
// them locked and consistent, into BackupDir/<topic>/.partial-<stamp>-<token>/.
// keepBackup gives the directory its final name once the tables are live;
// Ship removes it otherwise.
func (s *Shipper) backupFiles(ctx context.Context, topicID int64, token uint64, tables []*stagedTable) (string, error) {
	name := time.Now().UTC().Format(backupStamp) + "-" + strconv.FormatUint(token, 10)
	dir := filepath.Join(s.cfg.BackupDir, strconv.FormatInt(topicID, 10), partialPrefix+name)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", fmt.Errorf("create backup directory: %w", err)
	}
	for _, t := range tables {
		for _, f := range t.files {
			if err := ctx.Err(); err != nil {
				os.RemoveAll(dir)
				return "", err
			}
			if err := copyFile(f.local, filepath.Join(dir, filepath.Base(f.local))); err != nil {
				os.RemoveAll(dir)
				return "", fmt.Errorf("back up %s: %w", f.local, err)
			}
		}
	}
	return dir, nil
}

// copyFile streams src to a new file dst (io.Copy between files uses
// copy_file_range on Linux: no user-space buffer).
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// keepBackup renames a partial backup to its final name and prunes the
// topic's backups to the newest BackupKeep. It returns the final path.
func (s *Shipper) keepBackup(topicID int64, partial string) (string, error) {
	final := filepath.Join(filepath.Dir(partial), strings.TrimPrefix(filepath.Base(partial), partialPrefix))
	if err := os.Rename(partial, final); err != nil {
		os.RemoveAll(partial)
		return "", fmt.Errorf("finish backup: %w", err)
	}
	return final, s.pruneBackups(topicID)
}

// pruneBackups keeps the newest BackupKeep backups of a topic and removes
// partial ones older than partialMaxAge.
func (s *Shipper) pruneBackups(topicID int64) error {
	dir := filepath.Join(s.cfg.BackupDir, strconv.FormatInt(topicID, 10))
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list backups: %w", err)
	}
	var kept []string
	var firstErr error
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		if strings.HasPrefix(e.Name(), partialPrefix) {
			if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > partialMaxAge {
				if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil && firstErr == nil {
					firstErr = fmt.Errorf("remove abandoned backup: %w", err)
				}
			}
			continue
		}
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		kept = append(kept, e.Name())
	}
	sort.Strings(kept)
	for len(kept) > s.cfg.BackupKeep {
		if err := os.RemoveAll(filepath.Join(dir, kept[0])); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("remove old backup: %w", err)
		}
		kept = kept[1:]
	}
	return firstErr
}
