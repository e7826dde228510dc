"""Measures the error curve of the kernels' sigmoid (kernels/sigmoid.cuh, both modes) on a GPU.

The conformance harness emulates the fast sigmoid's tanh by rounding it to 11 bits, which
cannot represent an error that varies slowly with the logit; d_bias, a small residue of many
terms, sums such an error coherently (tests/common: TANH_DRIFT, BENCHMARKS.md third session).
This tabulates the real error so that allowance can be measured rather than estimated.

    python3 kernels/dev/sigmoid_error.py build   # here (pinned NVRTC): kernels/dev/cubin/sigmoid_*.cubin
    python3 kernels/dev/sigmoid_error.py run     # on the GPU machine (carry kernels/dev/cubin)

`run` evaluates both modes on 2^22 logits in [-30, 30] (f32), compares with the f64 sigmoid of
the same f32 values, and prints per logit bucket the signed mean error of P (the slowly varying
part), the largest absolute error and the largest relative error; JSON to $OUT when set.
"""
import ctypes
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "cubin")
MODES = {"fast": [], "accurate": ["-DSA_ACCURATE"]}
PROBE = r"""
extern "C" __global__ void sigmoid_probe(const float* x, float* p, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    // scale 1, bias 0: the coefficient FMA is exact, so P is the kernels' sigmoid of x.
    if (i < n) p[i] = sa::sigmoid_from_qk(x[i], sa::sigmoid_coef(1.0f, 0.0f));
}
"""


def build():
    sys.path.insert(0, os.path.join(HERE, ".."))
    import build_cubins as b

    nvrtc = b.Nvrtc(b.find_nvrtc())
    src = b.flatten(os.path.join(b.HERE, "sigmoid.cuh")) + PROBE
    os.makedirs(OUT_DIR, exist_ok=True)
    for mode, opts in MODES.items():
        cubin, log = nvrtc.compile(src, "sigmoid_probe.cu", b.BASE_OPTIONS + opts)
        if cubin is None:
            sys.exit(f"{mode}: compile failed\n{log}")
        with open(os.path.join(OUT_DIR, f"sigmoid_{mode}.cubin"), "wb") as f:
            f.write(cubin)
        print(f"sigmoid_{mode}.cubin")


def run():
    import torch

    cu = ctypes.CDLL("libcuda.so.1")

    def ck(r, what):
        if r != 0:
            raise RuntimeError(f"{what}: CUDA error {r}")

    torch.zeros(1, device="cuda")  # creates the primary context, which the module joins
    n = 1 << 22
    x = torch.linspace(-30.0, 30.0, n, dtype=torch.float32, device="cuda")
    exact = torch.sigmoid(x.double())
    buckets = torch.arange(-30.0, 30.0 + 1e-9, 0.5, dtype=torch.float64)
    report = {}
    for mode in MODES:
        with open(os.path.join(OUT_DIR, f"sigmoid_{mode}.cubin"), "rb") as f:
            data = f.read()
        m, fn = ctypes.c_void_p(), ctypes.c_void_p()
        ck(cu.cuModuleLoadData(ctypes.byref(m), data), "load")
        ck(cu.cuModuleGetFunction(ctypes.byref(fn), m, b"sigmoid_probe"), "function")
        p = torch.empty_like(x)
        xp, pp, nn = ctypes.c_uint64(x.data_ptr()), ctypes.c_uint64(p.data_ptr()), ctypes.c_int(n)
        args = (ctypes.c_void_p * 3)(ctypes.addressof(xp), ctypes.addressof(pp), ctypes.addressof(nn))
        ck(cu.cuLaunchKernel(fn, (n + 255) // 256, 1, 1, 256, 1, 1, 0, None, args, None), "launch")
        torch.cuda.synchronize()
        err = p.double() - exact
        rows = []
        for lo, hi in zip(buckets[:-1].tolist(), buckets[1:].tolist()):
            sel = (x.double() >= lo) & (x.double() < hi)
            e, ex = err[sel], exact[sel]
            rel = (e.abs() / ex.clamp_min(1e-300)).max().item()
            rows.append({"lo": lo, "hi": hi, "mean": e.mean().item(), "max_abs": e.abs().max().item(),
                         "max_rel": rel})
        report[mode] = rows
        print(f"\n{mode}: P error per logit bucket (signed mean: the slowly varying part)")
        print("| logit | mean P err | max |P err| | max rel err |")
        print("|---|---|---|---|")
        for r in rows:
            if int(r["lo"] * 2) % 4 == 0:  # every other bucket keeps the table short
                print(f"| [{r['lo']:g}, {r['hi']:g}) | {r['mean']:.2e} | {r['max_abs']:.2e} | {r['max_rel']:.2e} |")
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "sigmoid_error.json"), "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    {"build": build, "run": run}.get(sys.argv[1] if len(sys.argv) > 1 else "", lambda: sys.exit(__doc__))()
