#!/usr/bin/env bash
# seed-worker.sh: the original worker loop, rebuilt from the "Processing
# Cycle" and "Code" slides of the seed presentation, as the baseline the
# benchmark (bench/, `make bench`) measures nonqueue against. It is kept as
# the slides have it, defects included; do not use it as an example:
#   * it claims a topic by marking it, sleeping a short random time and
#     reading the mark back: no compare-and-set, so two instances can both
#     believe they own a topic and compute it twice;
#   * it copies the MyISAM files with scp over the live tables on the
#     primary, then flushes them there;
#   * it waits for replication by Seconds_Behind_Master, which says nothing
#     about whether the replica has the request it is about to act on;
#   * a failed copy leaves the topic marked running for good.
#
# Usage: seed-worker.sh CONF INSTANCE
#
# CONF is a shell file that sets:
#   MYSQL                  client command for the local replica (add
#                          --init-command='SET sql_log_bin=0' through an option
#                          file on a replica with gtid_strict_mode)
#   MYSQL_MASTER           client command for the primary
#   TABLE_SOURCE           the replica's datadir/influencer
#   TABLE_MASTER_PUSH_LOC  scp target, user@host:/primary-datadir/influencer
#   SCP_OPTS               extra scp options (-P PORT -i KEY ...)
#   INFLUENCER_LOG         prefix of the per-call logs (TOPIC.INSTANCE.log)
#   MINPRIORITY            lowest influencerPriority this instance takes
#   SHORT_SLEEP            the "short random time" before the re-check, in
#                          seconds (0: none)
#   IDLE_SLEEP             seconds to sleep when idle or after losing a topic
#   EXIT_WHEN_EMPTY        1: stop when no topic is due (for benchmarks)
# INSTANCE is this instance's number on the replica (1..99).

source "$1"
INSTANCE=$2

# --- main loop: stop between topics on SIGTERM ---
trap 'STOP=1' TERM
STOP=0

# --- who am I? server_id 1000+N is node N; the instance id is unique over
# every node as long as each runs fewer than 100 instances.
NODEID_QUERY="select @@server_id-1000;"
NODEID=`$MYSQL -N -e"$NODEID_QUERY"`
UNIQUE_INSTANCEID=$((NODEID*100+INSTANCE))

# --- who's next, the SQL: the highest priority, then the earliest recalc
# date, of the topics requested, due, active and not running.
NEEDY_TP_QUERY="
select topicFilterId,influencerRecalcReqd,unix_timestamp(influencerRecalcDate) RecalcDate
from app.TopicFilter
where influencerRecalcReqd>0 and influencerRunning=0 and influencerRecalcDate<=now()
and active in (1,2) and influencerPriority>=$MINPRIORITY
order by influencerPriority desc, influencerRecalcDate asc, topicFilterId limit 1;"

# whos_next sets TPID, RECALC_SCOPE and RECALC_DATE from the primary; TPID
# is empty when nothing is due.
whos_next() {
  NEEDY=`$MYSQL_MASTER -N -e"$NEEDY_TP_QUERY" 2>/tmp/mysql.err`
  set -- $NEEDY
  TPID=$1; RECALC_SCOPE=$2; RECALC_DATE=$3
}

# replication_ok: "replication stopped? sleep 10 min; replication behind?
# sleep 1 min" -- then give the topic up (someone else likely has it).
replication_ok() {
  REPLICATION_DELAY=`$MYSQL -e'show slave status \G' | grep "Seconds_Behind_Master" | cut -f2 -d':' | tr -d ' '`
  if [ "$REPLICATION_DELAY" = "NULL" ]; then sleep 600; return 1; fi
  if [ "$REPLICATION_DELAY" -gt 0 ]; then sleep 60; return 1; fi
  return 0
}

# still_mine: "mark Topic with my ID, sleep short random time, Topic still
# has my ID?" -- playing nice with others, without a compare-and-set.
still_mine() {
  $MYSQL_MASTER -e"update app.TopicFilter set influencerRunning=$UNIQUE_INSTANCEID where topicFilterId=$TPID"
  if [ "$SHORT_SLEEP" != 0 ]; then
    sleep $(awk -v s=$SHORT_SLEEP -v r=$RANDOM 'BEGIN{printf "%.3f", s*r/32767}')
  fi
  OWNER=`$MYSQL_MASTER -N -e"select influencerRunning from app.TopicFilter where topicFilterId=$TPID"`
  [ "$OWNER" = "$UNIQUE_INSTANCEID" ]
}

# call_proc: run the stored procedure on the replica; success is a SUMMARY
# on the last line of its output.
call_proc() {
  RUN_LOG=${INFLUENCER_LOG}${TPID}.${INSTANCE}.log
  $MYSQL -e"call influencer.proc(${TPID},${RECALC_SCOPE})" >$RUN_LOG 2>&1
  RUN_SUCCESS=`tail -1 $RUN_LOG | grep -c SUMMARY`
  [ $RUN_SUCCESS -eq 1 ]
}

# send_back: flush the tables locally, copy their files over the primary's,
# flush them there, mark the topic done, drop the local copies.
send_back() {
  $MYSQL -e"use influencer; flush tables Dynamics_${TPID}, Post_${TPID};"
  if scp $SCP_OPTS -p -B ${TABLE_SOURCE}/Dynamics_${TPID}.* ${TABLE_MASTER_PUSH_LOC} 2>&1 && \
     scp $SCP_OPTS -p -B ${TABLE_SOURCE}/Post_${TPID}.* ${TABLE_MASTER_PUSH_LOC} 2>&1; then
    $MYSQL_MASTER -e"flush tables influencer.Dynamics_${TPID}, influencer.Post_${TPID}"
    $MYSQL_MASTER -e"update app.TopicFilter set influencerRunning=0, influencerRecalcReqd=0 where topicFilterId=$TPID"
    $MYSQL -e"set sql_log_bin=0; drop table influencer.Dynamics_${TPID}, influencer.Post_${TPID}"
  else
    echo "copy failed for $TPID" >&2
  fi
}

while [ $STOP -eq 0 ]; do
  # get next Topic to do; is there any? no: sleep
  whos_next
  if [ -z "$TPID" ]; then
    [ "$EXIT_WHEN_EMPTY" = 1 ] && break
    sleep $IDLE_SLEEP
    continue
  fi
  # inner loop: one topic, left with TPID= at every "begin again"
  while [ ! -z "${TPID}" -a $STOP -eq 0 ]; do
    if ! replication_ok; then TPID=; break; fi
    if ! still_mine; then sleep $IDLE_SLEEP; TPID=; break; fi
    if call_proc; then
      send_back
    else
      echo "proc failed for $TPID" >&2
      sleep $IDLE_SLEEP
    fi
    TPID=
  done
done

# --- was I killed? ---
if [ $STOP -eq 1 ]; then
  echo " ---- Script stopped by Kill (TERM signal) ---- "
fi
exit 0
