#!/usr/bin/env bash
# Verifies the Hopper forward (kernels/fwd_sm90.cu) on an H200 in ONE device call: the raw
# entry points, the conformance suite, compute-sanitizer on the forward conformance cases
# (padded, packed, causal, GQA included) and the standard forward workload, as an A/B/A
# against target/h200/bench_table_base when that binary is there (built at another commit).
#
#   bash kernels/dev/bwd_h200.sh prepare   # here: builds target/h200 (shared with this script)
#   bash kernels/dev/fwd_h200.sh           # on the H200 (carry target/h200); logs go to $OUT
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=target/h200
OUT=${OUT:-/tmp/sa-fwd-out}
mkdir -p "$OUT"

# shellcheck source=step.sh
. kernels/dev/step.sh
TAIL=12

nvidia-smi -L
sanitizer=$(cuda_tool compute-sanitizer)
step raw 60 "$BIN/cuda_tests" --test-threads=1 --nocapture raw::
step conformance 120 "$BIN/cuda_tests" --test-threads=1 --nocapture conformance
if [ -n "$sanitizer" ]; then
    for tool in memcheck racecheck synccheck; do
        SIGMOID_ATTN_CUDA_BACKWARD=0 step "$tool" 150 "$sanitizer" --tool "$tool" "$BIN/cuda_tests" \
            --test-threads=1 --nocapture conformance::forward_bf16
    done
fi
bench() {
    TAIL=16 step "$1" 90 "$2" --backend cuda --pass fwd --dtype bf16 --reps 20 ${3:-} --json "$OUT/$1.json"
}
bench bench_fwd "$BIN/bench_table"
if [ -x "$BIN/bench_table_base" ]; then
    # AB_OPTS picks the A/B's rows (default: dense).
    bench bench_fwd_base "$BIN/bench_table_base" "${AB_OPTS:---pad 0 --no-check}"
    bench bench_fwd_again "$BIN/bench_table" "${AB_OPTS:---pad 0 --no-check}"
fi
grep -h "passed\|FAILED\|panicked\|ERROR SUMMARY\|RACECHECK SUMMARY" "$OUT"/*.log
