"""Builds experiment cubins for A/B runs on an H200. Needs the pinned NVRTC, like build_cubins.py.

Named experiment (for the Rust binaries, through SIGMOID_ATTN_CUDA_CUBIN_DIR):

    python3 kernels/dev/build_experiments.py --name NAME [--only SUBSTR] [-DMACRO[=V] ...]

compiles the current kernel sources, with the extra macros, into kernels/dev/cubin/NAME/
<variant>.cubin for every shipped variant whose name contains SUBSTR (default `_bf16_`: the
bf16 ones of both kernels), and prints ptxas's registers, spills and warnings for each. Typical use: edit a kernel
(or guard a change by a macro), build the experiment, restore the shipped source, rebuild the
shipped cubins, then time both in one device call with kernels/dev/ab_h200.sh. An experiment
must keep the variant's parameters and shared-memory size (the host sets them).

Without --name: the forward experiments of the EXPERIMENTS table, written as
kernels/dev/cubin/<variant><tag>.cubin for device_check.py (whose EXP table must list the tile
shape of every tag that changes it). Only bf16 fast variants are built.
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import build_cubins as b  # noqa: E402

OUT = os.path.join(HERE, "cubin")

# tag: (head dim or None for both, extra NVRTC options)
EXPERIMENTS = {
    "_nozero": (None, ["-DSA_NO_V_ZERO"]),
    "_m128": (64, ["-DSA_BLOCK_M=128", "-DSA_BLOCK_N=128", "-DSA_STAGES=4"]),
}


def report(name, cubin, log):
    if cubin is None:
        print(name, "FAILED\n" + log)
        return False
    rep = b.ptxas_report(log)
    print(name, rep["registers"], "registers", rep["spill_bytes"], "spill bytes", b.problems(rep, log))
    return True


def build_named(nvrtc, name, only, defines):
    out = os.path.join(OUT, name)
    os.makedirs(out, exist_ok=True)
    sources = {}
    built = 0
    for variant, file, opts in b.variants():
        if only not in variant:
            continue
        if file not in sources:
            sources[file] = b.flatten(os.path.join(b.HERE, file))
        cubin, log = nvrtc.compile(sources[file], file, opts + defines)
        if report(variant, cubin, log):
            with open(os.path.join(out, variant + ".cubin"), "wb") as f:
                f.write(cubin)
            built += 1
    print(f"{built} cubins in {out}")
    return built > 0


def build_table(nvrtc):
    os.makedirs(OUT, exist_ok=True)
    src = b.flatten(os.path.join(b.HERE, "fwd_sm90.cu"))
    for name, file, opts in b.variants():
        if not name.startswith("fwd_") or "bf16" not in name or "accurate" in name:
            continue
        d = 64 if "_d64_" in name else 128
        for tag, (only_d, extra) in EXPERIMENTS.items():
            if only_d is not None and only_d != d:
                continue
            cubin, log = nvrtc.compile(src, file, opts + extra)
            if report(name + tag, cubin, log):
                with open(os.path.join(OUT, name + tag + ".cubin"), "wb") as f:
                    f.write(cubin)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", help="experiment name: writes kernels/dev/cubin/NAME/<variant>.cubin")
    ap.add_argument("--only", default="_bf16_", help="substring of the variant names to build")
    args, defines = ap.parse_known_args()
    bad = [d for d in defines if not d.startswith("-D")]
    if bad:
        ap.error(f"only -D options may follow: {bad}")
    nvrtc = b.Nvrtc(b.find_nvrtc())
    if args.name:
        sys.exit(0 if build_named(nvrtc, args.name, args.only, defines) else 1)
    build_table(nvrtc)


if __name__ == "__main__":
    main()
