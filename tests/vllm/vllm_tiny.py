"""Tiny random pairs vLLM's CPU attention accepts (head_dim 32 / 64), and a float64 reference.

Reference teacher-forces a sample through both HF models in float64 and gives, per response
position, the exact log_softmax rows; the checks then use tests/exact.py (numpy, no shared code
with qstar_kernels). Not for: engines (conftest.py) or assertions (the test files).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import exact
import tiny

EXTRA_EOS = list(range(100, 124))  # t's generation config: frequent stops


def _model(kind, seed, hidden, layers, heads, kv_heads, head_dim):
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = tiny.tokenizer()
    cfg = AutoConfig.for_model(kind, vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                               head_dim=head_dim, max_position_embeddings=256, initializer_range=0.3,
                               tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    m.generation_config.eos_token_id = tok.eos_token_id
    m.generation_config.pad_token_id = tok.pad_token_id
    return m


def save_pair(root: Path, extra_eos: bool = True) -> tuple[str, str]:
    """Different families, layer counts, head counts and head sizes: llama (2 x 32) vs qwen2 (4 x 64)."""
    tok = tiny.tokenizer()
    theta = _model("llama", 1, hidden=64, layers=2, heads=2, kv_heads=1, head_dim=32)
    t = _model("qwen2", 2, hidden=256, layers=3, heads=4, kv_heads=2, head_dim=64)
    if extra_eos:
        t.generation_config.eos_token_id = [tok.eos_token_id] + EXTRA_EOS
    path_theta, path_t = tiny.save(root, {"theta": theta, "t": t})
    return path_theta, path_t


class Reference(tiny.Float64Pair):
    """float64 log_softmax rows of both models along a sample (teacher forcing)."""

    @torch.no_grad()
    def rows(self, prompt_ids: list[int], token_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(lp, lt), each (len(token_ids), V): the rows each response token was drawn from."""
        ids = torch.tensor([prompt_ids + token_ids[:-1]])
        out = []
        for m in (self.theta, self.t):
            logits = m(ids).logits[0, len(prompt_ids) - 1:].numpy()
            out.append(np.stack([exact.norm(r) for r in logits]))
        return out[0], out[1]


def equation_residual(method: str, lp: np.ndarray, lt: np.ndarray, a: float, alpha: float = 0.5) -> float:
    """How far `a` is from satisfying the method's defining equation, in float64."""
    lq = exact.mixture(lp, lt, a)
    if method == "fixed":
        return abs(a - alpha)
    if method == "entropy":
        h1, h2 = exact.entropy(lp), exact.entropy(lt)
        return abs(a - (h1 / (h1 + h2) if h1 + h2 > 0 else 0.5))
    if method == "kl_symmetry":
        k1, k2 = exact.kl(lq, lp), exact.kl(lq, lt)
        return abs(k1 - k2) / (1 + max(k1, k2))
    if method == "ess_balance":
        return abs(np.log(exact.ess(lp, lq)) - np.log(exact.ess(lt, lq)))
    if method == "reverse_kl_symmetry":
        k_pt, k_tp = exact.kl(lp, lt), exact.kl(lt, lp)
        return abs(a - (k_pt / (k_pt + k_tp) if k_pt + k_tp > 0 else 0.5))
    raise ValueError(method)
