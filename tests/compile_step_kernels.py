"""Compile every fused-step kernel variant the engine can launch for real GPU targets (no GPU
needed) and print ptxas' registers / spills per variant, one JSON line each, then a summary.

    python tests/compile_step_kernels.py [--targets 80:152064,89:152064,90:152064+151937]

Run in a subprocess by tests/test_compile_gpu.py, under the pinned triton and under the triton
that PYTHONPATH puts first (e.g. .triton39/). The variants come from recording the launches of
triton_step.step_triton itself (methods x forced rows x dtypes x vocabularies): each kernel's real
argument list, specialised by triton's own specialisation routine (pointer / integer divisibility
by 16, integers equal to 1), so the signature and hints are those a launch would compile.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported

import torch  # noqa: E402
import triton  # noqa: E402
from triton._C.libtriton import native_specialize_impl  # noqa: E402
from triton.backends.compiler import BaseBackend, GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from qstar_kernels import METHODS, triton_step  # noqa: E402


def record_variants(vocabs, dtypes=(torch.bfloat16, torch.float16, torch.float32)):
    """{key: (jit fn, signature, constexprs, attrs)} over every launch the step makes."""
    found = {}

    def rec(kernel, grid, *args, **meta):
        opts = dict(enable_fp_fusion=meta.pop("enable_fp_fusion", False), num_warps=meta.pop("num_warps", 4))
        bound = dict(zip(kernel.arg_names, args), **meta)
        sig, consts, attrs = {}, {}, {}
        for i, p in enumerate(kernel.params):
            v = bound[p.name]
            if p.is_constexpr:
                sig[p.name], consts[p.name] = "constexpr", v
                continue
            ty, attr = native_specialize_impl(BaseBackend, v, False, not p.do_not_specialize,
                                              not p.do_not_specialize_on_alignment)[:2]
            if ty == "constexpr":
                sig[p.name], consts[p.name] = "constexpr", v
            else:
                sig[p.name] = ty
                if attr:
                    attrs[(i,)] = BaseBackend.parse_attr(attr)
        key = (kernel.fn.__name__, json.dumps(sig), repr(sorted(consts.items())), repr(sorted(attrs.items())),
               repr(sorted(opts.items())))
        found.setdefault(key, (kernel, sig, consts, attrs, opts))

    orig = triton_step.launch
    triton_step.launch = rec
    try:
        for V in vocabs:
            for dtype in dtypes:
                for method in METHODS:
                    for forced in (False, True):
                        B = 2
                        x = torch.zeros(B, V, dtype=dtype)
                        f32 = torch.zeros(B)
                        i64 = torch.zeros(B, dtype=torch.int64)
                        triton_step.step_triton(x, x.clone(), method, f32, 0.0, 1.0, None, f32, i64, f32, f32,
                                                i64, i64, i64, force=(i64 > 0) if forced else None)
    finally:
        triton_step.launch = orig
    return found


def ptxas_report(log: str):
    regs = [int(m) for m in re.findall(r"Used (\d+) registers", log)]
    spills = [int(a) + int(b) for a, b in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)]
    return (max(regs) if regs else None), (sum(spills) if spills else None)


def ptxas(ptx: str, arch: int):
    """Registers and spill bytes from `ptxas -v` on the kernel's PTX (fmad off, as launched)."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        r = subprocess.run([get_ptxas(arch).path, "-v", "--fmad=false", f"--gpu-name=sm_{arch}a" if arch == 90 else
                            f"--gpu-name=sm_{arch}", src, "-o", os.path.join(d, "k.o")],
                           capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return ptxas_report(r.stderr + r.stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", default="80:152064,89:152064,90:152064+151937",
                    help="arch:vocab[+vocab...] pairs (a vocabulary not a multiple of 16 drops the hints)")
    args = ap.parse_args()
    t0 = time.time()
    worst = dict(regs=0, spills=0, n=0)
    for item in args.targets.split(","):
        arch, vocabs = item.split(":")
        arch = int(arch)
        variants = record_variants([int(v) for v in vocabs.split("+")])
        target = GPUTarget("cuda", arch, 32)
        for (name, _s, consts, _a, _o), (fn, s, c, attrs, opts) in sorted(variants.items(), key=lambda kv: kv[0]):
            k = triton.compile(ASTSource(fn, s, c, attrs), target=target, options=opts)
            regs, spills = ptxas(k.asm["ptx"], arch)
            print(json.dumps(dict(arch=f"sm_{arch}", kernel=name, dtype=s.get("xp_ptr", "-"), constexprs=consts,
                                  hints=len(attrs), warps=opts["num_warps"], regs=regs, spills=spills)), flush=True)
            worst = dict(regs=max(worst["regs"], regs or 0), spills=max(worst["spills"], spills or 0), n=worst["n"] + 1)
    print(json.dumps(dict(summary=True, triton=triton.__version__, compiled=worst["n"], max_regs=worst["regs"],
                          max_spills=worst["spills"], seconds=round(time.time() - t0, 1))))


if __name__ == "__main__":
    main()
