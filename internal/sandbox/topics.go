package sandbox

// MappedTopicsTOML is the [topics] configuration that maps the original
// topic table, app.TopicFilter (as sql/demo and bench/sql create it), column
// by column, with the run history in the nonqueue schema. `nonqueue demo`
// and the benchmark both write it into each worker's configuration, so the
// two run nonqueue against the same mapping.
const MappedTopicsTOML = `# The original topic table, mapped as it is.
[topics]
schema = "app"
table = "TopicFilter"
mapped = true
active_values = [1, 2]
meta_schema = "nonqueue"
lease = "30s"
max_attempts = 5

[topics.columns]
id = "topicFilterId"
required = "influencerRecalcReqd"
due = "influencerRecalcDate"
priority = "influencerPriority"
running = "influencerRunning"
active = "active"
`

// ConnectionsTOML is the [primary] and [replica] configuration of one
// replica's worker, as a text/template fragment over .SB (the *Sandbox)
// and .Replica (one of its servers). `sandbox up`, `nonqueue demo` and the
// benchmark all write it, so they connect the same way.
const ConnectionsTOML = `[primary]
host = "{{.SB.Primary.Host}}"
port = {{.SB.Primary.Port}}
user = "{{.SB.User}}"
password = "{{.SB.Password}}"

[replica]
host = "{{.Replica.Host}}"
port = {{.Replica.Port}}
user = "{{.SB.User}}"
password = "{{.SB.Password}}"
`

// SSHTOML is the [ssh] configuration of a worker shipping to the sandbox's
// primary, as a text/template fragment over .SB, written by the same three.
const SSHTOML = `[ssh]
host = "{{.SB.SSH.Host}}"
port = {{.SB.SSH.Port}}
user = "{{.SB.SSH.User}}"
key_file = "{{.SB.SSH.KeyFile}}"
known_hosts = "{{.SB.SSH.KnownHosts}}"
datadir = "{{.SB.Primary.Datadir}}"
`
