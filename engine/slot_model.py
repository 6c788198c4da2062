"""Llama-family HF models run on a slot KV cache: prefill one slot, decode many rows at
per-row positions (each row its own prompt length), like nano-vllm's model runner.

The HF modules (embeddings, projections, norms, MLP, rotary embedding, lm_head) are used as
they are — only attention and the cache are ours — so weights need no conversion and the
logits equal HF's forward to float rounding (tests compare them). Families whose attention
is plain RoPE + GQA qualify: llama, qwen2, qwen3, mistral (no sliding window in use).
Everything else runs on hf_fallback.RowModel. On CUDA the decode step can be captured in a
CUDA graph per batch bucket (graphs.py).
Not for: sampling or scheduling (engine/core.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FAMILIES = ("llama", "qwen2", "qwen3", "mistral")


def unsupported_reason(model, max_len: int) -> str | None:
    """None when SlotModel can run `model`, else why not (then the slower RowModel is used)."""
    cfg = model.config
    if cfg.model_type not in FAMILIES:
        return f"model_type {cfg.model_type!r} is not one of {FAMILIES}"
    window = getattr(cfg, "sliding_window", None)
    if window and getattr(cfg, "use_sliding_window", cfg.model_type == "mistral") and window < max_len:
        return f"sliding window {window} < needed length {max_len}"
    base = getattr(model, "model", None)
    if base is None or not hasattr(base, "rotary_emb") or not hasattr(base, "layers"):
        return "unexpected module layout"
    return None


class SlotModel:
    """KV cache (layers, slots, kv_heads, max_len, head_dim) per model; rows index slots."""

    def __init__(self, model, n_slots: int, max_len: int):
        base = model.model
        self.model, self.base, self.lm_head = model, base, model.get_output_embeddings()
        attn = base.layers[0].self_attn
        cfg = model.config
        self.head_dim = attn.head_dim
        self.scale = attn.scaling
        self.max_len = max_len
        p = next(model.parameters())
        shape = (len(base.layers), n_slots, cfg.num_key_value_heads, max_len, self.head_dim)
        self.k = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.v = torch.zeros(shape, dtype=p.dtype, device=p.device)

    def _qkv(self, attn, x, cos, sin):
        """q (B, H, T, D), k and v (B, Hkv, T, D) with RoPE applied (and qwen3's head norms)."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        B, T, _ = x.shape
        q = attn.q_proj(x).view(B, T, -1, self.head_dim)
        k = attn.k_proj(x).view(B, T, -1, self.head_dim)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        v = attn.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        return q, k, v

    def _layers(self, x, positions, attend):
        """Run every decoder layer; attend(l, q, k, v) writes the cache and returns attention."""
        cos, sin = self.base.rotary_emb(x, positions)
        for l, layer in enumerate(self.base.layers):
            h = layer.input_layernorm(x)
            q, k, v = self._qkv(layer.self_attn, h, cos, sin)
            o = attend(l, q, k, v)  # (B, H, T, D)
            x = x + layer.self_attn.o_proj(o.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.base.norm(x)

    @torch.inference_mode()
    def prefill(self, slot: int, ids: list[int]) -> torch.Tensor:  # (W,) logits of the last position
        dev = self.k.device
        x = self.base.embed_tokens(torch.tensor([ids], device=dev))
        T = len(ids)

        def attend(l, q, k, v):
            self.k[l, slot, :, :T] = k[0]
            self.v[l, slot, :, :T] = v[0]
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=True)

        h = self._layers(x, torch.arange(T, device=dev)[None], attend)
        return self.lm_head(h[:, -1])[0]

    @torch.inference_mode()
    def decode(self, rows: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor,
               span: int | None = None) -> torch.Tensor:  # (B, W)
        """Append `tokens` (B,) at `positions` (B,) of slots `rows` (B,); logits of the next token.

        span: how many cache positions attention reads (default: max position + 1, a host
        sync; graphs pass max_len so the shapes are static)."""
        B = rows.shape[0]
        span = span or int(positions.max()) + 1
        x = self.base.embed_tokens(tokens[:, None])
        mask = (torch.arange(span, device=x.device)[None, :] <= positions[:, None])[:, None, None, :]
        lo = int(rows[0]) if span != self.max_len else -1
        contiguous = lo >= 0 and bool((rows == torch.arange(lo, lo + B, device=rows.device)).all())

        def attend(l, q, k, v):
            self._write(l, rows, positions, k[:, :, 0], v[:, :, 0])
            if contiguous:
                K, V = self.k[l, lo:lo + B, :, :span], self.v[l, lo:lo + B, :, :span]
            else:
                K, V = self.k[l, rows, :, :span], self.v[l, rows, :, :span]
            return F.scaled_dot_product_attention(q, K, V, attn_mask=mask, scale=self.scale, enable_gqa=True)

        h = self._layers(x, positions[:, None], attend)
        return self.lm_head(h[:, 0])

    def _write(self, l, rows, positions, k, v):  # k, v: (B, Hkv, D)
        self.k[l, rows, :, positions] = k
        self.v[l, rows, :, positions] = v

    def save_prefix(self, slot: int, length: int):
        return self.k[:, slot, :, :length].clone(), self.v[:, slot, :, :length].clone()

    def load_prefix(self, slot: int, prefix) -> None:
        k, v = prefix
        self.k[:, slot, :, :k.shape[2]] = k
        self.v[:, slot, :, :v.shape[2]] = v
