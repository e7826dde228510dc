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

# cuda_tool NAME: the path of a CUDA command-line tool (ncu, compute-sanitizer) from PATH or
# /usr/local/cuda*/bin, or nothing.
cuda_tool() {
    command -v "$1" || ls /usr/local/cuda*/bin/"$1" 2>/dev/null | head -1
}

# need_cuda_tool VAR NAME: sets VAR to cuda_tool NAME's path, or exits (status 2) without it.
need_cuda_tool() {
    local path
    path=$(cuda_tool "$2")
    [ -n "$path" ] || { echo "$2 not found"; exit 2; }
    printf -v "$1" '%s' "$path"
}

# experiment_dir [NAME]: kernels/dev/cubin/NAME, or nothing without NAME (the shipped build).
experiment_dir() {
    if [ -n "${1:-}" ]; then echo "kernels/dev/cubin/$1"; fi
}

# host_bin DIR NAME: the host binary NAME (bench_table, cuda_tests) that the experiment
# directory DIR brings, itself or through its `host` file (a directory name), else
# target/h200's. DIR may be empty (the shipped build).
host_bin() {
    local dir=$1 name=$2
    [ -f "$dir/host" ] && dir=$(cat "$dir/host")
    if [ -n "$dir" ] && [ -x "$dir/$name" ]; then echo "$dir/$name"; else echo "target/h200/$name"; fi
}
