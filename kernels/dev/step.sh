# Sourced by the device scripts of kernels/dev.
#
# step NAME SECONDS CMD...: runs CMD with a hard time limit (a deadlocked kernel must not eat
# the whole device call), logs to $OUT/NAME.log, prints the last $TAIL lines (default 40) and
# leaves the exit status in LAST_RC.
step() {
    local name=$1 secs=$2
    shift 2
    echo "=== $name: $*"
    local t0=$SECONDS
    timeout -s KILL "$secs" "$@" >"$OUT/$name.log" 2>&1
    LAST_RC=$?
    echo "=== $name: exit $LAST_RC after $((SECONDS - t0)) s"
    tail -n "${TAIL:-40}" "$OUT/$name.log"
}
