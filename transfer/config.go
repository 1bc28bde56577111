package transfer

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/nonqueue/nonqueue/internal/ident"
)

// Defaults for Config and ShipParams fields left zero.
const (
	DefaultSSHPort     = 22
	DefaultDialTimeout = 10 * time.Second
	DefaultBackupKeep  = 3
	DefaultLockTimeout = 10 * time.Second

	// DefaultKeepaliveInterval and DefaultKeepaliveTimeout declare a
	// connection dead at most 15s after the server last answered.
	DefaultKeepaliveInterval = 5 * time.Second
	DefaultKeepaliveTimeout  = 10 * time.Second
	// DefaultStallTimeout abandons a transfer step that moves no byte for
	// 10s: far above any pause of a working link (a step's data is at most
	// a few MiB in flight), far below TCP's own 15 minutes.
	DefaultStallTimeout = 10 * time.Second
	// DefaultMinThroughput (MiB/s) sizes the deadline of a step that
	// reports no progress while it works through a whole file (fsync,
	// cksum on the primary's host): StallTimeout plus the file's size at
	// this rate, 138s for 512 MiB.
	DefaultMinThroughput = 4
)

// idPlaceholder is what a table template contains exactly once.
const idPlaceholder = "{id}"

// maxIDDigits is the length of the longest positive int64 (9223372036854775807):
// templates are checked with it, so every topic id expands to a valid name.
const maxIDDigits = 19

// Prefixes of the staging tables in the result schema on the primary.
// Names starting with them are reserved: CleanupPrimary drops them.
const (
	tmpPrefix = "nqtmp_" // shipped files waiting to be verified and swapped in
	oldPrefix = "nqold_" // a live table swapped out, dropped right after the swap
)

// SSHConfig says how to reach the primary's host for SFTP. It holds no
// secret: the private key stays in KeyFile.
type SSHConfig struct {
	// Host and Port of the primary's sshd; Port defaults to 22.
	Host string
	Port int
	// User logs in with the key in KeyFile and must be able to write the
	// primary's datadir (files are created mode 0660, readable by the
	// server's group).
	User string
	// KeyFile is an unencrypted OpenSSH or PEM private key. Required.
	KeyFile string
	// KnownHosts is an OpenSSH known_hosts file that lists the host's key.
	// Required: nonqueue never trusts an unknown host key.
	KnownHosts string
	// DialTimeout bounds the TCP connect, the SSH handshake and the start
	// of the SFTP session; default 10s.
	DialTimeout time.Duration
	// KeepaliveInterval is how often a keepalive@openssh.com request goes
	// to the server (as OpenSSH's ServerAliveInterval); default 5s. A
	// connection whose server stops answering (sshd stopped, host gone, a
	// half-open TCP connection) would otherwise block every transfer on it
	// until TCP gives up, about 15 minutes.
	KeepaliveInterval time.Duration
	// KeepaliveTimeout is how long a keepalive may wait for its reply
	// before the connection is declared dead and closed (the transfers on
	// it fail, the next call dials again); default 10s. It must leave room
	// for the data queued ahead of the request on a slow link.
	KeepaliveTimeout time.Duration
	// StallTimeout abandons a transfer step (an SFTP open, write, read,
	// close, chmod or remove, a file's stream) that makes no progress for
	// this long: the connection is closed, which is the only way to stop
	// a blocked SFTP call, and the transfer fails; default 10s. A stream
	// counts every chunk acknowledged as progress, so a big file is never
	// cut short while it moves.
	StallTimeout time.Duration
	// MinThroughput, in MiB/s, sizes the deadline of a step that works
	// through a whole file without reporting progress (fsync of a shipped
	// file, cksum on the primary's host): StallTimeout plus the bytes at
	// this rate; default 4.
	MinThroughput int
}

// Addr returns host:port as dialled and as looked up in known_hosts.
func (c SSHConfig) Addr() string {
	return joinHostPort(c.Host, c.Port)
}

// Config says where the result tables live on both ends and how to reach
// the primary's datadir. The result tables are MyISAM tables written on the
// replica by the procedure; the same schema name is used on the primary.
type Config struct {
	SSH SSHConfig
	// PrimaryDatadir is the primary's @@datadir as seen over SFTP: an
	// absolute path. Files land in PrimaryDatadir/Schema/.
	PrimaryDatadir string
	// Schema of the result tables on the replica and on the primary.
	Schema string
	// Tables are templates of the result table names, each containing
	// "{id}" exactly once (replaced by the topic id), the rest letters,
	// digits and underscores, such as "Dynamics_{id}". The names must not
	// start with nqtmp_ or nqold_ (reserved for staging).
	Tables []string
	// BackupDir, if set, keeps a local copy of every shipped table's files
	// in BackupDir/<topic id>/<UTC time>-<claim token>/.
	BackupDir string
	// BackupKeep is how many copies per topic are kept; default 3 when
	// BackupDir is set.
	BackupKeep int
	// FileMode, if set, is applied to every shipped file (one more SFTP
	// request per file). Leave it 0 when the SSH user is the user mysqld
	// runs as, which is the recommended setup: the files are then the
	// server's own.
	FileMode os.FileMode
	// NoBinlogPools says the replica and primary pools given to Ship and
	// DropReplicaTables run every session with sql_log_bin=0 already
	// (set when connecting): Ship then skips turning it off and back on
	// per session, two statements on each server per topic.
	NoBinlogPools bool
	// MultiStatementPools says the primary pool given to Ship accepts
	// several statements in one request (the driver's multiStatements,
	// with interpolateParams, as nonqueue work's pools are opened): a
	// ShipParams.FenceQuery then goes with the GET_LOCK, one round trip
	// for both.
	MultiStatementPools bool
	// LockWait bounds how long each RENAME TABLE of a publish, and each
	// DROP TABLE of a swapped-out or staging table, waits for the tables'
	// metadata locks on the primary (lock_wait_timeout for that one
	// statement: SET STATEMENT … FOR). While such a statement waits behind
	// a long query of a result table, every new query of that table queues
	// behind it, so this is the longest a publish stalls the application's
	// reads. Then the statement fails having done nothing, the queued
	// readers go on with the old table, and the swap is retried. Whole
	// seconds (the server's unit), 1s to 1m; default 1s.
	LockWait time.Duration
	// SwapTries is how many times a publish tries its RENAME before it
	// gives up with ErrTableBusy, nothing published and the staging tables
	// removed; default 14. GET_LOCK and the fence are taken again for
	// every try and released in between, so an operator's release and the
	// reaper are never kept out for longer than one try. Drops of
	// swapped-out tables try as often while their cleanup timeout (10s)
	// lasts, and then leave the tables to CleanupPrimary. All the tries
	// and pauses together may span at most 30 minutes.
	SwapTries int
	// SwapBackoff is the longest pause between two tries: the pauses start
	// at LockWait (or SwapBackoff if smaller) and double up to it, so a
	// short lock clears fast and a long reader sees at most one stall of
	// LockWait every LockWait + SwapBackoff. 100ms to 5m; default 4s.
	SwapBackoff time.Duration
	// Verify is how a copy is checked before it goes live.
	// VerifyBytes (default) compares the bytes themselves, read on the
	// replica's host under the export lock (the files cannot change) with
	// what landed on the primary's host: a file up to 64 KiB is read back
	// over its still-open SFTP handle and compared byte for byte (one more
	// SFTP request); bigger files are compared by `cksum` (CRC and size) on
	// this host and on the primary's host over one SSH exec session per
	// topic, so nothing is sent twice or re-read row by row through a
	// server. Where cksum cannot run there (an SFTP-only login, no
	// coreutils: probed once, logged) big files are read back over SFTP
	// too. The primary must still open the shipped tables before the swap.
	// VerifyChecksum compares CHECKSUM TABLE … EXTENDED on the replica
	// (while the files stream) and on the primary (after them): both
	// servers read every row, a read per row for a MyISAM table, which
	// also cross-checks that both servers see the same rows. It costs both
	// servers more CPU than VerifyBytes even for small results, and is far
	// slower for big ones.
	Verify string
	// NoSync skips the fsync of shipped files. By default every file is
	// synced on the primary's host (fsync@openssh.com, one SFTP request
	// per file) before it is verified and swapped in, so a crash of that
	// host cannot leave a live table whose data never reached its disk.
	// Servers without the extension (it names OpenSSH) are used without
	// it, as said once in the log.
	NoSync bool
}

// Verification modes of Config.Verify.
const (
	VerifyChecksum = "checksum"
	VerifyBytes    = "bytes"
	// VerifyCksum is the former name of VerifyBytes, still accepted.
	VerifyCksum = "cksum"
)

// ConfigError names the configuration field that is wrong. Configuration
// holds no secrets (the key stays in its file), so the message may quote
// values.
type ConfigError struct {
	Field string
	Err   error
}

// Error names the field (as in the configuration file) and the problem.
func (e *ConfigError) Error() string { return fmt.Sprintf("transfer.%s: %v", e.Field, e.Err) }

// Unwrap lets errors.Is find ErrConfig and the cause (such as
// ident.ErrInvalid).
func (e *ConfigError) Unwrap() []error { return []error{ErrConfig, e.Err} }

// WithDefaults returns c with zero fields set to their defaults.
func (c Config) WithDefaults() Config {
	c.SSH.Port = cmp.Or(c.SSH.Port, DefaultSSHPort)
	c.SSH.DialTimeout = cmp.Or(c.SSH.DialTimeout, DefaultDialTimeout)
	c.SSH.KeepaliveInterval = cmp.Or(c.SSH.KeepaliveInterval, DefaultKeepaliveInterval)
	c.SSH.KeepaliveTimeout = cmp.Or(c.SSH.KeepaliveTimeout, DefaultKeepaliveTimeout)
	c.SSH.StallTimeout = cmp.Or(c.SSH.StallTimeout, DefaultStallTimeout)
	c.SSH.MinThroughput = cmp.Or(c.SSH.MinThroughput, DefaultMinThroughput)
	if c.BackupDir != "" {
		c.BackupKeep = cmp.Or(c.BackupKeep, DefaultBackupKeep)
	}
	if c.PrimaryDatadir != "" {
		c.PrimaryDatadir = path.Clean(c.PrimaryDatadir)
	}
	c.LockWait = cmp.Or(c.LockWait, DefaultLockWait)
	c.SwapTries = cmp.Or(c.SwapTries, DefaultSwapTries)
	c.SwapBackoff = cmp.Or(c.SwapBackoff, DefaultSwapBackoff)
	c.Verify = cmp.Or(c.Verify, VerifyBytes)
	if c.Verify == VerifyCksum {
		c.Verify = VerifyBytes
	}
	return c
}

// Validate checks every field. Identifiers and templates are checked so
// that neither SQL nor a path can be injected through them; the SSH host
// key file is required (there is no "trust on first use"). Call it on
// WithDefaults' result; NewShipper does both.
func (c Config) Validate() error {
	switch {
	case c.Verify != "" && c.Verify != VerifyChecksum && c.Verify != VerifyBytes && c.Verify != VerifyCksum:
		return &ConfigError{Field: "results.verify", Err: fmt.Errorf("%q: want %q or %q", c.Verify, VerifyBytes, VerifyChecksum)}
	case c.SSH.Host == "":
		return &ConfigError{Field: "ssh.host", Err: errors.New("is required")}
	case strings.ContainsAny(c.SSH.Host, " \t\r\n/"):
		return &ConfigError{Field: "ssh.host", Err: fmt.Errorf("%q is not a host name or address", c.SSH.Host)}
	case c.SSH.Port < 1 || c.SSH.Port > 65535:
		return &ConfigError{Field: "ssh.port", Err: fmt.Errorf("%d is not a TCP port", c.SSH.Port)}
	case c.SSH.User == "":
		return &ConfigError{Field: "ssh.user", Err: errors.New("is required")}
	case c.SSH.KeyFile == "":
		return &ConfigError{Field: "ssh.key_file", Err: errors.New("is required: nonqueue logs in with a private key")}
	case c.SSH.KnownHosts == "":
		return &ConfigError{Field: "ssh.known_hosts", Err: errors.New("is required: the primary's host key must be verified (add it with ssh-keyscan after checking its fingerprint)")}
	case c.SSH.DialTimeout < 0:
		return &ConfigError{Field: "ssh.dial_timeout", Err: fmt.Errorf("%v is negative", c.SSH.DialTimeout)}
	case c.SSH.KeepaliveInterval < 0:
		return &ConfigError{Field: "ssh.keepalive_interval", Err: fmt.Errorf("%v is negative", c.SSH.KeepaliveInterval)}
	case c.SSH.KeepaliveTimeout < 0:
		return &ConfigError{Field: "ssh.keepalive_timeout", Err: fmt.Errorf("%v is negative", c.SSH.KeepaliveTimeout)}
	case c.SSH.KeepaliveTimeout > 0 && c.SSH.KeepaliveTimeout < time.Second:
		return &ConfigError{Field: "ssh.keepalive_timeout", Err: fmt.Errorf("%v is below 1s: a busy link would be taken for a dead one", c.SSH.KeepaliveTimeout)}
	case c.SSH.StallTimeout < 0:
		return &ConfigError{Field: "ssh.stall_timeout", Err: fmt.Errorf("%v is negative", c.SSH.StallTimeout)}
	case c.SSH.StallTimeout > 0 && c.SSH.StallTimeout < time.Second:
		return &ConfigError{Field: "ssh.stall_timeout", Err: fmt.Errorf("%v is below 1s: a busy link would be taken for a stalled one", c.SSH.StallTimeout)}
	case c.SSH.MinThroughput < 0:
		return &ConfigError{Field: "ssh.min_throughput", Err: fmt.Errorf("%d MiB/s is negative", c.SSH.MinThroughput)}
	case c.PrimaryDatadir == "":
		return &ConfigError{Field: "primary_datadir", Err: errors.New("is required")}
	case !path.IsAbs(c.PrimaryDatadir):
		return &ConfigError{Field: "primary_datadir", Err: fmt.Errorf("%q is not an absolute path", c.PrimaryDatadir)}
	}
	if err := ident.Validate(c.Schema); err != nil {
		return &ConfigError{Field: "schema", Err: err}
	}
	if len(c.Tables) == 0 {
		return &ConfigError{Field: "tables", Err: errors.New("at least one table template is required")}
	}
	seen := map[string]int{}
	for i, tpl := range c.Tables {
		field := fmt.Sprintf("tables[%d]", i)
		if err := validateTemplate(tpl); err != nil {
			return &ConfigError{Field: field, Err: err}
		}
		// Compared case-insensitively: on a server with
		// lower_case_table_names set, two templates differing in case
		// would name the same table.
		key := strings.ToLower(tpl)
		if j, dup := seen[key]; dup {
			return &ConfigError{Field: field, Err: fmt.Errorf("%q repeats tables[%d]", tpl, j)}
		}
		seen[key] = i
	}
	if c.BackupKeep < 0 {
		return &ConfigError{Field: "backup_keep", Err: fmt.Errorf("%d is negative", c.BackupKeep)}
	}
	if c.BackupDir != "" && c.BackupKeep < 1 {
		return &ConfigError{Field: "backup_keep", Err: errors.New("must be at least 1 when backup_dir is set")}
	}
	return c.ValidateSwap()
}

// Defaults and limits of the swap settings (Config.LockWait, SwapTries,
// SwapBackoff).
const (
	// DefaultLockWait is one second: the longest a publish may stall the
	// application's reads of a result table.
	DefaultLockWait = time.Second
	// DefaultSwapTries outlasts a reader of about a minute with the
	// default pauses: tries start 0, 2, 5, 10, 15, … 60 s after the first
	// (see Config.SwapTries). A give-up costs a whole new run (procedure
	// and transfer), so waiting out a long report query is cheaper, up to
	// the point where one busy table keeps an instance from other topics.
	DefaultSwapTries = 14
	// DefaultSwapBackoff caps the pause between two tries: at most one
	// second of stalled reads in five while a long reader holds the table,
	// and the publish lands at most about five seconds after it ends.
	DefaultSwapBackoff = 4 * time.Second

	maxLockWait    = time.Minute
	maxSwapTries   = 1000
	minSwapBackoff = 100 * time.Millisecond
	maxSwapBackoff = 5 * time.Minute
	// maxSwapSpan bounds how long one publish may keep trying: well inside
	// the hour after which CleanupPrimary takes staging tables for a
	// crashed run's, and long enough for any reader worth waiting for.
	maxSwapSpan = 30 * time.Minute
)

// ValidateSwap checks LockWait, SwapTries and SwapBackoff alone, so a
// configuration loader can report them before the rest of the transfer
// settings are complete. Zero means the default (WithDefaults).
func (c Config) ValidateSwap() error {
	switch {
	case c.LockWait < 0 || c.LockWait > maxLockWait:
		return &ConfigError{Field: "results.lock_wait", Err: fmt.Errorf("%v: want 1s to %v", c.LockWait, maxLockWait)}
	case c.LockWait%time.Second != 0:
		return &ConfigError{Field: "results.lock_wait", Err: fmt.Errorf("%v: want whole seconds (the server's lock_wait_timeout counts seconds)", c.LockWait)}
	case c.SwapTries < 0 || c.SwapTries > maxSwapTries:
		return &ConfigError{Field: "results.swap_tries", Err: fmt.Errorf("%d: want 1 to %d", c.SwapTries, maxSwapTries)}
	case c.SwapBackoff != 0 && (c.SwapBackoff < minSwapBackoff || c.SwapBackoff > maxSwapBackoff):
		return &ConfigError{Field: "results.swap_backoff", Err: fmt.Errorf("%v: want %v to %v", c.SwapBackoff, minSwapBackoff, maxSwapBackoff)}
	}
	d := c
	d.LockWait, d.SwapTries, d.SwapBackoff = cmp.Or(c.LockWait, DefaultLockWait), cmp.Or(c.SwapTries, DefaultSwapTries), cmp.Or(c.SwapBackoff, DefaultSwapBackoff)
	if span := d.swapSpan(); span > maxSwapSpan {
		return &ConfigError{Field: "results.swap_tries", Err: fmt.Errorf("%d tries of %v with pauses up to %v span %v, want at most %v (staging tables older than an hour are taken for a crashed run's)",
			d.SwapTries, d.LockWait, d.SwapBackoff, span, maxSwapSpan)}
	}
	return nil
}

// swapSpan is the longest a publish keeps trying: every try waiting
// LockWait, and the pauses between them.
func (c Config) swapSpan() time.Duration {
	span := time.Duration(c.SwapTries) * c.LockWait
	for n := 1; n < c.SwapTries; n++ {
		span += c.swapPause(n)
	}
	return span
}

// swapPause is the pause after the n-th failed try (n from 1): LockWait
// doubling up to SwapBackoff.
func (c Config) swapPause(n int) time.Duration {
	d := min(c.LockWait, c.SwapBackoff)
	for i := 1; i < n && d < c.SwapBackoff; i++ {
		d *= 2
	}
	return min(d, c.SwapBackoff)
}

// validateTemplate checks one table template: "{id}" exactly once, the rest
// [A-Za-z0-9_], and the longest expansion a valid identifier.
func validateTemplate(tpl string) error {
	if n := strings.Count(tpl, idPlaceholder); n != 1 {
		return fmt.Errorf("template %q must contain %s exactly once (found %d)", tpl, idPlaceholder, n)
	}
	rest := strings.Replace(tpl, idPlaceholder, "", 1)
	for _, r := range rest {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_') {
			return fmt.Errorf("%w: template %q may only contain A-Z, a-z, 0-9, _ besides %s", ident.ErrInvalid, tpl, idPlaceholder)
		}
	}
	// The longest id gives the longest name; id 1 catches all-digit names.
	for _, id := range []string{strings.Repeat("9", maxIDDigits), "1"} {
		if err := ident.Validate(strings.Replace(tpl, idPlaceholder, id, 1)); err != nil {
			return fmt.Errorf("template %q does not expand to a valid table name for every topic id: %w", tpl, err)
		}
	}
	lower := strings.ToLower(tpl)
	if strings.HasPrefix(lower, tmpPrefix) || strings.HasPrefix(lower, oldPrefix) {
		return fmt.Errorf("template %q starts with a prefix reserved for staging tables (%s, %s)", tpl, tmpPrefix, oldPrefix)
	}
	return nil
}

// TableNames returns the result table names of a topic, in template
// order. For a Config that passed Validate and a positive topic id they are
// valid identifiers.
func (c Config) TableNames(topicID int64) []string {
	id := strconv.FormatInt(topicID, 10)
	out := make([]string, len(c.Tables))
	for i, tpl := range c.Tables {
		out[i] = strings.Replace(tpl, idPlaceholder, id, 1)
	}
	return out
}

// topicOf returns the topic whose result table is called name, if name
// matches one of the templates with a positive decimal id in place of {id}.
func (c Config) topicOf(name string) (int64, bool) {
	for _, tpl := range c.Tables {
		prefix, suffix, _ := strings.Cut(tpl, idPlaceholder)
		if len(name) <= len(prefix)+len(suffix) || !strings.HasPrefix(name, prefix) || !strings.HasSuffix(name, suffix) {
			continue
		}
		digits := name[len(prefix) : len(name)-len(suffix)]
		if digits[0] == '0' || strings.Trim(digits, "0123456789") != "" {
			continue
		}
		if id, err := strconv.ParseInt(digits, 10, 64); err == nil && id > 0 {
			return id, true
		}
	}
	return 0, false
}
