#!/usr/bin/env bash
# The cooperative-matrix experiments of kernels/dev/README.md ("Measured in the tenth session")
# in one device call on the H200 over Vulkan, so that one machine start serves all of them:
#   1. coop_probe's forward key-tile cases (S rows +4 against +8 floats among them) and its
#      dK/dV query-tile cases (K and V in registers or in workgroup memory);
#   2. the forward's parts (coop_fwd_parts.patch: global K/V loads, their stores, the σ pass, the
#      S stores left out) and the backward's (coop_bwd_parts.patch: each kernel alone, loads or
#      the dS pass left out);
#   3. each ready variant NAME (arguments) A/B/A against target/vk/bench_wgpu, then the
#      wgpu_coop suite with its tests binary.
# Needs target/vk/{bench_wgpu,bench_wgpu_NAME,wgpu_coop_tests_NAME} and .gl (carry both); the
# probe and the parts run when target/vk/{coop_probe,bench_wgpu_parts,bench_wgpu_bwdparts} are
# there.
# Logs go to $OUT; the summary is printed last.
#
#   run(command="bash kernels/dev/coop_h200.sh", carry=["target/vk", ".gl"], timeout_s=600)
set -u
OUT=${OUT:-/tmp/coop_out}
mkdir -p "$OUT"
VK=target/vk
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"

if [ -x $VK/coop_probe ]; then
    # The first seconds on a fresh machine read low: one throwaway probe run.
    timeout 60 $VK/coop_probe --wg 1056 >/dev/null 2>&1

    echo "== probe (forward key-tile and dK/dV query-tile cases)" | tee -a "$SUMMARY"
    timeout 60 $VK/coop_probe --wg 4096 --mma 4096 >"$OUT/probe.log" 2>&1
    grep -E '^[|] (tile|bwd)' "$OUT/probe.log" >>"$SUMMARY"
else
    # Without the probe, a short throwaway bench warms the GPU up instead.
    timeout 60 $VK/bench_wgpu --coop-only --d 128 --n 4096 --pad 0 --reps 3 >/dev/null 2>&1
fi

# Columns kept from bench_wgpu's rows: dtype, D, N, pad, coop fwd ms, TFLOPS, bwd ms, TFLOPS.
bench() {
    timeout 120 "$@" --coop-only 2>&1 |
        grep '^| ' | grep -v dtype | cut -d'|' -f2-5,14,15,17,18 | sort -u
}

if [ -x $VK/bench_wgpu_parts ]; then
    echo "== forward parts (D, N, fwd ms, fwd TFLOPS; f16, N=16k)" | tee -a "$SUMMARY"
    for p in 0 1 4 5 12 15; do
        echo "PROBE=$p" >>"$SUMMARY"
        SIGMOID_ATTN_COOP_PROBE=$p \
            bench $VK/bench_wgpu_parts --dtype f16 --d 64,128 --n 16384 --pad 0 --reps 3 |
            cut -d'|' -f2,3,5,6 >>"$SUMMARY"
    done
fi

if [ -x $VK/bench_wgpu_bwdparts ]; then
    echo "== backward parts (D, N, bwd ms, bwd TFLOPS; f16, N=16k)" | tee -a "$SUMMARY"
    for only in all dq dkdv; do
        for p in 0 1 4 5; do
            echo "ONLY=$only PROBE=$p" >>"$SUMMARY"
            SIGMOID_ATTN_COOP_BWD_ONLY=$only SIGMOID_ATTN_COOP_PROBE=$p \
                bench $VK/bench_wgpu_bwdparts --dtype f16 --d 64,128 --n 16384 --pad 0 --reps 3 |
                cut -d'|' -f2,3,7,8 >>"$SUMMARY"
        done
    done
fi

for name in "$@"; do
    [ -x $VK/bench_wgpu_$name ] || { echo "== $name: no binary" | tee -a "$SUMMARY"; continue; }
    echo "== $name: A/B/A against bench_wgpu (dtype D N pad | fwd ms TF | bwd ms TF)" | tee -a "$SUMMARY"
    for b in bench_wgpu_$name bench_wgpu bench_wgpu_$name; do
        echo "-- $b" >>"$SUMMARY"
        bench $VK/$b --dtype f16,bf16 --d 64,128 --n 4096,16384 --pad 0,25 --reps 5 >>"$SUMMARY"
    done
    echo "-- wgpu_coop_tests_$name" >>"$SUMMARY"
    SIGMOID_ATTN_REQUIRE=wgpu_coop timeout 150 $VK/wgpu_coop_tests_$name --test-threads=1 \
        >"$OUT/tests_$name.log" 2>&1
    grep -E '^conformance|test result|FAIL|panicked' "$OUT/tests_$name.log" >>"$SUMMARY"
done

cat "$SUMMARY"
