// Package worker is the processing cycle of nonqueue: N instances per
// replica host, each looping gate → claim → causal wait → procedure →
// transfer and publish → finish, with no controller. It orders the steps
// and decides what a failure means; the SQL lives in queue, monitor, procs
// and transfer.
//
// Every instance of a process shares one lag heartbeat writer, one lag
// gate, one reaper, one SSH connection and the sweep of what crashes left
// (staging tables on the primary, result tables on the replica), at start
// and every 10 minutes. Shutdown has two stages: the soft context (first
// SIGTERM) stops new claims at once; the hard context
// (grace period over, or a second signal) cancels runs in flight, whose
// claims are then released so nothing stays marked running.
package worker
