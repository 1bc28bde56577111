// Package monitor watches replication for the worker: it measures replica
// lag precisely, keeps the lag gate of protocol 6, and waits for a replica
// to reach the primary's GTID position before a topic's procedure runs.
//
// Lag is measured the way gh-ost and pt-heartbeat do it, never from
// Seconds_Behind_Master (whole seconds, 0 while the IO thread is behind,
// NULL when stopped). A Heartbeat writes this process's clock into one row
// of <schema>.heartbeat on the primary a few times a second; the row
// replicates like any other write; a Gate reads it back on the local
// replica and computes lag = now − value read. Both ends use the same
// clock, so there is no skew, and a heartbeat that stops advancing on the
// replica makes the measured lag grow, which is what a stuck replica must
// look like.
//
// The Gate is shaped like gh-ost's throttler: a collector goroutine samples
// the replica every SampleInterval and stores the sample; Check only reads
// the last sample, so deciding whether to claim costs no query. The gate is
// closed until a first sample exists and when the sample is too old to be
// trusted: it fails closed.
//
// The gate says whether the replica is healthy enough to claim at all;
// WaitForPrimary then proves freshness for one topic: after the claim it
// reads the primary's GTID position and blocks on the replica until that
// position has been applied, so the procedure sees every write committed
// before the claim.
package monitor
