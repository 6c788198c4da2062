"""The fused Triton step (triton_step.py + triton_race.py) against the PyTorch reference.

CPU: TRITON_INTERPRET=1 (conftest). Cases (the issue's list):
  - V = 2500 (not a multiple of 16, 3 chunks), every method x {controls off, support_top_k 50 +
    support_top_p 0.95 + forced rows}, each batch mixing plain rows (T = 1) and truncated rows
    (T 0.8 + top-k 50 + top-p 0.9 + min-p 0.01) and a greedy row, with masked tokens, exact ties
    and vocab_size padding; B = 3 for every method, B = 1 and B = 17 for kl_symmetry;
  - V = 151937, B = 2, kl_symmetry and fixed, top-k 50;
  - V = 152064, B = 1, kl_symmetry, plain and top-p 0.9 (with pass counts);
plus split invariance, bf16, the bisection fallback, and the fused C step.
Tolerances: values 1e-5 abs (KL / log Z / H(q) relative to 1 + |value|), alpha 1e-5 (5e-5 for
ess_balance, whose h(a) is flat near the root on these rows).
"""
import numpy as np
import pytest
import torch

from conftest import lm_logits
from qstar_kernels import METHODS, equation_residual, step

triton = pytest.importorskip("triton")
from qstar_kernels import triton_race, triton_step  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
VALUES = ("logp_theta", "logp_t", "logq", "logp_behavior", "log_z", "kl_theta", "kl_t", "ess_theta",
          "ess_t", "entropy_theta", "entropy_t", "entropy_q", "residual")
RELATIVE = ("kl_theta", "kl_t", "log_z", "entropy_q")
TRUNC = dict(temperature=0.8, top_k=50, top_p=0.9, min_p=0.01)


def _pair(B, V, seed, dtype=torch.float32):
    lp, lt = lm_logits(B, V, seed=seed, dtype=torch.float32)
    lp[0, 5:40] = float("-inf")           # masked tokens, one side
    if B > 1:
        lt[1, 100:130] = float("-inf")
        lp[1, 7:12] = lp[1, 3]            # exact ties (both models) near any boundary
        lt[1, 7:12] = lt[1, 3]
    return lp.to(dtype), lt.to(dtype)


def _sampling(B, mixed=True):
    """Per-row tensors: even rows plain, odd rows truncated, the last row greedy (B >= 3)."""
    odd = torch.arange(B) % 2 == 1 if mixed else torch.zeros(B, dtype=torch.bool)
    kw = dict(temperature=torch.where(odd, TRUNC["temperature"], 1.0),
              top_k=torch.where(odd, TRUNC["top_k"], 0), top_p=torch.where(odd, TRUNC["top_p"], 1.0),
              min_p=torch.where(odd, TRUNC["min_p"], 0.0))
    if B >= 3:
        kw["temperature"][-1] = 0.0
    return dict(kw, seed=17, keys=torch.arange(B) * 7 + 3, positions=torch.arange(B) + 11)


def _controls(B, V):
    return dict(support_top_k=50, support_top_p=0.95, force=torch.arange(B) % 3 == 2)


def _run(lp, lt, method, backend, **kw):
    dev = DEV if backend == "triton" else "cpu"
    kw = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in kw.items()}
    return step(lp.to(dev), lt.to(dev), method, backend=backend, **kw)


def _compare(tri, ref, method, ctx, atol=1e-5, tokens=True):
    if tokens:
        assert torch.equal(tri.tokens.cpu(), ref.tokens), (ctx, tri.tokens, ref.tokens)
    a_tol = 5e-5 if method == "ess_balance" else atol
    assert (tri.alpha.cpu() - ref.alpha).abs().max() <= a_tol, (ctx, "alpha")
    for name in VALUES:
        x, y = getattr(tri, name).double().cpu(), getattr(ref, name).double()
        assert torch.equal(torch.isinf(x), torch.isinf(y)), (ctx, name, x, y)
        fin = torch.isfinite(y)
        tol = atol * (1 + y[fin].abs()) if name in RELATIVE else atol
        if name == "residual":
            tol = 2e-5
        err = (x[fin] - y[fin]).abs()
        assert (err <= tol).all(), (ctx, name, float(err.max()))
    assert torch.equal(tri.clamped.cpu(), ref.clamped), ctx
    assert torch.equal(tri.forced.cpu(), ref.forced), ctx


def _compare_large_v(tri, lp, lt, method, kw, ctx):
    """Tokens = the fp32 reference's; values against the reference in fp64: at V ~ 152k torch's
    fp32 log_softmax is itself ~2.5e-5 off the exact value (the kernel's chunked sums ~1e-6)."""
    ref32 = _run(lp, lt, method, "torch", **kw)
    assert torch.equal(tri.tokens.cpu(), ref32.tokens), ctx
    ref64 = _run(lp.double(), lt.double(), method, "torch", **kw)
    assert torch.equal(ref64.tokens, ref32.tokens), ctx
    _compare(tri, ref64, method, ctx)


@pytest.mark.parametrize("controls", [False, True], ids=["plain", "controls"])
@pytest.mark.parametrize("method", METHODS)
def test_step_matches_reference_v2500(method, controls):
    B, V = 3, 2500
    lp, lt = _pair(B, V, seed=METHODS.index(method))
    kw = dict(_sampling(B), alpha=torch.tensor([0.2, 0.5, 0.9]), alpha_min=0.0, alpha_max=1.0,
              vocab_size=V - 3)
    if controls:
        kw.update(_controls(B, V))
    if method == "kl_symmetry" and not controls:
        kw.update(alpha_min=0.3, alpha_max=0.6)  # clamped rows: the residual rides the stats pass
    tri = _run(lp, lt, method, "triton", **kw)
    ref = _run(lp, lt, method, "torch", **kw)
    _compare(tri, ref, method, (method, controls))


@pytest.fixture(scope="module")
def batch17():
    B, V = 17, 2500
    lp, lt = _pair(B, V, seed=40)
    kw = dict(_sampling(B), **_controls(B, V))
    return lp, lt, kw, _run(lp, lt, "kl_symmetry", "triton", **kw)


def test_step_batch_of_17_matches_reference(batch17):
    lp, lt, kw, tri = batch17
    _compare(tri, _run(lp, lt, "kl_symmetry", "torch", **kw), "kl_symmetry", "B=17")


@pytest.mark.parametrize("r", [1, 6])
def test_split_rows_bit_identical_alone_or_in_a_batch(batch17, r):
    """B = 1 (the row split over its chunks) gives the very bits of that row inside B = 17 —
    which is also the B = 1 case of the reference check."""
    lp, lt, kw, tri = batch17
    one = {k: (v[r:r + 1] if torch.is_tensor(v) and v.dim() == 1 else v) for k, v in kw.items()}
    alone = _run(lp[r:r + 1], lt[r:r + 1], "kl_symmetry", "triton", **one)
    for name in VALUES + ("alpha", "tokens", "iters", "clamped", "passes"):
        a, b = getattr(alone, name).cpu(), getattr(tri, name)[r:r + 1].cpu()
        assert torch.equal(a.view(torch.int8) if a.is_floating_point() else a,
                           b.view(torch.int8) if b.is_floating_point() else b), name
    _compare(alone, _run(lp[r:r + 1], lt[r:r + 1], "kl_symmetry", "torch", **one), "kl_symmetry", "B=1")


def test_layout_splits_small_batches():
    for V in (32000, 151937, 152064):
        chunk, ns, _ = triton_step.layout(V)
        assert ns >= 32 and chunk * ns >= V, V


# ----------------------------------------------------------------------------- pass counting
class LoadCounter:
    """Counts elements the interpreter loads from the two logit tensors, per row — independent of
    the kernel's own `passes`."""

    def __init__(self, monkeypatch, tensors):
        from triton.runtime import interpreter

        self.spans = [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size(), t.stride(0) * t.element_size())
                      for t in tensors]
        self.rows = np.zeros((len(tensors), tensors[0].shape[0]), dtype=np.int64)
        orig = interpreter.InterpreterBuilder.create_masked_load

        def counting(builder, ptrs, mask, *a):
            addr = ptrs.data.astype(np.uint64).ravel()
            live = np.broadcast_to(mask.data, ptrs.data.shape).ravel()
            for i, (lo, hi, row_bytes) in enumerate(self.spans):
                hit = live & (addr >= lo) & (addr < hi)
                if hit.any():
                    np.add.at(self.rows[i], ((addr[hit] - lo) // row_bytes).astype(np.int64), 1)
            return orig(builder, ptrs, mask, *a)

        monkeypatch.setattr(interpreter.InterpreterBuilder, "create_masked_load", counting)

    def passes(self, V):  # (rows,) full reads of both rows
        assert (self.rows[0] == self.rows[1]).all()
        return self.rows[0] / V


@pytest.mark.skipif(DEV == "cuda", reason="counts loads in the CPU interpreter")
@pytest.mark.parametrize("sampling", [dict(), dict(top_p=0.9)], ids=["plain", "top_p"])
def test_v152064_passes_within_budget(monkeypatch, sampling):
    V = 152064
    lp, lt = lm_logits(1, V, seed=9, dtype=torch.float32)
    kw = dict(seed=1, keys=torch.tensor([5]), positions=torch.tensor([3]), **sampling)
    counter = LoadCounter(monkeypatch, [lp, lt])
    tri = step(lp, lt, "kl_symmetry", backend="triton", **kw)
    monkeypatch.undo()
    counted = counter.passes(V)
    iters = int(tri.iters[0])
    budget = 3 + iters + (6 if sampling else 0)
    assert counted[0] == int(tri.passes[0]) <= budget, (counted, tri.passes, iters)
    assert iters <= 8
    _compare_large_v(tri, lp, lt, "kl_symmetry", kw, ("V=152064", sampling))


@pytest.mark.parametrize("method", ["kl_symmetry", "fixed"])
def test_v151937_top_k_matches_reference(method):
    V = 151937
    lp, lt = _pair(2, V, seed=11)
    kw = dict(top_k=50, seed=2, keys=torch.tensor([1, 2]), positions=torch.tensor([0, 9]), alpha=0.3)
    _compare_large_v(_run(lp, lt, method, "triton", **kw), lp, lt, method, kw, "V=151937")


# ----------------------------------------------------------------------------- bf16, fallback, C step
def test_bf16_matches_reference_on_the_same_values():
    """bf16 logits (the CUDA default) against the reference on the same values upcast: same
    tokens, alpha within 1e-4, each method's equation within 1e-4 * (1 + KL)."""
    B, V = 2, 1500
    lp, lt = _pair(B, V, seed=21, dtype=torch.bfloat16)
    kw = dict(seed=4, keys=torch.arange(B), positions=torch.arange(B), top_p=torch.tensor([1.0, 0.9]),
              vocab_size=V - 1)
    for method in METHODS:
        tri = _run(lp, lt, method, "triton", **kw)
        ref = _run(lp.float(), lt.float(), method, "torch", **kw)
        assert torch.equal(tri.tokens.cpu(), ref.tokens), method
        assert (tri.alpha.cpu() - ref.alpha).abs().max() <= 1e-4, method
        res = equation_residual(lp.float(), lt.float(), tri.alpha.cpu(), method, vocab_size=V - 1)
        kl = torch.maximum(ref.kl_theta, ref.kl_t)
        assert (res <= 1e-4 * (1 + kl)).all(), (method, res)


def test_wide_nucleus_falls_back_to_bisection(monkeypatch):
    """Rows whose kept prefix exceeds CAP candidates take the per-row bisection: same tokens."""
    monkeypatch.setattr(triton_race, "CAP", 16)
    B, V = 3, 700
    lp, lt = _pair(B, V, seed=5)
    kw = dict(top_p=torch.tensor([0.95, 0.5, 1.0]), top_k=torch.tensor([0, 40, 3]), seed=3,
              keys=torch.arange(B), positions=torch.arange(B))
    tri = _run(lp, lt, "fixed", "triton", **kw)
    _compare(tri, _run(lp, lt, "fixed", "torch", **kw), "fixed", "fallback")
    assert (tri.passes.cpu()[:2] > 5).all() and int(tri.passes[2]) == 5  # bisection vs gather


def test_ties_at_the_top_k_boundary():
    V = 300
    logq = torch.zeros(4, V)
    logq[:, 10:20] = 2.0   # ten equal tokens straddle top-k 5 / the nucleus boundary
    kw = dict(top_k=torch.tensor([5, 0, 12, 5]), top_p=torch.tensor([1.0, 0.3, 1.0, 0.9]), seed=9,
              keys=torch.arange(4), positions=torch.zeros(4, dtype=torch.long))
    _compare(_run(logq, logq, "fixed", "triton", **kw), _run(logq, logq, "fixed", "torch", **kw), "fixed", "ties")


def test_fused_c_step_agrees_with_triton():
    from qstar_kernels import cpu_step

    if not cpu_step.available():
        pytest.skip("no C compiler")
    B, V = 3, 2500
    lp, lt = _pair(B, V, seed=33)
    kw = _sampling(B)
    tri = _run(lp, lt, "kl_symmetry", "triton", **kw)
    _compare(tri, _run(lp, lt, "kl_symmetry", "cpu", **kw), "kl_symmetry", "C step", atol=2e-5)
