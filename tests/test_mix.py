"""The reference `mix`: defining equations at the returned alpha against float64 ground truth."""
import numpy as np
import pytest
import torch

import exact
from conftest import edge_cases, lm_logits
from qstar_kernels import METHODS, mix

FP32_TOL = 1e-4


def _truth(lp_row, lt_row, a):
    """Recompute everything in numpy float64 at the returned a."""
    lp, lt = exact.norm(lp_row), exact.norm(lt_row)
    lq = exact.mixture(lp, lt, a)
    return lp, lt, lq


def _root_within_ulps(rp, rt, a, kl, ulps=2):
    """True when g = KL(q||p) - KL(q||t) changes sign within `ulps` fp32 steps of a."""
    a32 = np.float32(a)
    lo, hi = a32, a32
    for _ in range(ulps):
        lo, hi = np.nextafter(lo, np.float32(0)), np.nextafter(hi, np.float32(1))
    g = lambda b: kl(exact.mixture(rp, rt, float(b)), rp) - kl(exact.mixture(rp, rt, float(b)), rt)  # noqa: E731
    return g(lo) >= 0 >= g(hi)


def _check_row(name, method, lp_row, lt_row, m, i, fp64):
    a = float(m.alpha[i])
    lp, lt, lq = _truth(lp_row, lt_row, a)
    tol = 1e-6 if fp64 else FP32_TOL
    # fp32 rounds each logit to ~6e-8 relative: stats of |logit| ~ 1e4 rows carry that error
    span = max(1.0, float(np.abs(np.concatenate([lp_row, lt_row])[np.isfinite(np.concatenate([lp_row, lt_row]))]).max()) / 20)
    stol = tol if fp64 else tol * span
    kl_p, kl_t = exact.kl(lq, lp), exact.kl(lq, lt)
    for got, want in [(m.kl_theta[i], kl_p), (m.kl_t[i], kl_t), (m.ess_theta[i], exact.ess(lp, lq)),
                      (m.ess_t[i], exact.ess(lt, lq)), (m.entropy_q[i], exact.entropy(lq))]:
        if np.isinf(want):
            assert float(got) == want, name
        else:
            assert abs(float(got) - want) <= stol * (1 + abs(want)), (name, float(got), want)
    if method in ("kl_symmetry", "ess_balance") and not m.clamped[i]:
        rp, rt = exact.restricted(lp, lt)
        rq = exact.mixture(rp, rt, a)
        if method == "kl_symmetry":
            k1, k2 = exact.kl(rq, rp), exact.kl(rq, rt)
            ok = abs(k1 - k2) <= tol * (1 + max(k1, k2))
            if not fp64 and not ok:  # |logit| ~ 1e4: g moves more than the tolerance per fp32 ulp
                ok = _root_within_ulps(rp, rt, a, exact.kl)
            assert ok, (name, k1, k2, a)
        else:
            e1, e2 = exact.ess(rp, rq), exact.ess(rt, rq)
            if e1 > 0 and e2 > 0:
                assert abs(np.log(e1) - np.log(e2)) <= tol * (1 + abs(np.log(e1))), (name, e1, e2, a)
            else:
                assert e1 == e2 == 0.0, (name, e1, e2)
    if method == "entropy":
        h1, h2 = float(m.entropy_theta[i]), float(m.entropy_t[i])
        for got, want in ((h1, exact.entropy(lp)), (h2, exact.entropy(lt))):
            assert abs(got - want) <= (1e-9 * (1e-6 + abs(want)) if fp64 else 1e-6 + 1e-5 * abs(want)), (name, got, want)
        want = 0.5 if h1 + h2 == 0 else h1 / (h1 + h2)
        assert abs(a - want) <= 1e-6 * want, (name, a, want)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method", METHODS)
def test_defining_equations_edge_cases(method, dtype):
    for name, (x, y) in edge_cases(dtype=dtype).items():
        m = mix(x, y, method)
        for f in ("alpha", "log_z", "kl_theta", "kl_t", "ess_theta", "ess_t", "entropy_q", "residual"):
            assert not torch.isnan(getattr(m, f)).any(), (name, f)
        assert not torch.isnan(m.logq).any(), name
        assert (m.iters <= 32).all()
        _check_row(name, method, x[0].double().numpy(), y[0].double().numpy(), m, 0,
                   dtype == torch.float64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("method", ["kl_symmetry", "ess_balance", "entropy", "reverse_kl_symmetry"])
@pytest.mark.parametrize("B,V", [(1, 1), (3, 2), (64, 257), (7, 5000)])
def test_defining_equations_random(method, dtype, B, V):
    lp, lt = lm_logits(B, V, seed=B * 1000 + V, dtype=dtype)
    m = mix(lp, lt, method)
    assert torch.isfinite(m.logq[m.logq > float("-inf")]).all()
    for i in range(min(B, 8)):
        _check_row(f"row{i}", method, lp[i].double().numpy(), lt[i].double().numpy(), m, i,
                   dtype == torch.float64)


def test_identical_distributions_give_half():
    for x in (torch.randn(4, 100, dtype=torch.float64), torch.zeros(2, 10, dtype=torch.float64)):
        for method in METHODS:
            m = mix(x, x + 1.0, method)
            assert torch.allclose(m.alpha, torch.full_like(m.alpha, 0.5)), method
            assert torch.allclose(m.kl_theta, torch.zeros_like(m.kl_theta), atol=1e-12)


def test_kl_symmetry_converges_in_8_passes_fp64():
    lp, lt = lm_logits(64, 32000, seed=3)
    m = mix(lp, lt, "kl_symmetry")
    g = (m.kl_theta - m.kl_t).abs()
    assert g.max() <= 1e-6, g.max()
    assert int(m.iters.max()) <= 8, m.iters.tolist()
    assert m.residual.max() <= 1e-6


def test_chernoff_point_minimises_log_z():
    lp, lt = lm_logits(4, 300, seed=5)
    m = mix(lp, lt, "kl_symmetry")
    for da in (-1e-3, 1e-3):
        other = mix(lp, lt, "fixed", alpha=(m.alpha + da).clamp(0, 1))
        assert (other.log_z >= m.log_z - 1e-12).all()
    # the common KL value is the Chernoff information -log Z(a*)
    assert torch.allclose(m.kl_theta, -m.log_z, atol=1e-9)


def test_extreme_rows_converge_within_cap():
    g = torch.Generator().manual_seed(9)
    lp = torch.randn(16, 2000, generator=g, dtype=torch.float64) * 1e4
    lt = torch.randn(16, 2000, generator=g, dtype=torch.float64) * 1e4
    m = mix(lp, lt, "kl_symmetry")
    assert (m.iters <= 32).all()
    assert ((m.kl_theta - m.kl_t).abs() <= 1e-6 * (1 + m.kl_theta)).all()


def test_large_vocab_152064():
    lp, lt = lm_logits(2, 152064, seed=11, dtype=torch.float32)
    for method in ("kl_symmetry", "ess_balance"):
        m = mix(lp, lt, method)
        _check_row("v152064", method, lp[0].double().numpy(), lt[0].double().numpy(), m, 0, False)


def test_vocab_size_masks_padding():
    lp, lt = lm_logits(3, 100, seed=2)
    pad_p = torch.cat([lp, torch.full((3, 28), 50.0, dtype=lp.dtype)], 1)
    pad_t = torch.cat([lt, torch.full((3, 28), -50.0, dtype=lt.dtype)], 1)
    m = mix(pad_p, pad_t, "kl_symmetry", vocab_size=100)
    ref = mix(lp, lt, "kl_symmetry")
    assert (m.logq[:, 100:] == float("-inf")).all()
    assert torch.allclose(m.logq[:, :100], ref.logq) and torch.allclose(m.alpha, ref.alpha)


def test_clamps_and_flag():
    lp, lt = lm_logits(8, 200, seed=4)
    free = mix(lp, lt, "kl_symmetry")
    lo, hi = float(free.alpha.median()) - 1e-3, float(free.alpha.median()) + 1e-3
    m = mix(lp, lt, "kl_symmetry", alpha_min=lo, alpha_max=hi)
    assert ((m.alpha >= lo) & (m.alpha <= hi)).all()
    assert torch.equal(m.clamped, (free.alpha < lo) | (free.alpha > hi))
    assert (m.residual[m.clamped] > 0).all()


def test_fixed_endpoints_are_the_models():
    lp, lt = lm_logits(2, 50, seed=6)
    assert torch.allclose(mix(lp, lt, "fixed", alpha=1.0).logq, torch.log_softmax(lp, -1))
    assert torch.allclose(mix(lp, lt, "fixed", alpha=0.0).logq, torch.log_softmax(lt, -1))


def test_reverse_kl_closed_form():
    lp, lt = lm_logits(4, 300, seed=8)
    m = mix(lp, lt, "reverse_kl_symmetry")
    q = m.logq.exp()
    p, t = m.logp_theta.exp(), m.logp_t.exp()
    k1 = (p * (m.logp_theta - m.logq)).sum(-1)
    k2 = (t * (m.logp_t - m.logq)).sum(-1)
    assert torch.allclose(k1, k2, atol=1e-10)
    assert torch.allclose(q.sum(-1), torch.ones(4, dtype=q.dtype))


def test_low_precision_inputs():
    lp, lt = lm_logits(4, 500, seed=12, dtype=torch.float32)
    m32 = mix(lp, lt, "kl_symmetry")
    mb = mix(lp.bfloat16(), lt.bfloat16(), "kl_symmetry")
    assert mb.logq.dtype == torch.float32
    assert (mb.alpha - m32.alpha).abs().max() < 0.05


def test_reverse_kl_one_pass_equation_fp64_edge_cases():
    """KL(pi_theta||q) = KL(pi_t||q) to 1e-9 (fp64) in one pass; limits where a KL is infinite."""
    cases = dict(edge_cases(dtype=torch.float64))
    lp, lt = lm_logits(16, 2000, seed=31)
    cases.update({f"random{i}": (lp[i:i + 1], lt[i:i + 1]) for i in range(16)})
    for name, (x, y) in cases.items():
        m = mix(x, y, "reverse_kl_symmetry")
        assert int(m.iters[0]) == 1, name
        for f in ("alpha", "log_z", "kl_theta", "kl_t", "residual"):
            assert not torch.isnan(getattr(m, f)).any(), (name, f)
        assert not torch.isnan(m.logq).any(), name
        p, t = exact.norm(x[0].numpy()), exact.norm(y[0].numpy())
        a = float(m.alpha[0])
        k_pt, k_tp = exact.kl(p, t), exact.kl(t, p)
        if np.isfinite(k_pt) and np.isfinite(k_tp):
            lq = exact.mixture(p, t, a)
            k1, k2 = exact.kl(p, lq), exact.kl(t, lq)
            assert abs(k1 - k2) <= 1e-9 * (1 + max(k1, k2)), (name, k1, k2, a)
        else:  # the limits of KL(p||t) / (KL(p||t) + KL(t||p))
            want = 0.5 if np.isinf(k_pt) and np.isinf(k_tp) else (1.0 if np.isinf(k_pt) else 0.0)
            assert a == want, (name, a, want)
