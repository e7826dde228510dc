#!/usr/bin/env bash
# Verifies the Hopper backward (kernels/bwd_sm90.cu) on an H200 in ONE device call.
# See kernels/dev/README.md for what each step shows and what to do with the results.
#
#   bash kernels/dev/bwd_h200.sh prepare   # here, no GPU: build + copy binaries to target/h200
#   bash kernels/dev/bwd_h200.sh device    # on the H200 (carry target/h200); logs go to $OUT
set -uo pipefail
cd "$(dirname "$0")/../.."
BIN=target/h200

prepare() {
    set -e
    python3 kernels/build_cubins.py --check >/dev/null
    local exe
    exe=$(cargo test --release --no-run --test cuda 2>&1 | sed -n 's/.*Executable tests\/cuda.rs (\(.*\))/\1/p')
    cargo build --release --example bench_table
    mkdir -p "$BIN"
    cp "$exe" "$BIN/cuda_tests"
    cp target/release/examples/bench_table "$BIN/bench_table"
    ls -la "$BIN"
    echo "now: run(command=\"bash kernels/dev/bwd_h200.sh device\", carry=[\"$BIN\"], timeout_s=600)"
}

# shellcheck source=step.sh
. kernels/dev/step.sh

device() {
    OUT=${OUT:-/tmp/sa-bwd-out}
    mkdir -p "$OUT"
    nvidia-smi -L
    local sanitizer
    sanitizer=$(cuda_tool compute-sanitizer)
    # 1. The raw-pointer tests: deterministic mode bitwise repeatable (atomic mode close to it),
    #    forward_raw and backward_raw on a borrowed stream equal to forward/backward (fast;
    #    first, since a hang or a crash here says the most with the least time spent).
    step deterministic 60 "$BIN/cuda_tests" --test-threads=1 --nocapture raw::
    if [ "$LAST_RC" = 137 ]; then
        # A hang: the rest would hang too. Keep the device time; check only the forward.
        SIGMOID_ATTN_CUDA_BACKWARD=0 step conformance_fwd 120 "$BIN/cuda_tests" --test-threads=1 --nocapture conformance
        return
    fi
    # 2. One padded case under compute-sanitizer (both dQ modes).
    if [ -n "$sanitizer" ]; then
        step memcheck 120 "$sanitizer" --tool memcheck "$BIN/cuda_tests" --test-threads=1 --nocapture backward_padded_case
        step racecheck 90 "$sanitizer" --tool racecheck "$BIN/cuda_tests" --test-threads=1 --nocapture backward_padded_case
    else
        echo "=== compute-sanitizer not found; skipped"
    fi
    # 3. The conformance suite (forward and backward, f16 and bf16; f32 is declined).
    step conformance 120 "$BIN/cuda_tests" --test-threads=1 --nocapture conformance
    # 4. The standard backward workload (atomic dQ mode, the default), then deterministic mode.
    step bench_bwd 120 "$BIN/bench_table" --backend cuda --pass bwd --dtype bf16 --reps 10 --json "$OUT/bwd.json"
    # A/B: a bench_table built at another commit (copied by hand to $BIN/bench_table_base)
    # runs right after, on the same GPU in the same call.
    if [ -x "$BIN/bench_table_base" ]; then
        step bench_bwd_base 120 "$BIN/bench_table_base" --backend cuda --pass bwd --dtype bf16 --reps 10 --pad 0 --no-check --json "$OUT/bwd_base.json"
    fi
    SIGMOID_ATTN_CUDA_DETERMINISTIC=1 step bench_bwd_det 60 "$BIN/bench_table" --backend cuda --pass bwd --dtype bf16 --reps 5 --n 4096,16384 --pad 0 --no-check --json "$OUT/bwd_det.json"
    grep -h "passed\|FAILED\|panicked\|ERROR SUMMARY\|RACECHECK SUMMARY" "$OUT"/*.log
}

case "${1:-}" in
    prepare) prepare ;;
    device) device ;;
    *) echo "usage: $0 prepare|device"; exit 2 ;;
esac
