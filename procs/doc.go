// Package procs calls a topic's stored procedure on the local replica and
// decides whether the run succeeded.
//
// A run happens on one pinned connection with sql_log_bin=0: a worker's
// writes on a replica must never reach the replica's binary log (with
// gtid_strict_mode a local GTID breaks replication with "out-of-order
// sequence number"). Every result set the
// procedure returns is written to the run's log file, header and rows tab
// separated, followed by SHOW WARNINGS and a last line stating the outcome,
// so an operator can read what a run printed, as with the original loop's
// output capture. A log file is rewritten in place by the next run given
// the same path (the worker gives one per topic), and a failed run's log
// is kept aside as <name>.failed.log.
//
// Success means the CALL returned without a SQL error and, when a Marker is
// configured, a cell of the last result set equals or contains it (the
// original looked for "SUMMARY" in the last line of output). A run that
// ends without the marker is ErrFailed.
//
// A run is bounded by Config.Timeout and by the caller's context. When
// either ends, the statement is really stopped on the server with KILL
// QUERY from another connection (closing the client socket alone leaves the
// server running the procedure), and the run's connection is discarded so
// no session state leaks into the pool.
package procs
