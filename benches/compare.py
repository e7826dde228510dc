#!/usr/bin/env python3
"""Side-by-side report on one GPU machine: our CUDA and wgpu paths, PyTorch SDPA (flash and
cuDNN backends, softmax) and TritonSigmoid (from its source, when given), on the standard
workload of DESIGN.md, in one process tree and one run.

    python3 benches/compare.py --ours target/release/examples/bench_table \
        --triton-sigmoid path/to/triton-sigmoid --out report/

Writes OUT/compare.md (markdown table), OUT/compare.json and, when matplotlib is present,
OUT/compare.png (TFLOPS against N per head dim, forward and backward). Workload: non-causal,
[B, N, H, D], B = 16384/N, H = 2048/D, padding L ~ U[N(1-p), N]; forward FLOPs 4·H·D·ΣL²,
backward timed alone and counted as 2.5× forward. Timing: median of triton.testing.do_bench
for the Python anchors, median of device-clock runs for ours.
"""

import argparse
import json
import os
import subprocess
import sys
import time

DIMS = [64, 128]
SEQS = [1024, 4096, 16384]
PADS = [0, 25]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_ours(binary, backend, dtype, out_dir, extra, label=None, env=None):
    """Runs bench_table on one of our backends; `label` names the provider (default
    ours-BACKEND-DTYPE), `env` adds environment variables (e.g. to switch a path off)."""
    label = label or f"ours-{backend}-{dtype}"
    path = os.path.join(out_dir, f"{label}.json")
    cmd = [binary, "--backend", backend, "--dtype", dtype, "--json", path] + extra
    log("running " + " ".join(cmd) + (f" with {env}" if env else ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    with open(os.path.join(out_dir, f"{label}.log"), "w") as f:
        f.write(proc.stdout + "\n" + proc.stderr)
    if not os.path.exists(path):
        log(f"{label}: no results (exit {proc.returncode}): {proc.stderr[-2000:]}")
        return []
    rows = json.load(open(path))
    for r in rows:
        r["provider"] = label
    return rows


def python_anchors(triton_sigmoid_src, dims, seqs, pads, warmup_ms=100, rep_ms=250,
                   on_row=lambda rows: None):
    import torch
    import triton
    from torch.nn.attention import SDPBackend, sdpa_kernel

    have_ts = False
    if triton_sigmoid_src:
        sys.path.insert(0, os.path.join(triton_sigmoid_src, "src"))
        try:
            from triton_sigmoid import sigmoid_attention, sigmoid_attention_padded

            have_ts = True
        except Exception as e:  # noqa: BLE001 - report and go on without it
            log(f"TritonSigmoid not importable: {e}")

    dev = "cuda"
    dt = torch.bfloat16
    rows = []

    def bench(fn):
        return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")

    def fwd_bwd(provider, forward, flops, d, n, pad, b, h):
        row = {"provider": provider, "dtype": "bf16", "d": d, "n": n, "pad": pad,
               "batch": b, "heads": h, "fwd_ms": None, "fwd_tflops": None,
               "bwd_ms": None, "bwd_tflops": None, "check": "anchor"}
        try:
            for _ in range(10):  # lets autotuners settle
                forward()
            ms = bench(forward)
            row["fwd_ms"], row["fwd_tflops"] = ms, flops / (ms * 1e-3) / 1e12
            o = forward()
            do = torch.randn_like(o)
            ms = bench(lambda: o.backward(do, retain_graph=True))
            row["bwd_ms"], row["bwd_tflops"] = ms, 2.5 * flops / (ms * 1e-3) / 1e12
        except Exception as e:  # noqa: BLE001
            row["check"] = f"error: {type(e).__name__}: {str(e)[:120]}"
        torch.cuda.empty_cache()
        log(f"{provider} D={d} N={n} pad={pad}: fwd {row['fwd_tflops']} bwd {row['bwd_tflops']}")
        rows.append(row)
        on_row(rows)
        return row

    for d in dims:
        for n in seqs:
            for pad in pads:
                b, h = 16384 // n, 2048 // d
                gen = torch.Generator(device=dev).manual_seed(n * 131 + d * 7 + pad)
                if pad == 0:
                    lens = torch.full((b,), n, dtype=torch.int32, device=dev)
                else:
                    lo = max(1, int(n * (1 - pad / 100)))
                    lens = torch.randint(lo, n + 1, (b,), generator=gen, device=dev, dtype=torch.int32)
                flops = 4.0 * h * d * float((lens.double() ** 2).sum())

                def make():
                    return [torch.randn(b, n, h, d, device=dev, dtype=dt, requires_grad=True)
                            for _ in range(3)]

                q, k, v = make()
                if pad == 0:
                    for name, backend in [("sdpa-flash", SDPBackend.FLASH_ATTENTION),
                                          ("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION)]:
                        def sdpa(backend=backend):
                            with sdpa_kernel(backend):
                                return torch.nn.functional.scaled_dot_product_attention(
                                    q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
                        fwd_bwd(name, sdpa, flops, d, n, pad, b, h)
                if have_ts:
                    if pad == 0:
                        ts = lambda: sigmoid_attention(q, k, v)  # noqa: E731
                    else:
                        ts = lambda: sigmoid_attention_padded(  # noqa: E731
                            q, k, v, seq_lens_k=lens, seq_lens_q=lens, is_causal=False)
                    fwd_bwd("triton-sigmoid", ts, flops, d, n, pad, b, h)
                del q, k, v
                torch.cuda.empty_cache()
    return rows


def fmt(x):
    return "—" if x is None else f"{x:.0f}" if x >= 10 else f"{x:.2f}"


def markdown(rows, device):
    providers = []
    for r in rows:
        if r["provider"] not in providers:
            providers.append(r["provider"])
    by = {(r["provider"], r["d"], r["n"], r["pad"]): r for r in rows}
    lines = [f"Device: {device}. TFLOPS, forward / backward (backward counted as 2.5× forward).", ""]
    lines.append("| D | N | pad | " + " | ".join(providers) + " |")
    lines.append("|---|---|---|" + "---|" * len(providers))
    keys = sorted({(r["d"], r["n"], r["pad"]) for r in rows}, key=lambda k: (-k[0], k[1], k[2]))
    for d, n, pad in keys:
        cells = []
        for p in providers:
            r = by.get((p, d, n, pad))
            if r is None:
                cells.append("")
            elif r.get("check", "").startswith(("FAILED", "error")):
                cells.append(r["check"][:40])
            else:
                cells.append(f"{fmt(r['fwd_tflops'])} / {fmt(r['bwd_tflops'])}")
        lines.append(f"| {d} | {n} | {pad}% | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot")
        return False
    fig, axes = plt.subplots(2, 2, figsize=(12, 9), sharex=True)
    providers = sorted({r["provider"] for r in rows})
    # One colour per provider in every panel, whichever passes it has.
    colour = {p: f"C{i}" for i, p in enumerate(providers)}
    for col, d in enumerate(DIMS):
        for row_i, (key, label) in enumerate([("fwd_tflops", "forward"), ("bwd_tflops", "backward")]):
            ax = axes[row_i][col]
            for p in providers:
                for pad, style in [(0, "-o"), (25, "--s")]:
                    pts = sorted((r["n"], r[key]) for r in rows
                                 if r["provider"] == p and r["d"] == d and r["pad"] == pad
                                 and r.get(key) is not None)
                    if pts:
                        ax.plot([x for x, _ in pts], [y for _, y in pts], style,
                                color=colour[p], label=f"{p}{' pad25%' if pad else ''}")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{label}, D={d}")
            ax.set_xlabel("N")
            ax.set_ylabel("TFLOPS")
            ax.grid(alpha=0.3)
    # One legend for the figure, below the panels, so that no curve hides behind it.
    handles, labels = {}, {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:
        fig.legend(list(handles.values()), list(handles.keys()), loc="lower center",
                   ncol=min(4, len(handles)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * ((len(handles) + 3) // 4), 1, 1))
    fig.savefig(path, dpi=110)
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", help="path of the bench_table binary")
    ap.add_argument("--wgpu", action="store_true",
                    help="also run our wgpu backend (f16; cooperative matrices where the adapter "
                         "has them)")
    ap.add_argument("--wgpu-scalar", action="store_true",
                    help="also run our wgpu backend with the cooperative-matrix path off "
                         "(SIGMOID_ATTN_WGPU_COOP=0), beside --wgpu")
    ap.add_argument("--wgpu-reps", default="5", help="timed runs per configuration for wgpu")
    ap.add_argument("--triton-sigmoid", help="TritonSigmoid source checkout (uses its src/)")
    ap.add_argument("--no-anchors", action="store_true")
    ap.add_argument("--out", default="report")
    ap.add_argument("--reps", default="20", help="timed runs per configuration for ours")
    ap.add_argument("--merge", nargs="*", default=[],
                    help="compare.json files of earlier runs to fold in (a device call is limited "
                         "in time: run D=64 and D=128 separately, then merge); rows of this run win")
    ap.add_argument("--quick", action="store_true",
                    help="shorter do_bench windows (25 ms warm-up, 100 ms timing) for the anchors")
    ap.add_argument("--device", help="device name for the report (default: the GPU the anchors "
                                     "run on; give it when only merging)")
    ap.add_argument("--d", default=",".join(map(str, DIMS)))
    ap.add_argument("--n", default=",".join(map(str, SEQS)))
    ap.add_argument("--pad", default=",".join(map(str, PADS)))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    dims, seqs, pads = ([int(x) for x in s.split(",")] for s in (a.d, a.n, a.pad))
    shape = ["--d", a.d, "--n", a.n, "--pad", a.pad]
    rows = []
    if a.ours:
        rows += run_ours(a.ours, "cuda", "bf16", a.out, shape + ["--reps", a.reps])
        wgpu_extra = shape + ["--reps", a.wgpu_reps]
        if a.wgpu:
            rows += run_ours(a.ours, "wgpu", "f16", a.out, wgpu_extra)
        if a.wgpu_scalar:
            rows += run_ours(a.ours, "wgpu", "f16", a.out, wgpu_extra, label="ours-wgpu-scalar-f16",
                             env={"SIGMOID_ATTN_WGPU_COOP": "0"})
    device = a.device or "unknown"

    earlier = {}
    for path in a.merge:
        for r in json.load(open(path)):
            earlier[(r["provider"], r["d"], r["n"], r["pad"])] = r

    def save(anchor_rows):
        # Written after every row, so a run cut short still leaves its results.
        fresh = rows + anchor_rows
        keys = {(r["provider"], r["d"], r["n"], r["pad"]) for r in fresh}
        everything = [r for k, r in earlier.items() if k not in keys] + fresh
        json.dump(everything, open(os.path.join(a.out, "compare.json"), "w"), indent=1)
        open(os.path.join(a.out, "compare.md"), "w").write(markdown(everything, device))
        return everything

    everything = save([])
    if not a.no_anchors:
        import torch

        device = a.device or torch.cuda.get_device_name()
        windows = (25, 100) if a.quick else (100, 250)
        everything = save(python_anchors(a.triton_sigmoid, dims, seqs, pads, *windows, on_row=save))
    plot(everything, os.path.join(a.out, "compare.png"))
    print(markdown(everything, device))


if __name__ == "__main__":
    main()
