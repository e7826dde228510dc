"""Builds experiment variants of the forward kernel (macro overrides, see fwd_sm90.cu) into
kernels/dev/cubin, named `<variant><tag>.cubin`, for A/B runs with device_check.py (whose EXP
table must list the tile shape of every tag that changes it). Needs the pinned NVRTC, like
build_cubins.py. Only bf16 fast variants are built."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import build_cubins as b  # noqa: E402

# tag: (head dim or None for both, extra NVRTC options)
EXPERIMENTS = {
    "_nozero": (None, ["-DSA_NO_V_ZERO"]),
    "_ov": (None, ["-DSA_OVERLAP"]),
    "_pp": (128, ["-DSA_PINGPONG"]),
    "_m128": (64, ["-DSA_BLOCK_M=128", "-DSA_BLOCK_N=128", "-DSA_STAGES=4", "-DSA_NO_PINGPONG"]),
}


def main():
    nvrtc = b.Nvrtc(b.find_nvrtc())
    out = os.path.join(HERE, "cubin")
    os.makedirs(out, exist_ok=True)
    src = b.flatten(os.path.join(b.HERE, "fwd_sm90.cu"))
    for name, file, opts in b.variants():
        if "bf16" not in name or "accurate" in name:
            continue
        d = 64 if "_d64_" in name else 128
        for tag, (only_d, extra) in EXPERIMENTS.items():
            if only_d is not None and only_d != d:
                continue
            cubin, log = nvrtc.compile(src, file, opts + extra)
            if cubin is None:
                print(name + tag, "FAILED\n" + log)
                continue
            rep = b.ptxas_report(log)
            print(name + tag, rep["registers"], "registers", rep["spill_bytes"], "spill bytes", b.problems(rep, log))
            with open(os.path.join(out, name + tag + ".cubin"), "wb") as f:
                f.write(cubin)


if __name__ == "__main__":
    main()
