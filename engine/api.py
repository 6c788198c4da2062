"""The Python API, shaped like the seed's: create_optimal_sampling_model(...).generate(...).

    model = create_optimal_sampling_model(model_theta="path/or/hub", model_t="...",
                                          alpha_method="kl_symmetry")
    outs = model.generate(["What is 2+2?"], max_new_tokens=64, n=2)   # flat, prompt-major

alpha is the weight on pi_theta (alpha=1: sample pi_theta; 0: pi_t) — the seed document's
convention, not its later production code's (see docs/theory.md).
Not for: datasets and records (the pipeline), model internals (slot_model.py).
"""
from __future__ import annotations

import os

import torch

from .config import EngineConfig, MixtureConfig
from .core import Pair
from .loading import load_model, policy_vocab, tokenizer_gate
from .sampling_model import OptimalSamplingModel

__all__ = ["create_optimal_sampling_model", "OptimalSamplingModel"]


def _max_positions(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 1 << 20)


def create_optimal_sampling_model(model_theta, model_t, alpha_method: str = "kl_symmetry", alpha: float = 0.5,
                                  device: str | None = None, dtype: str | None = None, *,
                                  tokenizer=None, alpha_min: float = 0.0, alpha_max: float = 1.0,
                                  support: str = "", force_teacher: str = "", cross_tokenizer: bool = False,
                                  backend: str = "hf", **engine_options) -> OptimalSamplingModel:
    """Load the pair (paths, hub names, .gguf files or transformers models), check the tokenizers.

    alpha_method: fixed | entropy | kl_symmetry | ess_balance | reverse_kl_symmetry; alpha is the
    weight on pi_theta (for "fixed"). support="t_top_k:K,t_top_p:P" restricts both models to
    pi_t's top-k / nucleus set before alpha is solved; force_teacher="first,special" samples the
    first response token, and tokens where pi_t's argmax is a special token, from pi_t alone
    (alpha = 0, recorded in `forced`); docs/theory.md#controls. engine_options: EngineConfig fields (max_batch_size,
    threads, kernels_backend, cuda_graphs, force_row_model, max_model_len, kv_cache_gib, compile). tokenizer: required when both models
    are given as objects without one. backend: "hf" (this engine) or "vllm" (both models in one
    vLLM engine: engine.backends.vllm.QStarVLLM, docs/vllm.md). cross_tokenizer: the models may
    have different tokenizers (give each as a path or a (model, tokenizer) pair): sampling is in
    pi_theta's vocabulary, pi_t reads its own tokenization of the response and its distribution is
    carried onto pi_theta's (docs/guide.md#cross-tokenizer); hf backend only.
    """
    if not isinstance(cross_tokenizer, bool):
        raise ValueError(f"cross_tokenizer must be True or False, got {cross_tokenizer!r}")
    if cross_tokenizer and backend != "hf":
        raise ValueError(f"cross_tokenizer=True (--cross-tokenizer) needs backend='hf': the {backend} backend "
                         "runs both models on one token sequence, so it cannot re-tokenize for the teacher")
    if backend == "vllm":
        from .backends.vllm import QStarVLLM

        return QStarVLLM(model_theta, model_t, alpha_method, alpha, device, dtype, tokenizer=tokenizer,
                         alpha_min=alpha_min, alpha_max=alpha_max, support=support,
                         force_teacher=force_teacher, **engine_options)
    if backend != "hf":
        raise ValueError(f"backend must be 'hf' or 'vllm', got {backend!r}")
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).removeprefix("torch.")
    cfg = EngineConfig(device=device, dtype=dtype, **engine_options)
    mixture = MixtureConfig(alpha_method=alpha_method, alpha=alpha, alpha_min=alpha_min, alpha_max=alpha_max,
                            support=support, force_teacher=force_teacher)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    dev = torch.device(cfg.device)
    m_theta, tok_theta, name_theta = load_model(model_theta, dev, cfg.torch_dtype)
    if isinstance(model_t, (str, os.PathLike)) and str(model_t) == str(model_theta):
        m_t, tok_t, name_t = m_theta, tok_theta, name_theta  # one model, two views: share the weights
    else:
        m_t, tok_t, name_t = load_model(model_t, dev, cfg.torch_dtype)
    if cross_tokenizer and (tok_theta is None or tok_t is None):
        raise ValueError("cross_tokenizer=True needs each model's own tokenizer: give each model as a path or "
                         "as a (model, tokenizer) pair, not tokenizer=")
    tok_theta = tok_theta or tokenizer or tok_t
    tok_t = tok_t or tokenizer or tok_theta
    if tok_theta is None:
        raise ValueError("no tokenizer: pass tokenizer=... when both models are given as objects")
    cross = None
    if cross_tokenizer:
        from .cross_tokenizer import CrossPair

        cross = CrossPair.build(tok_theta, tok_t, m_theta, m_t)
        vocab = policy_vocab(tok_theta, m_theta, name_theta, cross.eos_theta)
    else:
        vocab = tokenizer_gate(tok_theta, tok_t, m_theta, m_t, name_theta, name_t)
    pair = Pair(model_theta=m_theta, model_t=m_t, tokenizer=tok_theta, vocab=vocab, tokenizer_t=tok_t, cross=cross,
                max_pos_theta=_max_positions(m_theta), max_pos_t=_max_positions(m_t),
                name_theta=name_theta, name_t=name_t, force_row_model=cfg.force_row_model,
                cuda_graphs=cfg.cuda_graphs and dev.type == "cuda")
    return OptimalSamplingModel(pair, cfg, mixture)
