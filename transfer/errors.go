package transfer

import "errors"

// Sentinel errors of shipping and publishing. Errors returned by this
// package wrap them (test with errors.Is) together with what was attempted.
var (
	// ErrConfig is wrapped by every *ConfigError.
	ErrConfig = errors.New("invalid transfer configuration")
	// ErrHostKey: the primary's SSH host key is not in known_hosts, differs
	// from the recorded one, is revoked, or known_hosts cannot be read.
	// Nothing was sent. The message says which host, which file and what to
	// do; retrying does not help until an operator acts.
	ErrHostKey = errors.New("ssh host key not verified")
	// ErrFenced: the Fence check under the publish lock said the claim is no
	// longer ours. Nothing was published and the staging tables were
	// removed; the caller must stop working on the topic.
	ErrFenced = errors.New("claim fenced off; nothing published")
	// ErrChecksumMismatch: CHECKSUM TABLE of a shipped table on the primary
	// differs from the replica's. Nothing was published.
	ErrChecksumMismatch = errors.New("checksum of shipped table differs from the replica's")
	// ErrLockTimeout: the per-topic publish lock was not free within
	// ShipParams.LockTimeout (another publisher or the reaper holds it).
	// Nothing was published.
	ErrLockTimeout = errors.New("publish lock not acquired in time")
	// ErrTableBusy: a long query, an open transaction or a backup on the
	// primary held a live result table through every try of the swap (Config.SwapTries,
	// each waiting Config.LockWait for the metadata lock). Nothing was
	// published and the staging tables were removed; readers of the old
	// table saw no error. The run may be retried later, as the worker does
	// (released with its back-off); the message says which tables and for
	// how long.
	ErrTableBusy = errors.New("result table busy")
	// ErrTableMissing: a result table does not exist on the replica (the
	// procedure did not create it). Nothing was shipped.
	ErrTableMissing = errors.New("result table missing on the replica")
	// ErrNotMyISAM: a result table is not a plain (non-partitioned) MyISAM
	// table, whose files alone make up the table. Nothing was shipped.
	ErrNotMyISAM = errors.New("result table is not a plain MyISAM table")
	// ErrCommit: the tables were published (they are live) but the Commit
	// callback failed. Ship returns its Shipment with this error.
	ErrCommit = errors.New("published, but the commit callback failed")
	// ErrParams: ShipParams are incomplete or invalid (a caller bug).
	ErrParams = errors.New("invalid ship parameters")
	// ErrStalled: a transfer step made no progress within its bound
	// (Config.SSH.StallTimeout), or the server stopped answering
	// keepalives; the SSH connection was closed and the transfer
	// abandoned. Nothing was published. The next call dials again.
	ErrStalled = errors.New("ssh transfer stalled; connection abandoned")
	// ErrClosed: the Shipper was closed.
	ErrClosed = errors.New("transfer: shipper closed")
	// ErrResultsBusy: the topic's replica lock is held by another session
	// (a run in progress, or an older run's session LockReplica could not
	// end). Nothing was dropped or exported.
	ErrResultsBusy = errors.New("result tables busy on the replica")
	// ErrReplicaSessionClosed: a ReplicaSession was used after Close (its
	// lock is gone, so nothing was done).
	ErrReplicaSessionClosed = errors.New("replica session closed")
)
