"""The fused C kernel of `step` (qstar_kernels/cpu_step.py, csrc/step.c) against the reference.

The reference is `step(..., backend="torch")` (fp32). Tokens must be identical for every method
and sampling setting. alpha must match to 1e-5; where it does not, it must be closer than that
to the float64 reference (the fp32 reference's own error exceeds 1e-5 on small KLs, the C kernel
sums in double) or, for kl_symmetry / ess_balance on near-one-hot rows (Var(d) ~ 1e-3 makes the
stopping rule |f| <= 1e-5 (1 + scale) admit a wide interval), meet that stopping rule exactly.
Everything downstream of alpha (statistics, logq, logp_behavior) is compared with the reference
evaluated at the kernel's alpha (method "fixed"), to 1e-5 (1e-5 * (1 + |x|) for the
statistics), so a 1e-6 difference in alpha cannot flip a top-p boundary token in the test.
"""
import os

import pytest
import torch

from conftest import edge_cases, lm_logits
from qstar_kernels import METHODS, mix, step
from qstar_kernels import cpu_step
from qstar_kernels.api import _pick_backend
from qstar_kernels.philox import philox
from qstar_kernels.ref_mix import log_softmax_masked
from qstar_kernels.ref_solve import Support, _moments

pytestmark = pytest.mark.skipif(not cpu_step.available(), reason="no C compiler: fused CPU step unavailable")

NEG_INF = float("-inf")


@pytest.fixture(autouse=True)
def _one_thread():
    """The comparisons run the reference a lot; one torch thread keeps them quick on a busy box."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


TOKEN_VALUES = ("logp_theta", "logp_t", "logq", "logp_behavior")
STATS = ("log_z", "kl_theta", "kl_t", "ess_theta", "ess_t", "entropy_theta", "entropy_t", "entropy_q")
SETTINGS = [dict(), dict(temperature=0.7), dict(top_k=7), dict(top_p=0.8), dict(min_p=0.05),
            dict(temperature=1.2, top_k=20, top_p=0.9, min_p=0.01), dict(temperature=0.0),
            dict(top_k=1), dict(temperature=1.5, top_p=0.999)]
SET_IDS = [",".join(f"{k}={v}" for k, v in kw.items()) or "plain" for kw in SETTINGS]


def _close(x, y, tol, rel, ctx):
    x, y = x.double(), y.double()
    assert not torch.isnan(x).any(), ctx
    assert torch.equal(torch.isinf(x), torch.isinf(y)), (ctx, x, y)
    fin = torch.isfinite(y)
    err = (x[fin] - y[fin]).abs()
    lim = tol * (1 + y[fin].abs()) if rel else torch.full_like(err, tol)
    assert (err <= lim).all(), (ctx, float((err - lim).max() + lim.max()), x, y)


def _solved(lp, lt, method, a, vocab_size):
    """(B,) bool: a meets the solver's own fp32 stopping rule |f| <= TOL (1 + scale), with f
    evaluated exactly (fp64). Where Var(d) is tiny, every a within TOL (1 + scale) / Var(d) of
    the root does, so fp32 solvers may legitimately stop further apart than 1e-5."""
    LP, LT = log_softmax_masked(lp.double(), vocab_size), log_softmax_masked(lt.double(), vocab_size)
    sup = Support.build(LP, LT)
    if method == "kl_symmetry":
        lz, (g,) = _moments(sup.base, sup.d, a, 2)
        f, scale = g, (-lz).clamp_min(0)
    else:
        lz2, _ = _moments(sup.base, sup.d, 2 - a, 1)
        lzm, _ = _moments(sup.base, sup.d, -a, 1)
        f, scale = lz2 - lzm, torch.maximum(lz2.abs(), lzm.abs())
    return f.abs() <= 1.01e-5 * (1 + scale) + 1e-9


def check(lp, lt, method, kw, tol=1e-5, alpha_only=False, iters_slack=1):
    """cpu vs reference for one configuration (see module docstring)."""
    cpu = step(lp, lt, method, backend="cpu", **kw)
    ref = step(lp, lt, method, backend="torch", **kw)
    ctx = (method, {k: v for k, v in kw.items() if k not in ("keys", "positions")})
    assert cpu.tokens.dtype == torch.int64 and cpu.iters.dtype == torch.int32
    assert cpu.clamped.dtype == torch.bool and cpu.alpha.dtype == torch.float32
    assert torch.equal(cpu.tokens, ref.tokens), (ctx, cpu.tokens, ref.tokens)
    assert torch.equal(cpu.clamped, ref.clamped), ctx
    a_cpu, a_ref = cpu.alpha.double(), ref.alpha.double()
    ok = (a_cpu - a_ref).abs() <= tol
    if not ok.all():  # the fp64 reference decides (only computed when needed: it is slow)
        exact = mix(lp.double(), lt.double(), method, alpha=kw.get("alpha", 0.5),
                    alpha_min=kw.get("alpha_min", 0.0), alpha_max=kw.get("alpha_max", 1.0),
                    vocab_size=kw.get("vocab_size")).alpha
        ok |= (a_cpu - exact).abs() <= (a_ref - exact).abs() + tol
        if not ok.all() and method in ("kl_symmetry", "ess_balance"):
            ok |= _solved(lp, lt, method, a_cpu, kw.get("vocab_size")) & ~cpu.clamped
        assert ok.all(), (ctx, cpu.alpha, ref.alpha, exact)
    if alpha_only:
        return cpu
    assert (cpu.iters - ref.iters).abs().max() <= iters_slack, (ctx, cpu.iters, ref.iters)
    _close(cpu.residual, ref.residual, tol, False, (ctx, "residual"))
    # everything else at the same alpha
    fkw = dict(kw, alpha=cpu.alpha, alpha_min=0.0, alpha_max=1.0)
    same = step(lp, lt, "fixed", backend="torch", **fkw)
    assert torch.equal(cpu.tokens, same.tokens), ctx
    for name in TOKEN_VALUES:
        _close(getattr(cpu, name), getattr(same, name), tol, False, (ctx, name))
    for name in STATS:
        _close(getattr(cpu, name), getattr(same, name), tol, True, (ctx, name))
    return cpu


def _kw(B, seed, **extra):
    g = torch.Generator().manual_seed(seed)
    return dict(keys=torch.randint(-2**40, 2**40, (B,), generator=g),
                positions=torch.randint(0, 2**32, (B,), generator=g), seed=seed * 7919 + 1,
                alpha=torch.rand(B, generator=g), **extra)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kw", SETTINGS, ids=SET_IDS)
def test_lm_logits_match_reference(method, kw):
    B, V = 6, 3000
    lp, lt = lm_logits(B, V, seed=11, dtype=torch.float32)
    lp[1, :7] = NEG_INF        # masked on one side only
    lt[2, 3:9] = NEG_INF
    lp[3, 40:50] = NEG_INF     # masked on both
    lt[3, 40:50] = NEG_INF
    check(lp, lt, method, _kw(B, 3, vocab_size=V - 5, **kw))


@pytest.mark.parametrize("method", METHODS)
def test_shapes_scales_and_padding(method):
    """B from 1 to 16, V from 1 to 50000, flat to peaked logits, vocab_size padding."""
    cases = [(1, 1, 4.0, None), (2, 2, 1.0, None), (3, 17, 8.0, 13), (16, 300, 4.0, 290),
             (5, 4001, 1.0, None), (2, 50000, 4.0, 49990)]
    for i, (B, V, scale, vs) in enumerate(cases):
        lp, lt = lm_logits(B, V, seed=100 + i, scale=scale, dtype=torch.float32)
        for kw in (dict(), dict(temperature=0.9, top_p=0.9, top_k=50)):
            check(lp, lt, method, _kw(B, i, vocab_size=vs, **kw))


@pytest.mark.parametrize("method", ["entropy", "kl_symmetry", "ess_balance", "reverse_kl_symmetry"])
def test_edge_cases(method):
    for V in (48, 700):
        for name, (x, y) in edge_cases(V=V, dtype=torch.float32).items():
            for kw in (dict(), dict(top_p=0.9, temperature=0.8), dict(temperature=0.0)):
                # huge logits: fp32 resolution of alpha moves the statistics by ~1e-3 relative
                check(x, y, method, _kw(1, V, **kw), alpha_only=name == "huge_1e4",
                      iters_slack=2)


def test_clamps_and_no_common_support():
    lp, lt = lm_logits(4, 500, seed=5, dtype=torch.float32)
    lp[3, :250] = NEG_INF          # disjoint supports in row 3: falls back to a = 0
    lt[3, 250:] = NEG_INF
    for method in METHODS:
        check(lp, lt, method, _kw(4, 1, alpha_min=0.45, alpha_max=0.55))
        out = check(lp, lt, method, _kw(4, 2, alpha_min=0.1, alpha_max=0.9, top_k=5))
        assert bool(out.clamped[3]) and float(out.alpha[3]) == 0.0


def test_alpha_at_the_ends_and_extreme_sampling():
    """a = 0 / 1 with masked tokens (KL = inf, ESS = 0 cases), tiny and large temperatures,
    min_p = 1, top_k >= V, a nucleus of one token."""
    lp, lt = lm_logits(4, 700, seed=3, dtype=torch.float32)
    lp[0, :5] = NEG_INF
    lt[1, 5:9] = NEG_INF
    lp[2, 10:20] = NEG_INF
    lt[2, 15:30] = NEG_INF
    for alpha in ([0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0]):
        for s in (dict(), dict(temperature=0.01), dict(temperature=5.0, top_p=0.01), dict(min_p=1.0),
                  dict(top_k=700), dict(top_k=10**9, top_p=0.5), dict(temperature=0.0)):
            kw = dict(keys=torch.arange(4), positions=torch.arange(4), seed=3,
                      alpha=torch.tensor(alpha), **s)
            out = check(lp, lt, "fixed", kw)
            assert (torch.isinf(out.kl_theta) | torch.isinf(out.kl_t)).any()
            assert ((out.ess_theta == 0) | (out.ess_t == 0)).any()


def test_far_tail_and_one_sided_masks():
    """Supports differ (compacted solve) and most tokens lie > 40 nats below the top (the
    kl_symmetry solve prunes them, like ref_solve._prune)."""
    g = torch.Generator().manual_seed(21)
    lp, lt = torch.randn(3, 4000, generator=g) * 3, torch.randn(3, 4000, generator=g) * 3
    lp[:, 200:] -= 70
    lt[:, 150:] -= 65
    lp[0, :3] = NEG_INF
    lt[1, 5:9] = NEG_INF
    for method in ("kl_symmetry", "ess_balance", "reverse_kl_symmetry"):
        for kw in (dict(), dict(top_p=0.9, temperature=0.8)):
            check(lp, lt, method, _kw(3, 6, **kw))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    lp, lt = lm_logits(3, 1000, seed=8, dtype=dtype)
    for method in ("fixed", "kl_symmetry"):
        check(lp, lt, method, _kw(3, 4, top_p=0.95))


def test_ties_greedy_top_k_top_p():
    p = torch.log(torch.tensor([0.1, 0.2, 0.2, 0.2, 0.2, 0.1]))
    x = p.expand(64, 6).contiguous()
    kw = dict(keys=torch.arange(64), positions=torch.zeros(64, dtype=torch.long), seed=5)
    for s in (dict(top_k=2), dict(top_p=0.35), dict(top_p=0.5), dict(min_p=0.9), dict(temperature=0.0)):
        for method in ("fixed", "kl_symmetry"):
            cpu = step(x, x.clone(), method, backend="cpu", **kw, **s)
            ref = step(x, x.clone(), method, backend="torch", **kw, **s)
            assert torch.equal(cpu.tokens, ref.tokens), s
            _close(cpu.logp_behavior, ref.logp_behavior, 1e-5, False, s)
    g = step(x, x.clone(), "fixed", backend="cpu", temperature=0.0, **kw)
    assert (g.tokens == 1).all() and (g.logp_behavior == 0).all()
    assert set(step(x, x.clone(), "fixed", backend="cpu", top_k=2, **kw).tokens.tolist()) == {1, 2}


def test_token_does_not_depend_on_batch():
    lp, lt = lm_logits(7, 2000, seed=9, dtype=torch.float32)
    kw = dict(keys=torch.tensor([5, 9, 2**40 + 3, -7, 0, 11, 3]),
              positions=torch.tensor([0, 3, 1, 9, 4, 2, 2**31 + 5]), seed=77,
              temperature=torch.tensor([0.9, 1.0, 1.3, 0.0, 1.0, 0.7, 1.0]),
              top_p=torch.tensor([0.95, 1.0, 0.8, 1.0, 1.0, 0.9, 1.0]),
              top_k=torch.tensor([0, 0, 10, 0, 3, 0, 0]))
    for method in ("fixed", "kl_symmetry", "ess_balance"):
        full = step(lp, lt, method, backend="cpu", **kw)
        perm = torch.tensor([3, 1, 6, 5, 0, 2, 4])
        pkw = {k: v[perm] if torch.is_tensor(v) else v for k, v in kw.items()}
        again = step(lp[perm], lt[perm], method, backend="cpu", **pkw)
        assert torch.equal(again.tokens, full.tokens[perm])
        assert torch.equal(again.alpha, full.alpha[perm])
        for r in range(7):
            alone = step(lp[r:r + 1], lt[r:r + 1], method, backend="cpu",
                         **{k: v[r:r + 1] if torch.is_tensor(v) else v for k, v in kw.items()})
            assert int(alone.tokens) == int(full.tokens[r])


def test_threads_give_the_same_result():
    lp, lt = lm_logits(9, 3000, seed=12, dtype=torch.float32)
    kw = _kw(9, 5, top_p=0.9)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = step(lp, lt, "kl_symmetry", backend="cpu", **kw)
        torch.set_num_threads(2)
        two = step(lp, lt, "kl_symmetry", backend="cpu", **kw)
    finally:
        torch.set_num_threads(old)
    for name in ("tokens", "alpha", "log_z", "logp_behavior", "iters"):
        assert torch.equal(getattr(one, name), getattr(two, name)), name


def test_no_nan_anywhere():
    V = 64
    for name, (x, y) in edge_cases(V=V, dtype=torch.float32).items():
        for method in METHODS:
            for kw in (dict(), dict(top_k=3, top_p=0.5, min_p=0.1, temperature=0.5), dict(temperature=0.0)):
                out = step(x, y, method, backend="cpu", vocab_size=V - 4, **_kw(1, 0, **kw))
                for f, v in vars(out).items():
                    if v.dtype.is_floating_point:
                        assert not torch.isnan(v).any(), (name, method, f)


def test_philox_chunk_matches_reference():
    lib = cpu_step._lib()
    out = torch.empty(1500, dtype=torch.int32)
    for seed, key, pos, y0 in [(0, 0, 0, 0), (2**63 - 1, -1, 2**32 - 1, 7), (12345, 2**40 + 9, 77, 1000)]:
        lib.qstar_philox(seed, key, pos, y0, 1500, out.data_ptr())
        y = torch.arange(y0, y0 + 1500, dtype=torch.int64)
        M = 0xFFFFFFFF
        s = torch.tensor(seed)
        k = torch.tensor(key)
        want = philox(s, y & M, torch.tensor(pos) & M, k & M, (k >> 32) & M)
        assert torch.equal(out.to(torch.int64) & M, want), (seed, key, pos)


def test_exp_polynomial():
    lib = cpu_step._lib()
    x = torch.cat([torch.linspace(-87, 0, 100001), torch.tensor([-87.5, -100.0, -1e30, NEG_INF])])
    y = torch.empty_like(x)
    lib.qstar_exp(x.data_ptr(), y.data_ptr(), x.numel())
    ref = torch.exp(x[:100001].double())
    assert ((y[:100001].double() - ref).abs() / ref).max() < 3e-7
    assert (y[100001:] == 0).all()


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []


def test_routing_and_other_builds(tmp_path, monkeypatch):
    x = torch.zeros(1, 4)
    assert _pick_backend(None, x, fused_step=True) == "cpu"
    assert _pick_backend(None, x) == "torch"                       # mix / sample: no C path
    assert _pick_backend(None, x.double(), fused_step=True) == "torch"
    # other targets (portable: generic exp/Philox; AVX2 where the CPU has it) in a fresh cache;
    # -O1 halves their compile time, the code paths are the same
    monkeypatch.setenv("QSTAR_CACHE_DIR", str(tmp_path))
    variants = [(["-O1"], 0)]
    if os.uname().machine == "x86_64" and {"avx2", "fma"} <= set(_cpu_flags()):
        variants.append((["-mavx2", "-mfma", "-O1"], 1))
    lp, lt = lm_logits(4, 5000, seed=2, dtype=torch.float32)
    from concurrent.futures import ThreadPoolExecutor

    from qstar_kernels import checks
    with ThreadPoolExecutor(len(variants)) as pool:  # the compiles run side by side
        libs = list(pool.map(cpu_step.build, [arch for arch, _ in variants]))
    for (arch, impl), lib in zip(variants, libs):
        assert lib.qstar_philox_impl() == impl
        out = torch.empty(300, dtype=torch.int32)
        lib.qstar_philox(99, 5, 3, 10, 300, out.data_ptr())
        y = torch.arange(10, 310)
        assert torch.equal(out.to(torch.int64) & 0xFFFFFFFF, philox(torch.tensor(99), y, torch.tensor(3),
                                                                     torch.tensor(5), torch.tensor(0)))
        for method in ("fixed", "kl_symmetry"):
            a = checks.check_mix_args(lp, lt, method, 0.3, 0.0, 1.0, None, False)
            args = checks.check_sample_args(lp, 0.9, 0, 0.95, 0.0, 3, torch.arange(4), torch.arange(4), False)
            other = cpu_step.step_cpu(lp, lt, method, a, 0.0, 1.0, None, *args, lib=lib)
            nat = cpu_step.step_cpu(lp, lt, method, a, 0.0, 1.0, None, *args)
            assert torch.equal(other.tokens, nat.tokens)
            assert (other.alpha - nat.alpha).abs().max() <= 1e-6
            assert (other.log_z - nat.log_z).abs().max() <= 1e-5
    so = list(tmp_path.glob("qstar_step_*.so"))
    assert len(so) == len(variants) and not list(tmp_path.glob("*.tmp"))   # atomic, no leftovers
    cpu_step.build(["-O1"])                                                 # cached: no rebuild
    assert sorted(tmp_path.glob("qstar_step_*.so")) == sorted(so)


def test_bench_step_runs_small():
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-m", "bench.step", "--batch", "2", "--vocab", "300",
                        "--repeat", "1"], cwd=root, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["bench"] == "step_cpu" and len(last["rows"]) == 2
    assert all(row["cpu_fixed_ms"] > 0 and row["cpu_kl_over_fixed"] > 0 for row in last["rows"])
