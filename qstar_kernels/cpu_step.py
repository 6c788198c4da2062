"""Fused CPU backend of `step`: a plain C kernel (csrc/step.c) built on first use, called via ctypes.

`available()` says whether it can run here (a C compiler and a successful build; cached, never
raises). `step_cpu(...)` takes the arguments already validated by checks.check_mix_args /
check_sample_args and returns a Step matching the PyTorch reference (ref_mix + ref_sample) to
fp32 rounding: same alpha solve, statistics, truncation and Philox/Gumbel race, hence the same
tokens. Logits are converted to contiguous-row fp32 (bf16/fp16 accepted; fp64 never routes here).

Build: `$CC` (else gcc, else cc) with -O3 -march=native -ffp-contract=off -fopenmp, falling back
to no OpenMP and then to no -march=native; the .so lives in `$QSTAR_CACHE_DIR` (default
~/.cache/qstar) under a name hashing source, flags, compiler version and CPU, and is written to a
temp file then renamed, so concurrent processes never load a half-written library.
Threads: rows run in parallel on `torch.get_num_threads()` threads.
The call is registered as the torch.library custom op `qstar::step_cpu` (with a fake for its
output shapes), so torch.compile(fullgraph=True) of a decode step treats it as one opaque node.
Not for: `mix` / `sample` alone (they have no C path) or GPU tensors.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from .types import METHODS, Step

SOURCE = Path(__file__).resolve().parent / "csrc" / "step.c"
NOUT = 14  # per-row float outputs, order of the O_* enum in step.c
BASE_FLAGS = ["-O3", "-std=c11", "-shared", "-fPIC", "-ffp-contract=off", "-fno-math-errno",
              "-fno-trapping-math"]
_lock = threading.Lock()


def cache_dir() -> Path:
    return Path(os.environ.get("QSTAR_CACHE_DIR") or Path.home() / ".cache" / "qstar")


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "gcc", "cc"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_id() -> str:
    """What -march=native depends on (so a shared cache dir never serves a foreign build)."""
    ident = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features", "CPU part")):
                    ident.append(line.strip())
                if line.strip() == "":
                    break
    except OSError:
        pass
    return "\n".join(ident)


def native_flags() -> list[str]:
    flags = ["-march=native"]
    if platform.machine() in ("x86_64", "AMD64", "i686"):
        flags.append("-mprefer-vector-width=512")  # a no-op without AVX-512
    return flags


def _flag_sets(arch: list[str]) -> list[list[str]]:
    """Flag sets to try in order: OpenMP, then without (no libgomp), then without `arch`."""
    sets = [BASE_FLAGS + arch + ["-fopenmp"], BASE_FLAGS + arch + ["-fopenmp-simd"]]
    if arch:
        sets.append(BASE_FLAGS + ["-fopenmp-simd"])
    return sets


def _compile(cc: str, flags: list[str]) -> Path:
    """Build (or find in the cache) the library for these flags; raises on failure."""
    src = SOURCE.read_bytes()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(b"\0".join([src, " ".join(flags).encode(), cc.encode(), version.encode(),
                                     _cpu_id().encode()])).hexdigest()[:20]
    out_dir = cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"qstar_step_{key}.so"
    if target.exists():
        return target
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".tmp", dir=out_dir)
    os.close(fd)
    try:
        r = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp, "-lm"], capture_output=True,
                           text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"{cc} failed ({' '.join(flags)}):\n{r.stderr[-2000:]}")
        os.replace(tmp, target)  # atomic: readers see no file or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_float
    lib.qstar_step.restype = i32
    lib.qstar_step.argtypes = [p, p, i64, i64, i64, i32, p, f32, f32, p, p, p, p, p, p, p, p, p,
                               p, p, p, i32]
    lib.qstar_nout.restype = i32
    lib.qstar_philox_impl.restype = i32
    lib.qstar_philox.restype = i32
    lib.qstar_philox.argtypes = [i64, i64, i64, i64, i64, p]
    lib.qstar_exp.restype = None
    lib.qstar_exp.argtypes = [p, p, i64]
    if lib.qstar_nout() != NOUT:
        raise RuntimeError("csrc/step.c and cpu_step.py disagree on the outputs")
    return lib


def build(arch: list[str] | None = None) -> ctypes.CDLL:
    """Compile (or reuse) and load the kernel; raises with the compiler's messages on failure.
    arch: target flags (default native_flags(); [] builds the portable generic exp/Philox code)."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set $CC, or install gcc)")
    errors = []
    for flags in _flag_sets(native_flags() if arch is None else list(arch)):
        try:
            return _bind(ctypes.CDLL(str(_compile(cc, flags))))
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:  # e.g. no libgomp
            errors.append(str(e))
    raise RuntimeError("could not build the qstar CPU kernel:\n" + "\n".join(errors))


_LIB: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        with _lock:
            if _LIB is None:
                _LIB = build()
    return _LIB


@functools.cache
def available() -> bool:
    """True when a C compiler exists and the kernel builds and loads here (cached; never raises)."""
    try:
        _lib()
        return True
    except Exception:
        return False


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).contiguous()


def step_cpu(logits_theta, logits_t, method, alpha, alpha_min, alpha_max, vocab_size,
             temperature, top_k, top_p, min_p, seeds, keys, positions, *, force=None, lib=None) -> Step:
    """The fused step on CPU (arguments already validated; all per-row values are (B,) tensors).
    force: (B,) bool or None; forced rows are method "fixed" at a = 0 with no clamps.
    Runs as the custom op torch.ops.qstar.step_cpu (opaque to torch.compile) unless `lib` names
    a specific build."""
    vocab = logits_theta.shape[1] if vocab_size is None else int(vocab_size)
    args = (logits_theta, logits_t, method, alpha, float(alpha_min), float(alpha_max), vocab, temperature,
            top_k, top_p, min_p, seeds, keys, positions, force)
    tokens, out, iters, clamped = _run(lib, *args) if lib is not None else torch.ops.qstar.step_cpu(*args)
    o = out.unbind(0)
    return Step(tokens=tokens, logp_theta=o[0], logp_t=o[1], logq=o[2], logp_behavior=o[3],
                alpha=o[4], log_z=o[5], kl_theta=o[6], kl_t=o[7], ess_theta=o[8], ess_t=o[9],
                entropy_theta=o[10], entropy_t=o[11], entropy_q=o[12], iters=iters,
                residual=o[13], clamped=clamped)


@torch.library.custom_op("qstar::step_cpu", mutates_args=())
def _step_op(logits_theta: torch.Tensor, logits_t: torch.Tensor, method: str, alpha: torch.Tensor,
             alpha_min: float, alpha_max: float, vocab: int, temperature: torch.Tensor, top_k: torch.Tensor,
             top_p: torch.Tensor, min_p: torch.Tensor, seeds: torch.Tensor, keys: torch.Tensor,
             positions: torch.Tensor, force: torch.Tensor | None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """tokens (B,) int64, out (NOUT, B) fp32, iters (B,) int32, clamped (B,) bool."""
    return _run(None, logits_theta, logits_t, method, alpha, alpha_min, alpha_max, vocab, temperature, top_k,
                top_p, min_p, seeds, keys, positions, force)


@_step_op.register_fake
def _step_shapes(logits_theta, logits_t, method, alpha, alpha_min, alpha_max, vocab, temperature, top_k,
                 top_p, min_p, seeds, keys, positions, force):
    B = logits_theta.shape[0]
    new = logits_theta.new_empty
    return (new(B, dtype=torch.int64), new((NOUT, B), dtype=torch.float32), new(B, dtype=torch.int32),
            new(B, dtype=torch.bool))


def _run(lib, logits_theta, logits_t, method, alpha, alpha_min, alpha_max, vocab, temperature, top_k, top_p,
         min_p, seeds, keys, positions, force):
    """The ctypes call: fresh output tensors, nothing aliased to the inputs."""
    lib = lib or _lib()
    B, V = logits_theta.shape
    xp, xt = logits_theta, logits_t
    if xp.dtype != torch.float32 or xp.stride(-1) != 1:
        xp = _f32(xp)
    if xt.dtype != torch.float32 or xt.stride(-1) != 1:
        xt = _f32(xt)
    if xt.stride(0) != xp.stride(0):
        xp, xt = xp.contiguous(), xt.contiguous()
    alpha, temperature, top_p, min_p = (_f32(t) for t in (alpha, temperature, top_p, min_p))
    top_k, seeds, keys, positions = (t.to(torch.int64).contiguous()
                                     for t in (top_k, seeds, keys, positions))
    tokens = torch.empty(B, dtype=torch.int64)
    out = torch.empty((NOUT, B), dtype=torch.float32)
    iters = torch.empty(B, dtype=torch.int32)
    clamped = torch.empty(B, dtype=torch.bool)
    force_u8 = None if force is None else force.to(torch.uint8).contiguous()
    err = lib.qstar_step(xp.data_ptr(), xt.data_ptr(), B, xp.stride(0), vocab,
                         METHODS.index(method), alpha.data_ptr(), float(alpha_min),
                         float(alpha_max), temperature.data_ptr(), top_k.data_ptr(),
                         top_p.data_ptr(), min_p.data_ptr(), seeds.data_ptr(), keys.data_ptr(),
                         positions.data_ptr(), tokens.data_ptr(), out.data_ptr(),
                         iters.data_ptr(), clamped.data_ptr(),
                         None if force_u8 is None else force_u8.data_ptr(), torch.get_num_threads())
    if err:
        raise MemoryError("qstar CPU step: out of memory for the per-thread scratch buffers")
    return tokens, out, iters, clamped
