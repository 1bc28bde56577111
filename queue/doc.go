// Package queue is the topic table, the "non-queue queue": one row per
// topic on the primary, and every operation the protocols of docs/design.md
// run on it.
//
// Claim is a single compare-and-set UPDATE that picks the most urgent due
// topic in index order and hands its id back through the session's
// LAST_INSERT_ID, read on the same connection, so concurrent claimers never
// both win and never sort the table. Every later write about a claimed topic (Heartbeat, Release,
// Finish, Reap) is fenced by the instance id and the claim token the claim
// returned: an instance whose claim was taken back changes nothing.
//
// Finish clears the request only when the request version is the one the
// claim saw, so a re-request made during a run is kept and runs again;
// Release and the Reaper then neither delay it past its date nor park the
// topic. Request bumps the version itself; the request trigger
// (Config.RequestTrigger) bumps it for the application's own plain UPDATE
// of required or due, so that kind of re-request is kept too.
// The Reaper takes back claims whose lease ran out, records the rescue in
// the run history, counts it as an attempt, and makes the topic due again;
// a topic that keeps failing is parked after Config.MaxAttempts until it is
// requested again.
//
// The table may be nonqueue's own (see sql/schema.sql) or an existing one
// such as the original TopicFilter, mapped column by column through
// Columns; Config.DDL adds only what the protocols need.
package queue
