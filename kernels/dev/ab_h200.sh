#!/usr/bin/env bash
# A/B of kernel builds on an H200 in ONE device call and with ONE bench binary: the shipped
# cubins against experiment builds (kernels/dev/build_experiments.py --name NAME), loaded through
# SIGMOID_ATTN_CUDA_CUBIN_DIR. Runs every build twice in the order shipped, NAME..., shipped,
# NAME... (so drift over the call shows) and prints one table of TFLOPS at the end.
#
#   bash kernels/dev/bwd_h200.sh prepare                            # here: target/h200
#   python3 kernels/dev/build_experiments.py --name exp1 -DSA_...   # here: kernels/dev/cubin/exp1
#   run(command="bash kernels/dev/ab_h200.sh bwd exp1 exp2 -- --d 128 --n 4096,16384",
#       carry=["target/h200", "kernels/dev/cubin"])
#
# PASS is fwd or bwd; options after -- go to bench_table (default: --pad 0 --n 4096,16384).
# An experiment whose host side differs (e.g. a shared-memory size the host mirrors) brings its
# own binaries: kernels/dev/cubin/NAME/bench_table and cuda_tests, when present, replace those of
# target/h200 for that experiment; or kernels/dev/cubin/NAME/host names a directory that holds
# them (one pair of binaries shared by several experiments keeps the carry small).
# Correctness: with AB_CHECK=1 each experiment first runs the conformance suite of its pass
# and the raw:: tests (deterministic mode, raw entry points) with its cubins; a failing
# experiment is still timed, and its failure is printed above the table.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/sa-ab-out}
mkdir -p "$OUT"

pass=${1:?usage: ab_h200.sh fwd|bwd NAME... [-- bench_table options]}
shift
names=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
    names+=("$1")
    shift
done
[ "${1:-}" = "--" ] && shift
extra=("$@")
[ ${#extra[@]} -eq 0 ] && extra=(--pad 0 --n 4096,16384)
case $pass in
    fwd) col=7 ;;
    bwd) col=9 ;;
    *) echo "PASS must be fwd or bwd"; exit 2 ;;
esac
# shellcheck source=step.sh
. kernels/dev/step.sh
for n in "${names[@]}"; do
    [ -d "$(experiment_dir "$n")" ] || { echo "no $(experiment_dir "$n") (carry kernels/dev/cubin)"; exit 2; }
done
nvidia-smi -L
# bench LABEL DIR: one bench_table run with DIR's cubins (empty: the shipped ones); rows of
# "LABEL D N pad TFLOPS" are appended to $OUT/rows.txt.
bench() {
    local label=$1 dir=$2
    local bin
    bin=$(host_bin "$dir" bench_table)
    TAIL=0 step "$label" 150 env SIGMOID_ATTN_CUDA_CUBIN_DIR="$dir" "$bin" --backend cuda \
        --pass "$pass" --dtype bf16 --reps 10 --no-check "${extra[@]}"
    grep '^| [0-9]' "$OUT/$label.log" |
        awk -F'|' -v l="$label" -v c="$col" '{gsub(/ /, "", $c); print l, $2 + 0, $3 + 0, $4, $c}' >>"$OUT/rows.txt"
}
if [ "${AB_CHECK:-0}" = 1 ]; then
    suite=forward
    [ "$pass" = bwd ] && suite=backward
    for n in "${names[@]}"; do
        dir=$(experiment_dir "$n")
        tests=$(host_bin "$dir" cuda_tests)
        for t in "conformance::$suite" raw::; do
            TAIL=0 step "check.$n.${t%%:*}" 120 env SIGMOID_ATTN_CUDA_CUBIN_DIR="$dir" \
                "$tests" --test-threads=1 --nocapture "$t"
            grep -hE "FAILED  |passed,.*failed|^test result" "$OUT/check.$n.${t%%:*}.log" | sort -u
        done
    done
fi
: >"$OUT/rows.txt"
for round in 1 2; do
    bench "shipped.$round" ""
    for n in "${names[@]}"; do
        bench "$n.$round" "$(experiment_dir "$n")"
    done
done
# One line per shape, one column per build and round.
python3 - "$OUT/rows.txt" <<'PY'
import sys, collections
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
labels = list(dict.fromkeys(r[0] for r in rows))
table = collections.OrderedDict()
for label, d, n, pad, tf in rows:
    table.setdefault((d, n, pad), {})[label] = tf
print("| D | N | pad | " + " | ".join(labels) + " |")
print("|---" * (3 + len(labels)) + "|")
for (d, n, pad), v in table.items():
    print(f"| {d} | {n} | {pad} | " + " | ".join(v.get(l, "-") for l in labels) + " |")
PY
