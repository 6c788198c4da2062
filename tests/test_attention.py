"""Triton decode attention (under TRITON_INTERPRET=1 on CPU) against SDPA on the gathered live KV."""
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from qstar_kernels.attention import decode_attention, decode_attention_reference  # noqa: E402


def sdpa_per_row(q, k_cache, v_cache, slots, lengths, scale):
    """The plainest definition, in float64: each row alone, its live positions only, K/V repeated."""
    out = []
    for n in range(q.shape[0]):
        s, L = int(slots[n]), int(lengths[n])
        K, V = k_cache[s, :, :L].double(), v_cache[s, :, :L].double()
        G = q.shape[1] // K.shape[0]
        K, V = K.repeat_interleave(G, 0), V.repeat_interleave(G, 0)
        out.append(F.scaled_dot_product_attention(q[n, :, None].double(), K, V, scale=scale)[:, 0])
    return torch.stack(out)


def case(N, H, Hkv, D, L, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    S = N + 3
    k = torch.randn(S, Hkv, L, D, generator=g).to(dtype)
    v = torch.randn(S, Hkv, L, D, generator=g).to(dtype)
    q = torch.randn(N, H, D, generator=g).to(dtype)
    slots = torch.randperm(S, generator=g)[:N]  # non-contiguous, unordered slots
    lengths = torch.randint(1, L + 1, (N,), generator=g)
    lengths[0], lengths[-1] = 1, L  # both ends of the range
    return q, k, v, slots, lengths


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("H,Hkv", [(4, 4), (8, 2), (16, 2)])  # GQA ratios 1, 4, 8
@pytest.mark.parametrize("D", [64, 128])
def test_triton_equals_sdpa_on_live_kv(dtype, tol, H, Hkv, D):
    L = 200  # 4 splits of 64: rows end inside a split, on a split boundary, and in split 0
    q, k, v, slots, lengths = case(5, H, Hkv, D, L, dtype, seed=H * D)
    lengths[1], lengths[2] = 64, 65
    scale = D ** -0.5
    want = sdpa_per_row(q, k, v, slots, lengths, scale)
    got = decode_attention(q, k, v, slots, lengths, scale, backend="triton")
    assert got.dtype == dtype and got.shape == q.shape
    assert (got.double() - want).abs().max().item() <= tol
    ref = decode_attention_reference(q.double(), k.double(), v.double(), slots, lengths, scale)
    assert (ref - want).abs().max().item() <= 1e-12


def test_long_context_many_splits_and_stale_kv_ignored():
    q, k, v, slots, lengths = case(3, 8, 2, 64, 1100, torch.float32, seed=3)
    k2, v2 = k.clone(), v.clone()
    for n in range(3):  # positions past a row's length hold garbage (a previous occupant's KV)
        k2[slots[n], :, lengths[n]:] = 1e4
        v2[slots[n], :, lengths[n]:] = float("nan")
    got = decode_attention(q, k2, v2, slots, lengths, 0.125, backend="triton")
    want = sdpa_per_row(q, k, v, slots, lengths, 0.125)
    assert (got.double() - want).abs().max().item() <= 1e-5


def test_row_result_does_not_depend_on_the_batch():
    q, k, v, slots, lengths = case(6, 8, 2, 64, 300, torch.float32, seed=4)
    full = decode_attention(q, k, v, slots, lengths, 0.125, backend="triton")
    alone = decode_attention(q[2:3], k, v, slots[2:3], lengths[2:3], 0.125, backend="triton")
    assert torch.equal(full[2:3], alone)


def test_reference_reads_views_when_slots_are_contiguous():
    q, k, v, _, lengths = case(4, 8, 2, 64, 90, torch.float64, seed=5)
    slots = torch.arange(2, 6)
    gathered = decode_attention_reference(q, k, v, slots, lengths, 0.125, span=90)
    viewed = decode_attention_reference(q, k, v, slots, lengths, 0.125, span=90, first=2)
    assert torch.equal(gathered, viewed)
    assert (viewed - sdpa_per_row(q, k, v, slots, lengths, 0.125)).abs().max().item() <= 1e-12
