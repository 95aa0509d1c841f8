# Sourced by the run-*-tests.sh scripts: the end of a suite, the same for all of them.
#
#   settle_counts NAME RC COUNTS_FILE START_SECONDS
#
# Prints the suite's exit status and time, writes "0 1 0" to COUNTS_FILE if the suite wrote no
# counts (it did not finish), reads the counts into $passed $failed $skipped, and sets
# $rc to the suite's status, non-zero also when any test failed.
settle_counts() {
  local name=$1 counts=$3
  rc=$2
  echo "$name: exit status $rc after $(( $(date +%s) - $4 )) s"
  if [ ! -s "$counts" ]; then
    echo "$name: the suite did not finish (no counts written)" >&2
    echo "0 1 0" > "$counts"
    [ "$rc" -ne 0 ] || rc=1
  fi
  read -r passed failed skipped < "$counts"
  if [ "$rc" -eq 0 ] && [ "$failed" -ne 0 ]; then rc=1; fi
}
