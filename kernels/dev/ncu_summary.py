"""Summarises an Nsight Compute per-instruction export of one kernel (kernels/dev/ncu_h200.sh).

    python3 kernels/dev/ncu_summary.py PROFILE.sass.csv [TOP]

The CSV is `ncu --import R.ncu-rep --page source --csv --print-source sass`. Prints the warp
stall reasons over all sampled instructions, the TOP instructions by samples with their three
main reasons, and how many executed instructions were fully predicated off (issued for nothing:
the fourth session found 38-41% of the forward's issued instructions so).
"""
import collections
import csv
import sys


def load(path):
    rows = list(csv.reader(open(path)))
    header = rows[1]  # row 0 names the kernel
    return header, [r for r in rows[2:] if len(r) >= len(header)]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    header, data = load(sys.argv[1])
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    col = {h: i for i, h in enumerate(header)}
    reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
    samples = "Warp Stall Sampling (All Samples)"

    def num(row, name):
        return float(row[col[name]] or 0)

    totals = collections.Counter()
    for r in data:
        for h in reasons:
            totals[h] += num(r, h)
    all_samples = sum(totals.values()) or 1
    print(f"stall samples: {all_samples:,.0f}")
    for h, v in totals.most_common(10):
        print(f"  {h[6:]:20s} {100 * v / all_samples:5.1f}%")

    print(f"\ntop {top} instructions by samples:")
    for r in sorted(data, key=lambda r: -num(r, samples))[:top]:
        main3 = sorted(((num(r, h), h[6:]) for h in reasons), reverse=True)[:3]
        why = ", ".join(f"{name} {v:.0f}" for v, name in main3 if v)
        print(f"  {100 * num(r, samples) / all_samples:5.1f}%  {r[col['Address']][-5:]}  "
              f"{r[col['Source']].strip()[:58]:58s}  {why}")

    executed = off = 0
    by_op, off_by_op = collections.Counter(), collections.Counter()
    for r in data:
        n = num(r, "Instructions Executed")
        text = r[col["Source"]].strip().split()
        if not text:
            continue
        op = (text[1] if text[0].startswith("@") and len(text) > 1 else text[0]).split(".")[0]
        executed += n
        by_op[op] += n
        if num(r, "Avg. Predicated-On Threads Executed") < 0.5:
            off += n
            off_by_op[op] += n
    executed = executed or 1
    print(f"\nexecuted instructions {executed:,.0f}, fully predicated off {100 * off / executed:.1f}%")
    print("  by opcode: " + ", ".join(f"{k} {100 * v / executed:.1f}%" for k, v in by_op.most_common(10)))
    if off:
        print("  predicated off: " + ", ".join(f"{k} {100 * v / executed:.1f}%" for k, v in off_by_op.most_common(6)))


if __name__ == "__main__":
    main()
