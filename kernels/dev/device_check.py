"""Device-side check and A/B benchmark of the forward cubins without Rust (run on an H200).

ctypes -> libcuda for module load, tensor maps and launches; torch for data, the f64
reference and CUDA-event timing. Cubins are read from ./cubin next to this file (copy
kernels/cubin/*.cubin there, plus experiment builds from build_experiments.py).

    python3 device_check.py test [TAG,...]          # conformance cases, incl. NaN in padding
    python3 device_check.py bench [TAG,...] [MODES] [NS]   # standard workload, bf16
    python3 device_check.py sanit                   # a few cases, for compute-sanitizer
"""
import ctypes, math, sys, os, time, statistics
import torch

cu = ctypes.CDLL("libcuda.so.1")
def ck(r, what):
    if r != 0:
        s = ctypes.c_char_p(); cu.cuGetErrorString(r, ctypes.byref(s))
        raise RuntimeError(f"{what}: {r} {s.value}")

torch.cuda.init(); torch.zeros(1, device="cuda")
HERE = os.path.dirname(os.path.abspath(__file__))

class SeqInfo(ctypes.Structure):
    _fields_ = [("q_start", ctypes.c_int), ("k_start", ctypes.c_int), ("len_q", ctypes.c_int),
                ("len_k", ctypes.c_int), ("rows", ctypes.c_int), ("bias", ctypes.c_float)]
class FwdParams(ctypes.Structure):
    _fields_ = [("o_ptr", ctypes.c_uint64), ("seq_ptr", ctypes.c_uint64), ("sb", ctypes.c_int64),
                ("ss", ctypes.c_int64), ("sh", ctypes.c_int64), ("batch", ctypes.c_int), ("heads", ctypes.c_int),
                ("kv_group", ctypes.c_int), ("causal", ctypes.c_int), ("scale", ctypes.c_float),
                ("uniform", SeqInfo), ("map_batch", ctypes.c_int)]
assert ctypes.sizeof(FwdParams) == 88
class TMap(ctypes.Structure):
    _fields_ = [("opaque", ctypes.c_uint64 * 16)]

CFG = {64: (192, 128, 4), 128: (128, 128, 2)}  # kBlockM, kBlockN, stages
EXP = {"_m128": (128, 128, 4)}  # tags of build_experiments.py that change the tile shape
def cfg_of(name, D):
    for tag, c in EXP.items():
        if name.endswith(tag): return c
    return CFG[D]
def smem_bytes(D, name=""):
    bm, bn, st = cfg_of(name, D)
    return 1024 + bm * D * 2 + 2 * st * bn * D * 2 + 8 * (1 + 4 * st)

mods = {}
def func(name):
    if name not in mods:
        data = open(os.path.join(HERE, "cubin", name + ".cubin"), "rb").read()
        m = ctypes.c_void_p(); ck(cu.cuModuleLoadData(ctypes.byref(m), data), "load " + name)
        f = ctypes.c_void_p(); ck(cu.cuModuleGetFunction(ctypes.byref(f), m, b"sigmoid_attn_fwd"), "getfn")
        D = 64 if "_d64_" in name else 128
        ck(cu.cuFuncSetAttribute(f, 8, smem_bytes(D, name)), "smem attr")
        mods[name] = (m, f)
    return mods[name][1]

def tmap(t, seq_extent, strides, packed, D, box_rows, heads):
    # t: tensor; strides: (batch, seq, head) in elements; dims (D, seq, heads, batch)
    tm = TMap()
    dt = 9 if t.dtype == torch.bfloat16 else 6
    batch = 1 if packed else t.shape[0]
    sb = strides[0] if not packed else seq_extent * strides[1]
    dims = (ctypes.c_uint64 * 4)(D, seq_extent, heads, batch)
    gs = (ctypes.c_uint64 * 3)(strides[1] * 2, strides[2] * 2, max(sb, 1) * 2)
    box = (ctypes.c_uint32 * 4)(64, box_rows, 1, 1)
    es = (ctypes.c_uint32 * 4)(1, 1, 1, 1)
    cu.cuTensorMapEncodeTiled.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p,
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    ck(cu.cuTensorMapEncodeTiled(ctypes.addressof(tm), dt, 4, t.data_ptr(), ctypes.addressof(dims), ctypes.addressof(gs), ctypes.addressof(box), ctypes.addressof(es), 0, 3, 3, 0), "encode")
    return tm

def launch(name, q, k, v, o, layout, lens_q, lens_k, rows_list, q_starts, k_starts, biases, H, Hkv, D, causal, scale,
           nq_extent, nk_extent, uniform):
    bm, bn, _ = cfg_of(name, D)
    packed = layout == "packed"
    if layout == "bnhd":
        sq = (q.stride(0), q.stride(1), q.stride(2)); sk = (k.stride(0), k.stride(1), k.stride(2)); so = (o.stride(0), o.stride(1), o.stride(2))
    elif layout == "bhnd":
        sq = (q.stride(0), q.stride(2), q.stride(1)); sk = (k.stride(0), k.stride(2), k.stride(1)); so = (o.stride(0), o.stride(2), o.stride(1))
    else:
        sq = (0, q.stride(0), q.stride(1)); sk = (0, k.stride(0), k.stride(1)); so = (0, o.stride(0), o.stride(1))
    tq = tmap(q, nq_extent, sq, packed, D, bm, H)
    tk = tmap(k, nk_extent, sk, packed, D, bn, Hkv)
    tv = tmap(v, nk_extent, sk, packed, D, bn, Hkv)
    B = len(lens_q)
    p = FwdParams(); p.o_ptr = o.data_ptr(); p.sb, p.ss, p.sh = so
    p.batch = B; p.heads = H; p.kv_group = H // Hkv; p.causal = int(causal); p.scale = scale
    p.map_batch = 0 if packed else 1
    if uniform:
        p.seq_ptr = 0
        p.uniform = SeqInfo(0, 0, lens_q[0], lens_k[0], rows_list[0], biases[0])
        seqbuf = None
    else:
        arr = (SeqInfo * B)(*[SeqInfo(q_starts[b], k_starts[b], lens_q[b], lens_k[b], rows_list[b], biases[b]) for b in range(B)])
        seqbuf = torch.empty(ctypes.sizeof(arr), dtype=torch.uint8, device="cuda")
        seqbuf.copy_(torch.frombuffer(bytearray(bytes(arr)), dtype=torch.uint8))
        p.seq_ptr = seqbuf.data_ptr()
    mtiles = (max(rows_list) + bm - 1) // bm
    args = (ctypes.c_void_p * 4)(ctypes.cast(ctypes.byref(tq), ctypes.c_void_p), ctypes.cast(ctypes.byref(tk), ctypes.c_void_p),
                                 ctypes.cast(ctypes.byref(tv), ctypes.c_void_p), ctypes.cast(ctypes.byref(p), ctypes.c_void_p))
    f = func(name)
    threads = 128 * (1 + bm // 64)
    stream = torch.cuda.current_stream().cuda_stream
    def go():
        ck(cu.cuLaunchKernel(f, max(mtiles, 1), H, B, threads, 1, 1, smem_bytes(D, name), ctypes.c_void_p(stream), args, None), "launch")
    go()
    return go, (tq, tk, tv, p, args, seqbuf)

def reference(q, k, v, layout, lens_q, lens_k, q_starts, k_starts, biases, H, Hkv, causal, scale, nq):
    # returns list per batch of [len_q, H, D] float
    outs = []
    for b in range(len(lens_q)):
        lq, lk = lens_q[b], lens_k[b]
        if layout == "bnhd": qb, kb, vb = q[b, :lq], k[b, :lk], v[b, :lk]
        elif layout == "bhnd": qb, kb, vb = q[b, :, :lq].transpose(0, 1), k[b, :, :lk].transpose(0, 1), v[b, :, :lk].transpose(0, 1)
        else: qb, kb, vb = q[q_starts[b]:q_starts[b]+lq], k[k_starts[b]:k_starts[b]+lk], v[k_starts[b]:k_starts[b]+lk]
        g = H // Hkv
        kb = kb.double().repeat_interleave(g, dim=1); vb = vb.double().repeat_interleave(g, dim=1)
        s = torch.einsum("ihd,jhd->hij", qb.double(), kb) * scale + biases[b]
        pm = torch.sigmoid(s)
        if causal:
            i = torch.arange(lq, device="cuda")[:, None]; j = torch.arange(lk, device="cuda")[None, :]
            pm = pm.masked_fill((j > i)[None], 0.0)
        outs.append(torch.einsum("hij,jhd->ihd", pm, vb))
    return outs

def run_case(c, variant_tag=""):
    torch.manual_seed(c.get("seed", 0))
    D, H, Hkv = c["D"], c["H"], c.get("Hkv", c["H"])
    dt = torch.bfloat16 if c["dtype"] == "bf16" else torch.float16
    lens_q = c["lens_q"]; lens_k = c.get("lens_k", lens_q); B = len(lens_q)
    layout = c["layout"]; causal = c.get("causal", False); scale = c.get("scale", 1 / math.sqrt(D))
    name = f"fwd_{c['dtype']}_d{D}_{c['mode']}{variant_tag}"
    if not os.path.exists(os.path.join(HERE, "cubin", name + ".cubin")): return True
    if layout == "packed":
        q_starts = [sum(lens_q[:b]) for b in range(B)]; k_starts = [sum(lens_k[:b]) for b in range(B)]
        tq, tk = sum(lens_q), sum(lens_k)
        q = torch.randn(tq, H, D, device="cuda", dtype=dt); k = torch.randn(tk, Hkv, D, device="cuda", dtype=dt); v = torch.randn(tk, Hkv, D, device="cuda", dtype=dt)
        o = torch.full((tq, H, D), float("nan"), device="cuda", dtype=dt)
        rows = list(lens_q); nq_ext, nk_ext = max(tq, 1), max(tk, 1)
    else:
        Nq = c["Nq"]; Nk = c.get("Nk", Nq)
        q_starts = [0] * B; k_starts = [0] * B
        if layout == "bnhd":
            q = torch.randn(B, Nq, H, D, device="cuda", dtype=dt); k = torch.randn(B, Nk, Hkv, D, device="cuda", dtype=dt); v = torch.randn(B, Nk, Hkv, D, device="cuda", dtype=dt)
            o = torch.full((B, Nq, H, D), float("nan"), device="cuda", dtype=dt)
        else:
            q = torch.randn(B, H, Nq, D, device="cuda", dtype=dt); k = torch.randn(B, Hkv, Nk, D, device="cuda", dtype=dt); v = torch.randn(B, Hkv, Nk, D, device="cuda", dtype=dt)
            o = torch.full((B, H, Nq, D), float("nan"), device="cuda", dtype=dt)
        rows = [Nq] * B; nq_ext, nk_ext = Nq, Nk
    if c.get("poison_pad") and layout in ("bnhd", "bhnd"):
        for b in range(B):
            if layout == "bnhd":
                q[b, lens_q[b]:] = float("nan"); k[b, lens_k[b]:] = float("nan"); v[b, lens_k[b]:] = float("inf")
            else:
                q[b, :, lens_q[b]:] = float("nan"); k[b, :, lens_k[b]:] = float("nan"); v[b, :, lens_k[b]:] = float("nan")
    bias_mode = c.get("bias", "log")
    biases = [(-math.log(lk) if lk > 0 else 0.0) if bias_mode == "log" else (bias_mode if isinstance(bias_mode, float) else 0.0) for lk in lens_k]
    uniform = c.get("uniform", False)
    launch(name, q, k, v, o, layout, lens_q, lens_k, rows, q_starts, k_starts, biases, H, Hkv, D, causal, scale, nq_ext, nk_ext, uniform)
    torch.cuda.synchronize()
    ref = reference(q, k, v, layout, lens_q, lens_k, q_starts, k_starts, biases, H, Hkv, causal, scale, None)
    worst = 0.0; bad = []
    for b in range(B):
        lq = lens_q[b]
        if layout == "bnhd": ob, pad = o[b, :lq], o[b, lq:]
        elif layout == "bhnd": ob, pad = o[b, :, :lq].transpose(0, 1), o[b, :, lq:]
        else: ob, pad = o[q_starts[b]:q_starts[b]+lq], None
        if torch.isnan(ob).any(): bad.append(f"b{b}: NaN in valid rows")
        if pad is not None and pad.numel() and not (pad == 0).all(): bad.append(f"b{b}: padded rows not zero")
        if lq:
            r = ref[b]; err = (ob.double() - r).abs().max().item(); scl = r.abs().max().item() + 1e-6
            worst = max(worst, err / scl)
    tol = c.get("tol", 2e-2 if c["mode"] == "accurate" else 4e-2)
    ok = not bad and worst <= tol
    print(f"{'PASS' if ok else 'FAIL'} {name:32s} {c['label']:40s} rel_err={worst:.2e} {' '.join(bad)}", flush=True)
    return ok

def cases():
    out = []
    for dtype in ["bf16", "f16"]:
        for D in [64, 128]:
            for mode in ["fast", "accurate"]:
                base = dict(dtype=dtype, D=D, mode=mode)
                out.append(dict(base, label="dense bnhd uniform 256", layout="bnhd", Nq=256, H=2, lens_q=[256, 256], uniform=True))
                out.append(dict(base, label="padded bnhd odd lens", layout="bnhd", Nq=300, H=3, lens_q=[300, 1, 129, 0, 257]))
                out.append(dict(base, label="padded bhnd", layout="bhnd", Nq=200, H=2, lens_q=[200, 77, 128]))
                out.append(dict(base, label="packed varlen", layout="packed", H=2, lens_q=[5, 300, 128, 1, 129]))
                out.append(dict(base, label="causal padded", layout="bnhd", Nq=333, H=2, lens_q=[333, 190], causal=True))
                out.append(dict(base, label="gqa 4:1 packed causal", layout="packed", H=4, Hkv=1, lens_q=[260, 17], causal=True))
                out.append(dict(base, label="cross lq!=lk", layout="bnhd", Nq=100, Nk=300, H=2, lens_q=[100, 50], lens_k=[300, 129]))
                out.append(dict(base, label="NaN/Inf in padding", layout="bnhd", Nq=300, H=2, lens_q=[300, 1, 129, 200], poison_pad=True))
                out.append(dict(base, label="NaN in padding bhnd causal", layout="bhnd", Nq=260, H=2, lens_q=[100, 257], poison_pad=True, causal=True))
                out.append(dict(base, label="no bias, long", layout="bnhd", Nq=1024, H=1, lens_q=[1024], bias=None, uniform=True))
    return out

def bench(name_tag, D, N, pad, mode="fast", reps=20):
    B = 16384 // N; H = 2048 // D
    g = torch.Generator().manual_seed(1)
    if pad: lens = [int(x) for x in torch.randint(N // 2, N + 1, (B,), generator=g)]
    else: lens = [N] * B
    q = torch.randn(B, N, H, D, device="cuda", dtype=torch.bfloat16); k = torch.randn_like(q); v = torch.randn_like(q); o = torch.empty_like(q)
    biases = [-math.log(l) for l in lens]
    go, keep = launch(f"fwd_bf16_d{D}_{mode}{name_tag}", q, k, v, o, "bnhd", lens, lens, [N] * B, [0] * B, [0] * B, biases, H, H, D, False,
                      1 / math.sqrt(D), N, N, uniform=not pad)
    for _ in range(3): go()
    ts = []
    for _ in range(reps):
        s = torch.cuda.Event(enable_timing=True); e = torch.cuda.Event(enable_timing=True)
        s.record(); go(); e.record(); e.synchronize(); ts.append(s.elapsed_time(e))
    t = statistics.median(ts) * 1e-3
    flops = 4 * H * D * sum(l * l for l in lens)
    return flops / t / 1e12, t

if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "test"
    if what == "test":
        tags = sys.argv[2].split(",") if len(sys.argv) > 2 else [""]
        n = f = 0
        for tag in tags:
            for c in cases():
                n += 1
                try:
                    ok = run_case(c, tag)
                except Exception as ex:
                    print("ERROR", c["label"], ex, flush=True); ok = False
                f += not ok
        print(f"conformance: {n - f}/{n} passed")
    elif what == "sanit":
        for c in cases()[:8]:
            if c["label"] in ("padded bnhd odd lens", "causal padded", "packed varlen"):
                run_case(c)
    elif what == "bench":
        tags = sys.argv[2].split(",") if len(sys.argv) > 2 else [""]
        modes = sys.argv[3].split(",") if len(sys.argv) > 3 else ["fast", "accurate"]
        Ns = [int(x) for x in sys.argv[4].split(",")] if len(sys.argv) > 4 else [1024, 4096, 16384]
        for D in [64, 128]:
            for N in Ns:
                for pad in [0, 1]:
                    row = []
                    for tag in tags:
                        for mode in modes:
                            if not os.path.exists(os.path.join(HERE, "cubin", f"fwd_bf16_d{D}_{mode}{tag}.cubin")): continue
                            tf, t = bench(tag, D, N, pad, mode)
                            row.append(f"{mode}{tag}={tf:6.1f}")
                    print(f"D={D} N={N} pad={'25%' if pad else '0%'}: " + "  ".join(row), flush=True)
