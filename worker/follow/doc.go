// Package follow is the change-driven request: a follower reads the row
// changes of configured source tables from a binary log over the
// replication protocol (go-mysql's BinlogSyncer, by MariaDB GTID), turns
// each changed row into topic ids (a topic column, or a key column and a
// lookup query), and requests those topics through the queue's request
// statements, so a merged request never lowers a full scope or delays a
// date.
//
// Exactly once is not attempted; nothing is missed. The follower commits
// the requests of the changes it read together with its position (the
// source's GTID set after the last transaction included) in one
// transaction on the primary (queue.FollowCommit). A follower killed
// before a commit reads those changes again from the saved position; a
// request repeated merges with the pending one.
//
// There is no controller. Followers of one name share the position and a
// named lock on the primary (GET_LOCK on a session of their own): the
// holder follows, the others poll for the lock. When the holder dies its
// session ends, the server frees the lock, and a standby takes it within a
// poll interval and resumes from the saved position. Every commit is
// fenced by the lock (IS_USED_LOCK of the holder's session inside the
// transaction), so a follower that lost its lock saves nothing.
//
// The source is the local replica by default (log_slave_updates puts the
// primary's changes in its binary log with the primary's GTIDs), so the
// primary serves no binlog reader. Row images must hold the topic or key
// column (binlog_format=ROW, binlog_row_image FULL or NOBLOB), and with
// binlog_row_metadata=FULL each table map names its columns, so a DDL on a
// followed table never shifts a column under the follower; without it the
// columns are read from information_schema and a row whose column count
// differs from the table's stops the follower (ErrUnmapped).
package follow
