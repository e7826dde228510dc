#!/usr/bin/env bash
# Builds an A/B experiment from a patch that changes the host as well as the kernels (tile
# shapes, kernel parameters, launch geometry), for kernels/dev/ab_h200.sh:
#
#   bash kernels/dev/patch_experiment.sh NAME PATCH [--only SUBSTR] [-DMACRO ...]
#
# applies PATCH to a clean tree, builds the experiment cubins (build_experiments.py --name NAME,
# default --only `fwd_`: every forward variant, since the host binaries built here expect the
# patched kernels for all of them) and the host binaries (tests/cuda.rs as cuda_tests and
# examples/bench_table, stripped) into kernels/dev/cubin/NAME/, then reverts the patch. Refuses
# to run on a tree with changes to tracked files (the revert would take them too).
set -euo pipefail
cd "$(dirname "$0")/../.."
name=${1:?usage: patch_experiment.sh NAME PATCH [--only SUBSTR] [-DMACRO ...]}
patch=${2:?usage: patch_experiment.sh NAME PATCH [--only SUBSTR] [-DMACRO ...]}
shift 2
only=fwd_
if [ "${1:-}" = "--only" ]; then
    only=${2:?--only needs a value}
    shift 2
fi
if ! git diff --quiet HEAD; then
    echo "tracked files have changes: commit or stash them first" >&2
    exit 2
fi
git apply "$patch"
trap 'git apply -R "$patch"' EXIT
dir=kernels/dev/cubin/$name
rm -rf "$dir"
python3 kernels/dev/build_experiments.py --name "$name" --only "$only" "$@"
exe=$(cargo test --release --no-run --test cuda 2>&1 | sed -n 's/.*Executable tests\/cuda.rs (\(.*\))/\1/p')
[ -n "$exe" ] || { echo "building tests/cuda.rs failed" >&2; exit 1; }
cargo build --release --example bench_table
cp "$exe" "$dir/cuda_tests"
cp target/release/examples/bench_table "$dir/bench_table"
strip "$dir/cuda_tests" "$dir/bench_table"
ls -la "$dir"
echo "reverting $patch; rebuild target/h200 with: bash kernels/dev/bwd_h200.sh prepare && strip target/h200/*"
