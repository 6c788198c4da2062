"""qstar_kernels.speculative: the fast verification equals the float64 reference; the emitted
tokens are b-distributed; the underflow rule; b = d accepts every draft."""
import torch

from engine.check.stats import chi_square
from qstar_kernels.ref_sample import race
from qstar_kernels.speculative import (DRAFT, stream_positions, residual_scores, verify,
                                       verify_reference)


def _case(B=64, K=3, V=12, dtype=torch.float64, close=0.7, seed=0):
    g = torch.Generator().manual_seed(seed)
    logd = torch.log_softmax(torch.randn(B, K, V, generator=g, dtype=torch.float64) * 1.5, -1)
    logb = torch.log_softmax(torch.cat([logd, logd[:, :1]], 1) * close
                             + torch.randn(B, K + 1, V, generator=g, dtype=torch.float64) * 0.5, -1)
    logb[:4, :, 5:] = float("-inf")  # truncated b: drafts outside its support are always rejected
    logb[:4] = torch.log_softmax(logb[:4], -1)
    seeds, keys = torch.full((B,), 7), torch.arange(B) * 1000 + 3
    pos = torch.arange(B) % 5
    drafts = torch.stack([race(logd[:, i], seeds, keys, stream_positions(pos + i, DRAFT)) for i in range(K)], 1)
    return [x.to(dtype) for x in (logb, logd)] + [drafts, seeds, keys, pos]


def _same(a, b):
    assert torch.equal(a.n_accepted, b.n_accepted)
    for r, n in enumerate(a.n_accepted.tolist()):
        assert a.tokens[r, :n + 1].tolist() == b.tokens[r, :n + 1].tolist(), r
        torch.testing.assert_close(a.logp_behavior[r, :n + 1].double(), b.logp_behavior[r, :n + 1].double(),
                                   atol=1e-6, rtol=0)
    assert torch.equal(a.drafted, b.drafted)


def test_fast_equals_reference_fp64_and_fp32():
    logb, logd, *rest = _case()
    ref = verify_reference(logb, logd, *rest)
    _same(verify(logb, logd, *rest), ref)
    assert 0 < ref.n_accepted.float().mean() < 3, "the case must mix rejections and acceptances"
    _same(verify(logb.float(), logd.float(), *rest), ref)  # fp32 inputs: same decisions here


def test_equal_distributions_accept_everything():
    logb, logd, drafts, *rest = _case()
    same = torch.cat([logd, logd[:, :1]], 1)
    out = verify(same, logd, drafts, *rest)
    assert (out.n_accepted == 3).all() and out.drafted[:, :3].all()


def test_underflow_falls_back_to_b():
    lb = torch.log_softmax(torch.randn(3, 50, generator=torch.Generator().manual_seed(0)), -1)
    assert torch.equal(residual_scores(lb, lb.clone()), lb)  # sum max(0, b - d) == 0 -> b
    ld = lb.clone()
    ld[1, 0] -= 0.5  # a real residual on row 1 only (rows 0 and 2 stay bit-equal to b)
    ld[1] = torch.log_softmax(ld[1], -1)
    out = residual_scores(lb, ld)
    assert torch.equal(out[0], lb[0]) and torch.equal(out[2], lb[2])
    assert torch.isinf(out[1]).any() and not torch.equal(out[1], lb[1])


def test_emitted_tokens_follow_b():
    """Position 1 is always emitted (accepted draft or correction): over many keys it is b_1;
    position 2 given an accepted x_1 is b_2 (b here does not depend on the prefix)."""
    B, K, V = 6000, 2, 8
    g = torch.Generator().manual_seed(1)
    lb1, lb2, lb3 = (torch.log_softmax(torch.randn(V, generator=g) * 1.2, -1) for _ in range(3))
    ld1, ld2 = (torch.log_softmax(torch.randn(V, generator=g) * 1.2, -1) for _ in range(2))
    logb = torch.stack([lb1, lb2, lb3])[None].expand(B, -1, -1).contiguous()
    logd = torch.stack([ld1, ld2])[None].expand(B, -1, -1).contiguous()
    seeds, keys, pos = torch.full((B,), 3), torch.arange(B), torch.zeros(B, dtype=torch.int64)
    drafts = torch.stack([race(logd[:, i], seeds, keys, stream_positions(pos + i, DRAFT)) for i in range(K)], 1)
    out = verify(logb, logd, drafts, seeds, keys, pos)
    for i, lb, rows in ((0, lb1, slice(None)), (1, lb2, out.n_accepted >= 1)):
        toks = out.tokens[rows, i]
        cs = chi_square(torch.bincount(toks, minlength=V), lb.exp(), len(toks))
        assert cs.dof > 3 and cs.p > 1e-3, (i, cs)
