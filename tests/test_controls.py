"""Mixture controls (qstar_kernels/controls.py): support restricted to pi_t's top-k / nucleus,
forced-teacher rows, on every kernel backend, against independent float64 ground truth."""
import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import exact
from conftest import lm_logits
from qstar_kernels import METHODS, cpu_step, mix, step

NEG_INF = float("-inf")
SUPPORTS = [dict(support_top_k=7), dict(support_top_p=0.8), dict(support_top_k=20, support_top_p=0.9)]
BACKENDS = ["torch", "triton"] + (["cpu"] if cpu_step.available() else [])
# The Triton interpreter runs one program per row slowly: its sampling statistics come from
# test_backends_agree_with_controls (same tokens as the reference on the same counters).
FAST = [b for b in BACKENDS if b != "triton"]


def _ids(kw):
    return ",".join(f"{k.removeprefix('support_')}={v}" for k, v in kw.items())


def _rows(B=6, V=120, seed=0):
    return lm_logits(B, V, seed=seed, scale=2.0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sup", SUPPORTS, ids=_ids)
def test_support_restricted_equations_fp64(method, sup):
    lp, lt = _rows()
    m = mix(lp, lt, method, **sup)
    k, p = sup.get("support_top_k", 0), sup.get("support_top_p", 1.0)
    for i in range(lp.shape[0]):
        keep = exact.support_set(lt[i].numpy(), k, p)
        rp, rt = exact.restrict_to(lp[i].numpy(), keep), exact.restrict_to(lt[i].numpy(), keep)
        a = float(m.alpha[i])
        rq = exact.mixture(rp, rt, a)
        got = m.logq[i].numpy()
        assert np.array_equal(np.isfinite(got), keep), "q must live exactly on pi_t's set"
        assert np.allclose(got[keep], rq[keep], atol=1e-10)
        # unrestricted model log-probs are what the mixture reports per token
        assert np.allclose(m.logp_theta[i].numpy(), exact.norm(lp[i].numpy()), atol=1e-12)
        assert np.allclose(m.logp_t[i].numpy(), exact.norm(lt[i].numpy()), atol=1e-12)
        # statistics and the defining equation are those of the restricted problem
        assert abs(float(m.kl_theta[i]) - exact.kl(rq, rp)) < 1e-9
        assert abs(float(m.entropy_t[i]) - exact.entropy(rt)) < 1e-9
        if method == "kl_symmetry":
            k1, k2 = exact.kl(rq, rp), exact.kl(rq, rt)
            assert abs(k1 - k2) <= 1e-9 * (1 + k1), (k1, k2)
        elif method == "ess_balance":
            assert abs(np.log(exact.ess(rp, rq)) - np.log(exact.ess(rt, rq))) <= 1e-9
        elif method == "reverse_kl_symmetry":
            k1, k2 = exact.kl(rp, rq), exact.kl(rt, rq)
            assert abs(k1 - k2) <= 1e-9 * (1 + k1), (k1, k2)
        elif method == "entropy":
            h1, h2 = exact.entropy(rp), exact.entropy(rt)
            assert abs(a - h1 / (h1 + h2)) <= 1e-9
    assert not m.forced.any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sup", SUPPORTS, ids=_ids)
def test_sampled_tokens_stay_inside_support(backend, sup):
    lp, lt = lm_logits(16, 300, seed=3, scale=3.0, dtype=torch.float32)
    k, p = sup.get("support_top_k", 0), sup.get("support_top_p", 1.0)
    keep = np.stack([exact.support_set(lt[i].double().numpy(), k, p) for i in range(16)])
    for pos in range(12 if backend != "triton" else 2):
        st = step(lp, lt, "kl_symmetry", keys=torch.arange(16), positions=pos, seed=pos,
                  temperature=1.5, backend=backend, **sup)
        assert keep[np.arange(16), st.tokens.numpy()].all()
        # logp_theta / logp_t: the unrestricted model log-probs of the drawn token
        want = torch.log_softmax(lp.double(), -1).gather(1, st.tokens[:, None]).squeeze(1)
        assert torch.allclose(st.logp_theta.double(), want, atol=1e-5)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("sup", SUPPORTS, ids=_ids)
def test_chi_square_against_restricted_q(backend, sup):
    N, V = 20000, 60
    lp, lt = lm_logits(1, V, seed=11, scale=1.5)
    want = mix(lp, lt, "kl_symmetry", **sup).logq[0].exp().numpy()  # fp64 restricted q
    st = step(lp.float().expand(N, V).contiguous(), lt.float().expand(N, V).contiguous(), "kl_symmetry",
              keys=torch.arange(N), positions=3, seed=99, backend=backend, **sup)
    counts = np.bincount(st.tokens.numpy(), minlength=V).astype(float)
    assert counts[want == 0].sum() == 0
    ex = want * N
    big = ex >= 5
    obs, exp_ = np.append(counts[big], counts[~big].sum()), np.append(ex[big], ex[~big].sum())
    obs, exp_ = obs[exp_ > 0], exp_[exp_ > 0]
    assert chisquare(obs, exp_).pvalue > 1e-4
    # the recorded logq is the restricted q's and logp_behavior equals it at T = 1
    assert np.allclose(st.logq.double().numpy(), np.log(want[st.tokens.numpy()]), atol=2e-5)
    assert np.allclose(st.logp_behavior.numpy(), st.logq.numpy(), atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sup", [dict()] + SUPPORTS, ids=lambda kw: _ids(kw) or "unrestricted")
@pytest.mark.parametrize("method", ["kl_symmetry", "reverse_kl_symmetry"])
def test_forced_rows_are_pi_t(backend, sup, method):
    B, V = 8, 200
    lp, lt = lm_logits(B, V, seed=5, dtype=torch.float32)
    force = torch.tensor([True, False] * (B // 2))
    st = step(lp, lt, method, alpha_min=0.3, alpha_max=0.9, keys=torch.arange(B), positions=0,
              force=force, backend=backend, **sup)
    free = step(lp, lt, method, alpha_min=0.3, alpha_max=0.9, keys=torch.arange(B), positions=0,
                backend=backend, **sup)
    assert torch.equal(st.forced, force)
    assert (st.alpha[force] == 0).all(), "forced rows ignore the clamps: a = 0"
    assert not st.clamped[force].any()
    assert (st.residual[force] == 0).all() and (st.iters[force] == 0).all(), "forced rows are 'fixed' at a = 0"
    k, p = sup.get("support_top_k", 0), sup.get("support_top_p", 1.0)
    for i in force.nonzero().squeeze(1).tolist():
        keep = exact.support_set(lt[i].double().numpy(), k, p)
        rt = exact.restrict_to(lt[i].double().numpy(), keep)  # = pi_t when unrestricted
        assert abs(float(st.logq[i]) - rt[int(st.tokens[i])]) < 2e-5, "logq == (restricted) logp_t"
        full_t = exact.norm(lt[i].double().numpy())[int(st.tokens[i])]
        assert abs(float(st.logp_t[i]) - full_t) < 2e-5
    # the other rows are untouched: same token and values as without forcing
    keepers = ~force
    assert torch.equal(st.tokens[keepers], free.tokens[keepers])
    assert torch.equal(st.alpha[keepers], free.alpha[keepers])
    # a forced row's draw is the plain pi_t draw (fixed a = 0) at the same counter
    t_only = step(lp, lt, "fixed", alpha=0.0, keys=torch.arange(B), positions=0, backend=backend, **sup)
    assert torch.equal(st.tokens[force], t_only.tokens[force])


@pytest.mark.parametrize("backend", BACKENDS)
def test_force_tokens_by_teacher_argmax(backend):
    B, V = 6, 50
    lp, lt = lm_logits(B, V, seed=8, dtype=torch.float32)
    special = torch.zeros(V, dtype=torch.bool)
    special[lt[:3].argmax(-1)] = True  # rows 0..2's argmax are "special"
    want = special[lt.argmax(-1)]
    st = step(lp, lt, "ess_balance", keys=torch.arange(B), positions=4, force_tokens=special, backend=backend)
    assert torch.equal(st.forced, want) and want[:3].all()
    assert (st.alpha[want] == 0).all() and (st.alpha[~want] > 0).all()
    m = mix(lp.double(), lt.double(), "ess_balance", force_tokens=special)
    assert torch.equal(m.forced, want)
    assert torch.allclose(m.logq[want], torch.log_softmax(lt.double()[want], -1))


def test_theta_without_mass_in_support_falls_back_to_pi_t():
    lp, lt = lm_logits(2, 40, seed=2)
    keep = torch.from_numpy(exact.support_set(lt[0].numpy(), 5))
    lp[0, keep] = NEG_INF  # pi_theta puts nothing on pi_t's top 5
    m = mix(lp, lt, "kl_symmetry", support_top_k=5)
    assert bool(m.forced[0]) and not bool(m.forced[1])
    assert float(m.alpha[0]) == 0.0
    assert torch.allclose(m.logq[0][keep], torch.log_softmax(lt[0][keep], -1))
    assert not torch.isnan(m.logq).any() and not torch.isnan(m.kl_theta).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_with_controls(backend):
    B, V = 8, 500
    lp, lt = lm_logits(B, V, seed=21, dtype=torch.float32)
    kw = dict(keys=torch.arange(B), positions=2, seed=5, support_top_k=40, support_top_p=0.95,
              force=torch.tensor([True] + [False] * (B - 1)), temperature=0.9, top_p=0.9)
    ref = step(lp, lt, "kl_symmetry", backend="torch", **kw)
    got = step(lp, lt, "kl_symmetry", backend=backend, **kw)
    assert torch.equal(ref.tokens, got.tokens)
    assert torch.equal(ref.forced, got.forced)
    for f in ("alpha", "logp_theta", "logp_t", "logq", "logp_behavior", "kl_theta", "kl_t"):
        assert torch.allclose(getattr(ref, f), getattr(got, f), atol=1e-4, rtol=1e-4), f


def test_controls_off_is_bitwise_the_plain_step():
    lp, lt = lm_logits(4, 100, seed=4, dtype=torch.float32)
    a = step(lp, lt, keys=torch.arange(4), positions=1, backend="torch")
    b = step(lp, lt, keys=torch.arange(4), positions=1, backend="torch", support_top_k=0, support_top_p=1.0)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logq, b.logq)
    assert not a.forced.any()


@pytest.mark.parametrize("kw,msg", [
    (dict(support_top_k=-1), "support_top_k must be an int >= 0"),
    (dict(support_top_k=2.5), "support_top_k must be an int >= 0"),
    (dict(support_top_p=0.0), "support_top_p must lie in (0, 1]"),
    (dict(support_top_p=1.5), "support_top_p must lie in (0, 1]"),
    (dict(force=torch.ones(3, dtype=torch.bool)), "force must be a bool tensor of shape (2,)"),
    (dict(force=torch.ones(2)), "force must be a bool tensor"),
    (dict(force_tokens=torch.ones(9, dtype=torch.bool)), "force_tokens must be a bool tensor of shape (10,)"),
])
def test_bad_controls_are_named(kw, msg):
    lp, lt = lm_logits(2, 10, seed=0)
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        mix(lp, lt, **kw)
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        step(lp, lt, keys=torch.arange(2), positions=0, **kw)


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.7, top_k=9), dict(top_p=0.8, min_p=0.01),
                                dict(temperature=0.0)], ids=str)
def test_behaviour_is_the_sampled_distribution(kw):
    from qstar_kernels import behaviour

    logq = torch.log_softmax(torch.randn(3, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), -1)
    got = behaviour(logq, **kw).exp().numpy()
    for i in range(3):
        if kw.get("temperature") == 0:
            want = np.zeros(50)
            want[int(logq[i].argmax())] = 1.0
        else:
            want = exact.behaviour(logq[i].numpy(), **kw)
        assert np.allclose(got[i], want, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sup", [dict()] + SUPPORTS[:2], ids=lambda kw: _ids(kw) or "unrestricted")
def test_equation_residual_zero_at_the_solution_only(method, sup):
    from qstar_kernels import equation_residual

    lp, lt = _rows(B=5, V=200, seed=9)
    m = mix(lp, lt, method, **sup)
    r = equation_residual(lp, lt, m.alpha, method, **sup)
    assert r.max() <= 1e-9, r
    if method != "fixed":  # moving alpha off the solution must show
        off = equation_residual(lp, lt, (m.alpha + 0.1).clamp(max=1.0), method, **sup)
        assert (off > 1e-4).all(), off


@pytest.mark.parametrize("k,p", [(0, 0.5), (0, 0.95), (0, 0.999), (7, 1.0), (50, 0.9), (3000, 0.99), (1, 0.5)])
def test_candidate_support_equals_the_full_sort(k, p):
    """The CPU path (top-k of candidates, full sort only when the nucleus reaches past them) gives
    exactly the set of the definition (a stable sort of the whole row), ties and flat rows included."""
    from qstar_kernels.controls import _support_keep_candidates, _support_keep_sorted, support_keep

    g = torch.Generator().manual_seed(k + int(p * 1000))
    rows = [torch.randn(6, 5000, generator=g, dtype=torch.float64) * s for s in (0.05, 1.0, 4.0)]
    tied = (torch.randn(4, 5000, generator=g) * 2).round().double()  # many exact ties
    masked = torch.randn(2, 5000, generator=g, dtype=torch.float64)
    masked[:, 100:] = NEG_INF
    x = torch.cat(rows + [tied, masked])
    assert torch.equal(_support_keep_candidates(x, k, p), _support_keep_sorted(x, k, p))
    # fp32 logits are taken to fp64 on CPU first (support_keep), so the same holds for them
    x32 = x.float()
    assert torch.equal(support_keep(x32, None, k, p), _support_keep_sorted(x32.double(), k, p))


def test_unusual_but_valid_control_values():
    import numpy as np_

    lp, lt = lm_logits(2, 30, seed=1)
    a = mix(lp, lt, support_top_k=np_.int64(2**40), support_top_p=np_.float32(0.9))
    b = mix(lp, lt, support_top_p=0.8999999761581421)  # the same float32 value
    assert torch.equal(torch.isfinite(a.logq), torch.isfinite(b.logq))
