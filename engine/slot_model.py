"""Llama-family HF models run on a slot KV cache: prefill one slot, decode many rows at
per-row positions (each row its own prompt length), like nano-vllm's model runner.

The HF modules (embeddings, projections, norms, MLP, rotary embedding, lm_head) are used as
they are — only attention and the cache are ours — so weights need no conversion and the
logits equal HF's forward to float rounding (tests compare them). Families whose attention
is plain RoPE + GQA qualify: llama, qwen2, qwen3, mistral (no sliding window in use).
Everything else runs on hf_fallback.RowModel. `extend` is the one primitive: packed prefill,
one-token decode (the CUDA-graph-captured step, graphs.py) and multi-token appends (speculative
verification, rollback) are all calls of it. Decode attention reads only each row's live KV
(qstar_kernels.decode_attention: Triton on CUDA).
Not for: sampling or scheduling (engine/core.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from qstar_kernels.attention import decode_attention

from . import cpu_linear

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
    mlp = base.layers[0].mlp
    if not all(hasattr(mlp, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return "unexpected MLP layout"
    return None


def _call(mod, x):
    return mod(x)


def kv_bytes_per_position(model, dtype: torch.dtype) -> int:
    """Bytes one cached position of one slot takes (K and V, every layer)."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * torch.finfo(dtype).bits // 8


class SlotModel:
    """KV cache (layers, slots + 1, kv_heads, max_len, head_dim) per model; rows index slots.

    The extra last slot (`scratch`) takes the writes of padding: padded tokens of a packed
    prefill and the padded rows of a CUDA-graph bucket, so they never touch a live slot."""

    capturable = True  # decode has no host sync and no Python branch on tensor values

    def __init__(self, model, n_slots: int, max_len: int, packed_linears: bool = False):
        base = model.model
        self.model, self.base, self.lm_head = model, base, model.get_output_embeddings()
        attn = base.layers[0].self_attn
        cfg = model.config
        self.head_dim = attn.head_dim
        self.scale = attn.scaling
        self.max_len = max_len
        self.scratch = n_slots
        p = next(model.parameters())
        shape = (len(base.layers), n_slots + 1, cfg.num_key_value_heads, max_len, self.head_dim)
        self.k = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.v = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.lin = _call
        if packed_linears and p.device.type == "cpu" and p.dtype == torch.float32 and cpu_linear.available():
            self.lin = cpu_linear.PackedLinears(n_slots)

    def _qkv(self, attn, x, cos, sin):
        """q (B, H, T, D), k and v (B, Hkv, T, D) with RoPE applied (and qwen3's head norms)."""
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        B, T, _ = x.shape
        q = self.lin(attn.q_proj, x).view(B, T, -1, self.head_dim)
        k = self.lin(attn.k_proj, x).view(B, T, -1, self.head_dim)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        v = self.lin(attn.v_proj, x).view(B, T, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        return q, k, v

    def _layers(self, x, positions, attend):
        """Run every decoder layer; attend(l, q, k, v) writes the cache and returns attention."""
        cos, sin = self.base.rotary_emb(x, positions)
        for l, layer in enumerate(self.base.layers):
            h = self._norm(layer.input_layernorm, x)
            q, k, v = self._qkv(layer.self_attn, h, cos, sin)
            o = attend(l, q, k, v)  # (B, H, T, D)
            x = x + self.lin(layer.self_attn.o_proj, o.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))
            x = x + self._mlp(layer.mlp, self._norm(layer.post_attention_layernorm, x))
        return self._norm(self.base.norm, x)

    def _norm(self, norm, x):
        """fp32: one fused F.rms_norm (the same math as HF's RMSNorm, whose six small ops cost more
        than the norm at decode sizes); other dtypes: HF's module (it rounds to the input dtype
        before the weight)."""
        eps = getattr(norm, "variance_epsilon", None)
        if x.dtype != torch.float32 or eps is None:
            return norm(x)
        return F.rms_norm(x, norm.weight.shape, norm.weight, eps)

    def _mlp(self, mlp, x):
        """The gated MLP of these families (LlamaMLP's forward) on self.lin."""
        return self.lin(mlp.down_proj, mlp.act_fn(self.lin(mlp.gate_proj, x)) * self.lin(mlp.up_proj, x))

    def extend(self, rows: torch.Tensor, tokens: torch.Tensor, starts: torch.Tensor,
               lengths: torch.Tensor | None = None, *, fresh: bool = False, last_only: bool = False,
               span: int | None = None, first: int | None = None) -> torch.Tensor:
        """Append tokens (B, T) to slots `rows` (B,) at positions starts[b] + t, t < lengths[b]
        (default all T; the rest is padding). Returns logits (B, T, W) at every appended
        position, or (B, W) at each row's last real token when last_only.

        fresh (a Python bool, True only when every start is 0): attention is a causal SDPA over
        the new tokens (what flash attention takes); otherwise each appended token reads its
        row's cache up to itself through qstar_kernels.decode_attention (Triton on CUDA: live
        KV only). span: a bound on starts + T the caller knows (CPU gathers only that much)."""
        B, T = tokens.shape
        dev = tokens.device
        pos = starts[:, None] + torch.arange(T, device=dev)[None, :]  # (B, T)
        wrows = rows[:, None].expand(B, T)
        if lengths is not None:  # padding writes land in the scratch slot
            wrows = torch.where(torch.arange(T, device=dev)[None, :] < lengths[:, None], wrows, self.scratch)
        wpos = pos.clamp(max=self.max_len - 1)
        qrows, qlens = rows[:, None].expand(B, T).reshape(-1), (pos + 1).reshape(-1)  # no repeat_interleave: it can sync

        def attend(l, q, k, v):
            self.k[l, wrows, :, wpos] = k.transpose(1, 2)  # (B, T, Hkv, D)
            self.v[l, wrows, :, wpos] = v.transpose(1, 2)
            if fresh:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=True)
            H = q.shape[1]
            o = decode_attention(q.transpose(1, 2).reshape(B * T, H, self.head_dim), self.k[l], self.v[l],
                                 qrows, qlens, self.scale, span=span, first=first if T == 1 else None)
            return o.view(B, T, H, self.head_dim).transpose(1, 2)

        h = self._layers(self.base.embed_tokens(tokens), pos, attend)
        if last_only:
            last = (lengths - 1) if lengths is not None else torch.full((B,), T - 1, device=dev)
            h = h[torch.arange(B, device=dev), last]
        return self.lin(self.lm_head, h)

    def prefill(self, slots: list[int], ids: list[list[int]]) -> torch.Tensor:  # (B, W)
        """Packed prefill: every prompt in one forward (right-padded), logits of each last token."""
        dev = self.k.device
        T = max(map(len, ids))
        tokens = torch.tensor([x + [0] * (T - len(x)) for x in ids], device=dev)
        lengths = torch.tensor([len(x) for x in ids], device=dev)
        rows = torch.tensor(slots, device=dev)
        with torch.inference_mode():
            return self.extend(rows, tokens, torch.zeros_like(rows), lengths, fresh=True, last_only=True)

    def decode(self, rows: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor,
               span: int | None = None, first: int | None = None) -> torch.Tensor:  # (B, W)
        """Append `tokens` (B,) at `positions` (B,) of slots `rows` (B,); logits of the next token."""
        return self.extend(rows, tokens[:, None], positions, span=span, first=first)[:, 0]

    def save_prefix(self, slot: int, length: int):
        return self.k[:, slot, :, :length].clone(), self.v[:, slot, :, :length].clone()

    def load_prefix(self, slot: int, prefix) -> None:
        k, v = prefix
        self.k[:, slot, :, :k.shape[2]] = k
        self.v[:, slot, :, :v.shape[2]] = v
