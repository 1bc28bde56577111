// Package monitor is what nonqueue knows about its replicas and its own
// runs. It has three roles, all on tables and replication state rather than
// on the topic table (which is queue's):
//
//  1. The lag gate (protocol 6): measure replica lag precisely, say whether
//     a replica is healthy enough to claim at all (Heartbeat, Gate), and
//     prove freshness for one topic (WaitForPrimary, WaitForPosition);
//     CheckLocalDomain refuses a replica that shares the primary's GTID
//     domain. Beside it, the primary throttle (Throttle: Threads_running
//     and a freno-style URL, sampled by a collector like the gate's) and
//     PublishSlots (a fleet-wide cap on publishes, as named locks on the
//     primary) make the fleet yield to a busy primary.
//  2. The run history and the instance registry: History records every
//     claim's outcome and where its time went (RecordRun, RecordRuns, and
//     RunWriter, which batches them off the worker's path), and each
//     instance's state (Register, SetState). These writes are best-effort
//     records: a failure is returned for logging and never changes a topic.
//  3. The read models over those tables and over replicas, for the ops
//     dashboard, `nonqueue status` and the metrics: Run, TopicRuns,
//     RecentRuns, LastRuns, Failures, Throughput, Phases, Instances,
//     Writers and ReadReplica. The views themselves live in the
//     subpackages monitor/dashboard and monitor/metrics, the only parts of
//     monitor that also read queue; monitor/prometheus and monitor/grafana
//     hold the alerting rules and the dashboard built on the metrics.
//
// The three tables (run, instance, heartbeat in the meta schema) are
// defined once, with their outcome and state values, in internal/meta;
// queue creates them with the rest of the schema and records reaped and
// operator-released runs in the same history.
//
// # Lag gate
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
