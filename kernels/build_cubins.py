#!/usr/bin/env python3
"""Compile every Hopper kernel variant to an sm_90a cubin with a pinned NVRTC, or check them.

    python3 kernels/build_cubins.py           # (re)build kernels/cubin/*.cubin + manifest.json
    python3 kernels/build_cubins.py --check   # recompile, verify the committed cubins match

NVRTC comes from the PyPI wheel `nvidia-cuda-nvrtc==13.5.37` (pip install it first; this script
installs nothing). The library is looked up on sys.path (nvidia/cu13/lib) or taken from
$SA_NVRTC_LIB. NVRTC 13.0.x is refused: it crashes on wgmma code.

Both modes fail (exit status 1) on register spills, on a stack frame, or on ptxas warnings that
wgmma was serialized. --check also fails when a source, the options or the NVRTC version differ
from the manifest, or when the recompiled cubin differs from the committed one.

    python3 kernels/build_cubins.py --check --sass   # also read the SASS of every entry

--sass disassembles each entry (cuobjdump and nvdisasm from the PyPI wheels
`nvidia-cuda-cuobjdump==13.5.37` and `nvidia-cuda-nvdisasm==13.5.37`) and fails when an entry
that computes attention products has no HGMMA (tensor-core) instruction or when any entry uses
local memory (LDL/STL); it prints the counts (HGMMA, MUFU, STSM, REDG, UBLKRED) per entry.
"""
import argparse
import ctypes
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CUBIN_DIR = os.path.join(HERE, "cubin")
MANIFEST = os.path.join(CUBIN_DIR, "manifest.json")
PINNED_NVRTC = (13, 5)

# Kernel -> source file. Every variant of a kernel is the product of the axes below.
KERNELS = {"fwd": "fwd_sm90.cu", "bwd": "bwd_sm90.cu"}
# Entry points of each kernel's cubin (the backward cubin holds four).
ENTRIES = {
    "fwd": ["sigmoid_attn_fwd", "sigmoid_attn_fwd_ordered"],
    "bwd": ["sigmoid_attn_bwd_dkdv", "sigmoid_attn_bwd_dq", "sigmoid_attn_bwd_dq_convert",
            "sigmoid_attn_bwd_dbias"],
}
DTYPES = {"bf16": [], "f16": ["-DSA_F16"]}
HEAD_DIMS = [64, 128]
MODES = {"fast": [], "accurate": ["-DSA_ACCURATE"]}
BASE_OPTIONS = ["--gpu-architecture=sm_90a", "-std=c++17", "--ptxas-options=-v", "-default-device"]

# ptxas messages that mean the tensor-core pipeline was broken up or registers went to memory.
BAD_PATTERNS = [r"C751\d", r"C7508", r"[Ss]erializ", r"Potential Performance Loss"]

# Entries whose SASS must contain wgmma (HGMMA): the ones that compute the attention products.
TENSOR_ENTRIES = {"sigmoid_attn_fwd", "sigmoid_attn_fwd_ordered", "sigmoid_attn_bwd_dkdv", "sigmoid_attn_bwd_dq"}

INCLUDE_RE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


def flatten(path, seen=None):
    """The source with local #include "x" expanded once each (what NVRTC compiles, and hashes)."""
    seen = set() if seen is None else seen
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = INCLUDE_RE.match(line)
            if m:
                inc = os.path.join(os.path.dirname(path), m.group(1))
                if inc not in seen:
                    seen.add(inc)
                    out.append(flatten(inc, seen))
                continue
            if line.strip() == "#pragma once":
                continue
            out.append(line)
    return "".join(out)


def variants():
    for kernel, src in KERNELS.items():
        for dt, dt_opts in DTYPES.items():
            for d in HEAD_DIMS:
                for mode, mode_opts in MODES.items():
                    name = f"{kernel}_{dt}_d{d}_{mode}"
                    yield name, src, BASE_OPTIONS + [f"-DSA_HEAD_DIM={d}"] + dt_opts + mode_opts


def find_nvrtc():
    env = os.environ.get("SA_NVRTC_LIB")
    if env:
        return env
    for p in sys.path:
        hits = sorted(glob.glob(os.path.join(p, "nvidia", "cu13", "lib", "libnvrtc.so.13")))
        if hits:
            return hits[0]
    sys.exit("build_cubins: libnvrtc.so.13 not found; run `python3 -m pip install "
             "nvidia-cuda-nvrtc==13.5.37` or set SA_NVRTC_LIB")


class Nvrtc:
    def __init__(self, path):
        libdir = os.path.dirname(path)
        # NVRTC dlopens its builtins library by soname; loading it first makes that succeed
        # without LD_LIBRARY_PATH.
        for b in glob.glob(os.path.join(libdir, "libnvrtc-builtins.so*")):
            ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
        self.lib = ctypes.CDLL(path)
        major, minor = ctypes.c_int(), ctypes.c_int()
        self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
        self.version = (major.value, minor.value)
        if self.version[:2] == (13, 0):
            sys.exit("build_cubins: NVRTC 13.0 is known to crash on wgmma kernels; use 13.5.37")

    def compile(self, source, name, options):
        lib = self.lib
        prog = ctypes.c_void_p()
        lib.nvrtcCreateProgram.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p,
                                           ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
        rc = lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None)
        if rc != 0:
            raise RuntimeError(f"nvrtcCreateProgram failed: {rc}")
        opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
        lib.nvrtcCompileProgram.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
        rc = lib.nvrtcCompileProgram(prog, len(options), opts)
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        log = log.value.decode(errors="replace")
        cubin = None
        if rc == 0:
            lib.nvrtcGetCUBINSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetCUBIN(prog, buf)
            cubin = buf.raw
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
        return cubin, log


def ptxas_report(log):
    """Registers, stack, spills and static shared memory: the worst over the entry points."""
    regs = re.findall(r"Used (\d+) registers", log)
    stack = re.findall(r"(\d+) bytes stack frame", log)
    spills = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    smem = re.findall(r"(\d+) bytes smem", log)
    return {
        "registers": max(int(r) for r in regs) if regs else None,
        "stack_bytes": max([int(s) for s in stack] or [0]),
        "spill_bytes": max([int(a) + int(b) for a, b in spills] or [0]),
        "static_smem": max([int(x) for x in smem] or [0]),
    }


def per_entry_registers(log):
    """{entry: registers} from ptxas's "Compiling entry function 'x'" / "Used N registers"."""
    out, current = {}, None
    for line in log.splitlines():
        m = re.search(r"entry function '([^']+)'", line)
        if m:
            current = m.group(1)
        m = re.search(r"Used (\d+) registers", line)
        if m and current:
            out[current] = int(m.group(1))
    return out


def problems(report, log):
    out = []
    if report["spill_bytes"]:
        out.append(f"{report['spill_bytes']} bytes of register spills")
    if report["stack_bytes"]:
        out.append(f"{report['stack_bytes']} bytes stack frame")
    for pat in BAD_PATTERNS:
        for line in log.splitlines():
            if re.search(pat, line):
                out.append(line.strip())
    return sorted(set(out))


def find_tool(name):
    """A CUDA binary tool from the PyPI wheels (nvidia/cu13/bin on sys.path), else from PATH."""
    for p in sys.path:
        hit = os.path.join(p, "nvidia", "cu13", "bin", name)
        if os.path.isfile(hit) and os.access(hit, os.X_OK):
            return hit
    return shutil.which(name)


class SassAudit:
    """Counts what matters in the SASS of each entry point of a cubin."""

    def __init__(self):
        self.cuobjdump = find_tool("cuobjdump")
        nvdisasm = find_tool("nvdisasm")
        if not self.cuobjdump or not nvdisasm:
            sys.exit("build_cubins: --sass needs cuobjdump and nvdisasm; run `python3 -m pip install "
                     "nvidia-cuda-cuobjdump==13.5.37 nvidia-cuda-nvdisasm==13.5.37`")
        self.env = {**os.environ, "NVDISASM_PATH": os.path.dirname(nvdisasm)}

    def audit(self, cubin, entries):
        """({entry: counts}, [problems]) for the given cubin bytes."""
        counts, bad = {}, []
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(cubin)
            f.flush()
            for entry in entries:
                out = subprocess.run([self.cuobjdump, "-sass", "-fun", entry, f.name], env=self.env,
                                     capture_output=True, text=True)
                if out.returncode != 0:
                    bad.append(f"{entry}: cuobjdump failed: {out.stderr.strip()[:200]}")
                    continue
                text = out.stdout
                c = {
                    "HGMMA": len(re.findall(r"\bHGMMA\.", text)),
                    "MUFU": len(re.findall(r"\bMUFU\.", text)),
                    "STSM": len(re.findall(r"\bSTSM\b", text)),
                    "REDG": len(re.findall(r"\bREDG\.", text)),
                    "UBLKRED": len(re.findall(r"\bUBLKRED\.", text)),
                    "local": len(re.findall(r"\b(?:LDL|STL)\b", text)),
                }
                counts[entry] = c
                if entry in TENSOR_ENTRIES and c["HGMMA"] == 0:
                    bad.append(f"{entry}: no HGMMA in the SASS (wgmma lost)")
                if entry == "sigmoid_attn_bwd_dkdv" and c["UBLKRED"] == 0:
                    bad.append(f"{entry}: no UBLKRED (the bulk reduction of dQ was lost)")
                if c["local"]:
                    bad.append(f"{entry}: {c['local']} local-memory instructions (LDL/STL)")
        return counts, bad


def sha(data):
    return hashlib.sha256(data if isinstance(data, bytes) else data.encode()).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="verify the committed cubins instead of writing")
    ap.add_argument("--only", help="substring filter on variant names")
    ap.add_argument("--sass", action="store_true", help="also audit the SASS of every entry")
    args = ap.parse_args()
    sass = SassAudit() if args.sass else None

    nvrtc = Nvrtc(find_nvrtc())
    ver = f"{nvrtc.version[0]}.{nvrtc.version[1]}"
    print(f"NVRTC {ver} ({find_nvrtc()})")
    if nvrtc.version[:2] != PINNED_NVRTC:
        print(f"warning: cubins are pinned to NVRTC {PINNED_NVRTC[0]}.{PINNED_NVRTC[1]}")

    old = {}
    if os.path.exists(MANIFEST):
        with open(MANIFEST) as f:
            old = {v["name"]: v for v in json.load(f)["variants"]}
    failures = []
    entries = []
    for name, src, options in variants():
        if args.only and args.only not in name:
            if name in old:
                entries.append(old[name])
            continue
        source = flatten(os.path.join(HERE, src))
        cubin, log = nvrtc.compile(source, src, options)
        if cubin is None:
            failures.append(f"{name}: compile failed\n{log}")
            print(f"{name}: COMPILE FAILED\n{log}")
            continue
        rep = ptxas_report(log)
        bad = problems(rep, log)
        print(f"{name}: {rep['registers']} registers, {rep['spill_bytes']} spill bytes, "
              f"{rep['stack_bytes']} stack bytes, cubin {len(cubin)} bytes")
        for b in bad:
            failures.append(f"{name}: {b}")
        if sass:
            counts, sass_bad = sass.audit(cubin, ENTRIES[name.split("_")[0]])
            for entry, c in counts.items():
                print(f"    {entry}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
            failures += [f"{name}: {b}" for b in sass_bad]
        entry = {
            "name": name,
            "kernel": ENTRIES[name.split("_")[0]][0],
            "entries": ENTRIES[name.split("_")[0]],
            "registers_per_entry": per_entry_registers(log),
            "source": src,
            "options": options,
            "source_sha256": sha(source),
            "nvrtc": ver,
            "cubin_sha256": sha(cubin),
            "registers": rep["registers"],
            "spill_bytes": rep["spill_bytes"],
        }
        entries.append(entry)
        path = os.path.join(CUBIN_DIR, name + ".cubin")
        if args.check:
            prev = old.get(name)
            if prev is None:
                failures.append(f"{name}: not in the manifest")
                continue
            for key in ("source_sha256", "options", "nvrtc"):
                if prev[key] != entry[key]:
                    failures.append(f"{name}: {key} differs from the manifest (rebuild the cubins)")
            if not os.path.exists(path):
                failures.append(f"{name}: {path} missing")
            else:
                with open(path, "rb") as f:
                    committed = f.read()
                if sha(committed) != prev["cubin_sha256"]:
                    failures.append(f"{name}: committed cubin does not match the manifest")
                if committed != cubin:
                    failures.append(f"{name}: recompiled cubin differs from the committed one")
        else:
            os.makedirs(CUBIN_DIR, exist_ok=True)
            with open(path, "wb") as f:
                f.write(cubin)

    if not args.check:
        with open(MANIFEST, "w") as f:
            json.dump({"nvrtc": ver, "variants": entries}, f, indent=1)
            f.write("\n")
    if failures:
        print("\nFAILED:")
        for x in failures:
            print("  " + x)
        sys.exit(1)
    print("ok" + (" (cubins match the sources)" if args.check else ""))


if __name__ == "__main__":
    main()
