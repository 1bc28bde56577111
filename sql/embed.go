// Package sqlfiles carries the example SQL inside the binaries, so
// `nonqueue demo` and the benchmark harness work from any directory, not
// only from the repository root. The files stay plain .sql next to this
// one, to read and to load by hand with the mariadb client.
package sqlfiles

import "embed"

// Demo is sql/demo: tables.sql and proc.sql (the topic table, the source
// rows and the influencer procedure, shared with the benchmark), and
// primary.sql and replica.sql (the demo's Blackhole trigger and
// FederatedX settings).
//
//go:embed demo/*.sql
var Demo embed.FS

// CountCallMarker is the line of demo/proc.sql that the benchmark
// replaces with an insert into its call counter; for the demo it is a
// comment and does nothing.
const CountCallMarker = "-- nonqueue:count-call"
