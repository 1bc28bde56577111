// Package worker is the processing cycle of nonqueue: N instances per
// replica host, each looping gate → claim → causal wait → procedure →
// transfer and publish → finish, with no controller. It orders the steps
// and decides what a failure means; the SQL lives in queue, monitor, procs
// and transfer. With Config.Pipeline (the default), transfer, publish and
// finish of a run go on in the background while the instance claims and
// computes its next topic, one shipment in flight per instance.
//
// Every instance of a process shares one lag heartbeat writer, one lag
// gate, one reaper, one SSH connection and the sweep of what crashes left
// (staging tables on the primary, result tables on the replica), at start
// and every 10 minutes. Shutdown has two stages: the soft context (first
// SIGTERM) stops new claims at once; the hard context
// (grace period over, or a second signal) cancels runs in flight, whose
// claims are then released so nothing stays marked running.
package worker
