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
