#!/usr/bin/env bash
# Per-kernel durations of the Hopper forward and backward on an H200, at boost clocks, in ONE
# device call: where the backward's time goes besides the dK/dV kernel (dq_convert, dbias, and
# by difference the workspace memset), and how a kernel's time scales with N at a fixed token
# count (a per-CTA prologue/epilogue shows as time that does not scale with the steps per CTA).
#
#   bash kernels/dev/bwd_h200.sh prepare
#   run(command="bash kernels/dev/kernel_times.sh [NAME]", carry=["target/h200", "kernels/dev/cubin"])
#
# For every D in {64, 128} and N in {1k, 4k, 16k} (dense, bf16, standard workload): Nsight
# Compute's gpu__time_duration of each kernel (`--clock-control none`: the clocks the GPU picks,
# as in bench_table; the last of two calls), against bench_table's own median for the pass
# (kernel_times.py prints the table). With NAME, the experiment cubins of kernels/dev/cubin/NAME
# and the host binaries it brings (ab_h200.sh: `host_bin`).
# Logs in $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sa-times-out}
mkdir -p "$OUT"
# shellcheck source=step.sh
. kernels/dev/step.sh
dir=$(experiment_dir "${1:-}")
need_cuda_tool NCU ncu
bench_table=$(host_bin "$dir" bench_table)
# KT_D, KT_N and KT_PASS narrow the sweep (e.g. KT_D=128 KT_PASS=bwd: three shapes, ~1 min).
for d in ${KT_D:-128 64}; do
    for n in ${KT_N:-1024 4096 16384}; do
        for pass in ${KT_PASS:-fwd bwd}; do
            name=$pass.d$d.n$n
            # Every launch of two reps (the first warms up): the last row per kernel is the one
            # to read. The backward pass launches dkdv, dq_convert and dbias.
            TAIL=0 step "$name" 120 env SIGMOID_ATTN_CUDA_CUBIN_DIR="$dir" "$NCU" --clock-control none \
                --metrics gpu__time_duration.sum --print-units base -k regex:sigmoid_attn --csv \
                --page raw "$bench_table" --backend cuda --pass "$pass" --dtype bf16 \
                --d "$d" --n "$n" --pad 0 --reps 2 --no-check --warmup-ms 0
            # The SM clock and the board power while bench_table runs (sampled every 50 ms): a
            # kernel ncu launches alone may run at a higher clock than back-to-back launches.
            nvidia-smi --query-gpu=clocks.sm,power.draw --format=csv,noheader,nounits -lms 50 \
                >"$OUT/$name.bench.clocks" 2>/dev/null &
            smi=$!
            TAIL=0 step "$name.bench" 60 env SIGMOID_ATTN_CUDA_CUBIN_DIR="$dir" "$bench_table" \
                --backend cuda --pass "$pass" --dtype bf16 --d "$d" --n "$n" --pad 0 --reps 10 --no-check
            kill "$smi" 2>/dev/null
        done
    done
done
# One line per (pass, D, N): each kernel's last duration, their sum, bench_table's median, and
# the SM clock and power while bench_table ran.
python3 kernels/dev/kernel_times.py "$OUT"
