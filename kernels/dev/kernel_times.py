"""Table of kernel_times.sh's logs: the last ncu duration of every kernel per (pass, D, N), and
bench_table's median for the whole pass, so that what the kernels do not explain (the backward's
workspace memset, launch gaps) shows as the difference.

    python3 kernels/dev/kernel_times.py OUT_DIR
"""
import csv
import glob
import os
import re
import sys


def ncu_rows(path):
    """{kernel name: last duration in µs} of one `ncu --csv --page raw --print-units base` log."""
    lines = [line for line in open(path, errors="replace") if line.startswith('"')]
    last = {}
    for row in csv.DictReader(lines):
        value = row.get("gpu__time_duration.sum", "").replace(",", "")
        try:
            last[row.get("Kernel Name", "?")] = float(value) / 1000.0  # ns -> µs
        except ValueError:
            continue  # the units row
    return last


def bench_ms(path, pass_):
    """bench_table's median time (ms) of the pass for the one shape in a `.bench.log`, or None.
    Its table: | D | N | pad | B×H | fwd ms | fwd TFLOPS | bwd ms | bwd TFLOPS | check |."""
    col = 5 if pass_ == "fwd" else 7
    for line in open(path, errors="replace"):
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > col and cells[1].isdigit():
            try:
                return float(cells[col])
            except ValueError:
                return None
    return None


def clocks(path):
    """(median SM MHz, max W) of the samples nvidia-smi took while the GPU was busy (clock above
    the idle floor), from `clocks.sm, power.draw` lines; None when there are none."""
    samples = []
    for line in open(path, errors="replace"):
        try:
            mhz, watts = (float(x) for x in line.split(","))
        except ValueError:
            continue
        samples.append((mhz, watts))
    busy = [s for s in samples if s[1] > 200.0] or samples
    if not busy:
        return None
    mhz = sorted(s[0] for s in busy)
    return mhz[len(mhz) // 2], max(s[1] for s in busy)


def main(out):
    print("| pass | D | N | kernels (µs, ncu) | sum µs | bench_table µs | SM MHz / W (bench) |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(glob.glob(os.path.join(out, "*.log"))):
        m = re.match(r"(fwd|bwd)\.d(\d+)\.n(\d+)\.log$", os.path.basename(path))
        if not m:
            continue
        kernels = ncu_rows(path)
        bench = os.path.join(out, f"{m[1]}.d{m[2]}.n{m[3]}.bench.log")
        ms = bench_ms(bench, m[1]) if os.path.exists(bench) else None
        parts = ", ".join(f"{k.replace('sigmoid_attn_', '')} {v:.1f}" for k, v in kernels.items())
        total = sum(kernels.values())
        clk_path = bench.replace(".bench.log", ".bench.clocks")
        clk = clocks(clk_path) if os.path.exists(clk_path) else None
        print(f"| {m[1]} | {m[2]} | {m[3]} | {parts or 'no ncu rows'} | {total:.1f} | "
              f"{'' if ms is None else f'{ms * 1000:.1f}'} | "
              f"{'' if clk is None else f'{clk[0]:.0f} / {clk[1]:.0f}'} |")


if __name__ == "__main__":
    main(sys.argv[1])
