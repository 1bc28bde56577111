// Package transfer ships a topic's result tables from the replica a worker
// runs on to the primary, and publishes them there atomically
// (docs/design.md, "Transfer and its deadlines" and "Publish").
//
// The procedure writes MyISAM tables (such as Dynamics_<id>) on the local
// replica. A MyISAM table is its three files (.frm, .MYD, .MYI), and the
// .frm does not record the table's name, so files copied under another name
// form a table of that name. Ship uses this:
//
//   - on the replica, in a pinned session with sql_log_bin=0, FLUSH TABLES
//     … FOR EXPORT closes the tables, makes their files consistent and holds
//     a read lock (MariaDB 10.11 accepts it for MyISAM: checked on the
//     sandbox);
//   - the files stream from the local disk over one shared SFTP session
//     into the primary's datadir as nqtmp_<claim token>_<table>, data files
//     first and the .frm last, so a copy cut short never forms a table;
//     every file is then fsynced on the primary's host (fsync@openssh.com,
//     unless Config.NoSync), so a crash of that host cannot leave a live
//     table whose data never reached its disk; sizes are checked and the
//     copy verified (Config.Verify: each file read
//     back and compared, or cksum on both hosts for big files; or CHECKSUM
//     TABLE … EXTENDED in the locked session while the files stream), then
//     the replica is unlocked;
//   - on the primary, in a pinned session with sql_log_bin=0 (nothing of a
//     publish may replicate back to the replicas, whose tables are their
//     own), the server must open the staging tables from their files (with
//     VerifyChecksum: and CHECKSUM TABLE must match the replica's);
//   - under GET_LOCK(LockName), the lock the reaper also takes, the Fence
//     callback re-checks the claim, then one RENAME TABLE moves each live
//     table aside and each staging table in, the old tables are dropped,
//     and the Commit callback marks the topic finished before the lock is
//     released.
//
// RENAME TABLE of several pairs is one atomic step under the server's
// metadata locks: a reader of a live table sees the old or the new table,
// never neither and never a mix. A RENAME waiting for a table's metadata
// lock (held by a long query or an open transaction) makes every later
// query of that table queue behind it, so it waits at most Config.LockWait,
// gives way, and is tried again after a pause (gh-ost bounds its cut-over
// the same way); after Config.SwapTries tries the publish fails with
// ErrTableBusy. Drops on the primary are bounded alike; a Dropper retries
// the ones that fail, for a while (see Dropper). Any failure before the swap removes the
// staging tables and files, so a half-copied table never goes live; what a
// crash leaves behind carries a reserved prefix (nqtmp_, nqold_) and is
// removed by CleanupPrimary; result tables a crash left on the replica are
// removed by CleanupReplica.
//
// Nothing waits on the SSH connection without a bound: keepalives close a
// connection whose server stops answering, and every SFTP step and remote
// command has a deadline (see SSHConfig); an abandoned transfer fails with
// ErrStalled, nothing is published, and the next call dials again.
//
// The SSH host key is always verified against a known_hosts file; there is
// no option to skip it.
package transfer
