#!/usr/bin/env bash
# Nsight Compute profiles of the Hopper kernels in ONE device call (fourth session's method).
#
#   bash kernels/dev/bwd_h200.sh prepare          # here: target/h200
#   run(command="bash kernels/dev/ncu_h200.sh [NAME]", carry=["target/h200", "kernels/dev/cubin"])
#
# Profiles one launch (after two warm-up launches, ncu at base clocks) of the forward at D=128
# and D=64 and of the backward dK/dV kernel at D=128, N=16k, dense, bf16 — with the experiment
# cubins (and host binaries, if it brings them) of kernels/dev/cubin/NAME when NAME is given.
# Writes to $OUT, per profile, the details page (.details.txt: speed of light, pipes, warp
# states, occupancy) and the per-SASS-instruction export (.sass.csv, for
# kernels/dev/ncu_summary.py here); prints the headline metrics and the summary. About 10 s per
# profile.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sa-ncu-out}
mkdir -p "$OUT"
# shellcheck source=step.sh
. kernels/dev/step.sh
dir=$(experiment_dir "${1:-}")
need_cuda_tool NCU ncu
"$NCU" --version | tail -1
profile() {  # NAME KERNEL_REGEX PASS D
    TAIL=2 step "ncu.$1" 170 env SIGMOID_ATTN_CUDA_CUBIN_DIR="$dir" "$NCU" --set full --import-source no \
        -k "regex:$2" --launch-skip 2 -c 1 -o "/tmp/$1" "$(host_bin "$dir" bench_table)" --backend cuda \
        --pass "$3" --dtype bf16 --d "$4" --n 16384 --pad 0 --reps 3 --no-check --warmup-ms 0
    "$NCU" --import "/tmp/$1.ncu-rep" --page details >"$OUT/$1.details.txt" 2>&1
    "$NCU" --import "/tmp/$1.ncu-rep" --page source --csv --print-source sass >"$OUT/$1.sass.csv" 2>&1
    grep -E "Duration|Compute \(SM\) Throughput|Issue Slots Busy|No Eligible|Eligible Warps|L2 Cache Throughput|DRAM Throughput|Mem Busy|Max Bandwidth|L2 Hit Rate|Mem Pipes Busy" "$OUT/$1.details.txt" | head -14
    python3 kernels/dev/ncu_summary.py "$OUT/$1.sass.csv" 8
}
profile fwd128 sigmoid_attn_fwd fwd 128
profile fwd64 sigmoid_attn_fwd fwd 64
profile bwd128 sigmoid_attn_bwd_dkdv bwd 128
