"""Which model pairs one vLLM engine can hold, decided from their configs before anything loads.

Refused, each with a message naming the model, the value and what to do: hybrid / state-space
/ sliding-window / chunked-attention models (their caches do not share the engine's one
full-attention block table), multimodal configs, a tensor-parallel degree that does not split
a model's heads, a different TP degree asked for pi_t, and (on CPU) head sizes vLLM's CPU
attention lacks. The tokenizer gate itself is engine.loading.tokenizer_gate.
Not for: anything that needs torch or vLLM at import time (the adapter runs these first).
"""
from __future__ import annotations

# model types whose layers are not all full attention (state-space, linear, hybrid)
HYBRID_TYPES = frozenset({
    "mamba", "mamba2", "falcon_mamba", "jamba", "zamba", "zamba2", "bamba", "falcon_h1",
    "nemotron_h", "granitemoehybrid", "lfm2", "lfm2_moe", "qwen3_next", "plamo2", "minimax",
    "minimax_text_01", "recurrent_gemma", "rwkv", "rwkv7", "xlstm", "kimi_linear", "qwen3_5",
})
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vllm cpu_attn, 0.32


class PairError(ValueError):
    """A pair (or an option) this backend cannot run; the message says why and what to do."""


def _text(cfg):
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def head_dim(cfg) -> int:
    c = _text(cfg)
    return int(getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)


def attention_problem(cfg) -> str | None:
    """Why this model's attention does not fit a plain full-attention KV cache, or None."""
    c = _text(cfg)
    mtype = getattr(c, "model_type", "") or getattr(cfg, "model_type", "")
    if mtype in HYBRID_TYPES:
        return f"model_type {mtype!r} is hybrid / state-space (not all layers are full attention)"
    kinds = set(getattr(c, "layer_types", None) or ()) - {"full_attention"}
    if kinds:
        return f"layer_types include {sorted(kinds)} (hybrid or sliding-window attention)"
    window = getattr(c, "sliding_window", None)
    if window and getattr(c, "use_sliding_window", True):
        return f"sliding_window={window} is active"
    if getattr(c, "attention_chunk_size", None):
        return f"attention_chunk_size={c.attention_chunk_size} (chunked local attention)"
    if c is not cfg and getattr(cfg, "vision_config", None) is not None:
        return "it is a multimodal model (a text-only causal LM is needed)"
    return None


def tp_problem(cfg, tp: int) -> str | None:
    c = _text(cfg)
    heads = int(c.num_attention_heads)
    kv = int(getattr(c, "num_key_value_heads", None) or heads)
    if heads % tp:
        return f"{heads} attention heads do not split over tensor_parallel_size={tp}"
    if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
        return f"{kv} KV heads do not split (or replicate) over tensor_parallel_size={tp}"
    return None


def check_pair_configs(cfg_theta, cfg_t, tp: int, *, name_theta: str, name_t: str,
                       cpu: bool = False) -> None:
    """Raise PairError if the pair cannot share one vLLM engine (see the module docstring)."""
    for side, cfg, name in (("model_theta", cfg_theta, name_theta), ("model_t", cfg_t, name_t)):
        why = attention_problem(cfg)
        if why:
            raise PairError(f"{side} ({name}): {why}. The vllm backend holds both models in one "
                            "engine with one full-attention KV cache layout; use --backend hf for it")
        why = tp_problem(cfg, tp)
        if why:
            raise PairError(f"{side} ({name}): {why}. Both models share the engine's TP degree; "
                            "pick a tensor_parallel_size that divides both models' heads")
        if cpu and head_dim(cfg) not in CPU_HEAD_SIZES:
            raise PairError(f"{side} ({name}): head_dim {head_dim(cfg)} is not supported by vLLM's "
                            f"CPU attention (supported: {CPU_HEAD_SIZES}); use --backend hf on CPU")


def check_tp(tensor_parallel_size: int, tensor_parallel_size_t: int | None) -> None:
    if not isinstance(tensor_parallel_size, int) or tensor_parallel_size < 1:
        raise PairError(f"tensor_parallel_size must be an int >= 1, got {tensor_parallel_size!r}")
    if tensor_parallel_size_t not in (None, tensor_parallel_size):
        raise PairError(f"tensor_parallel_size_t={tensor_parallel_size_t} differs from "
                        f"tensor_parallel_size={tensor_parallel_size}: one vLLM engine shards both "
                        "models over the same ranks; use one TP degree (or --backend hf)")
