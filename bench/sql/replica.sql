-- nonqueue bench, replica side. Run by the harness as root on each replica
-- after primary.sql has replicated. Nothing here may replicate or enter the
-- replica's own GTID history.
SET SESSION sql_log_bin = 0;

-- One row per procedure call on this replica. It never replicates: the
-- procedures' sessions (the seed loop's init-command, nonqueue's worker, the
-- harness's ceiling connections) all run with sql_log_bin=0. The harness sums
-- it over the replicas to find topics computed more than once.
CREATE TABLE IF NOT EXISTS influencer.calls (
  seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
  topic_id BIGINT NOT NULL,
  KEY (topic_id)
) ENGINE=InnoDB;
