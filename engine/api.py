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

from .config import EngineConfig, MixtureConfig, SamplingParams
from .core import Engine, Pair, Request
from .loading import load_model, tokenizer_gate
from .outputs import SampleOutput
from .prompts import PromptError, render


def _ids(tokenizer, prompt, chat_template, system_prompt) -> list[int]:
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return list(prompt)  # already token ids
    return render(tokenizer, prompt, chat_template=chat_template, system_prompt=system_prompt)


def _max_positions(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or 1 << 20)


class OptimalSamplingModel:
    """A loaded policy/teacher pair ready to sample from q ∝ pi_theta^a pi_t^(1-a)."""

    def __init__(self, pair: Pair, engine_cfg: EngineConfig, mixture: MixtureConfig):
        self.pair, self.engine_cfg, self.mixture = pair, engine_cfg, mixture
        self.tokenizer = pair.tokenizer
        self.engine = Engine(pair, engine_cfg, mixture)

    def generate(self, prompts, max_new_tokens: int = 100, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, prompts_t=None, n: int = 1, ignore_eos: bool = False,
                 chat_template: bool | tuple[bool, bool] = True, stop=None, min_p: float = 0.0,
                 system_prompt: str | None = None, keys: list[int] | None = None,
                 progress=None, should_stop=None) -> list[SampleOutput]:
        """Sample n responses per prompt; returns len(prompts) * n outputs, prompt-major.

        prompts / prompts_t: strings or OpenAI message lists; prompts_t (default: prompts) is
        what pi_t sees — e.g. the problem plus a reference solution. chat_template: apply the
        tokenizer's chat template (a (theta, t) pair sets it per side); a prompt given as a list
        of token ids is used as it is. keys: one int64 RNG key per output (flat, prompt-major,
        len(prompts) * n; default: (i << 20) + j for sample j of prompt i) — a sample's tokens
        depend only on (seed, key, position). should_stop: polled every step; once true no new
        request starts (the running ones finish) and the unstarted ones are not returned.
        A prompt that cannot be used becomes an output with finish_reason "error".
        """
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                top_p=top_p, min_p=min_p, seed=seed, n=n, ignore_eos=ignore_eos,
                                stop=stop or [])
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], dict)):
            raise ValueError("prompts must be a list of prompts (each a string or a message list)")
        prompts_t = prompts if prompts_t is None else prompts_t
        if len(prompts_t) != len(prompts):
            raise ValueError(f"prompts_t has {len(prompts_t)} entries but prompts has {len(prompts)}")
        if keys is not None and len(keys) != len(prompts) * n:
            raise ValueError(f"keys needs one entry per output (len(prompts) * n = {len(prompts) * n}), "
                             f"got {len(keys)}")
        ct_theta, ct_t = chat_template if isinstance(chat_template, tuple) else (chat_template, chat_template)
        requests = []
        for i, (p_theta, p_t) in enumerate(zip(prompts, prompts_t)):
            ids_theta, ids_t, err = [], [], None
            try:
                ids_theta = _ids(self.tokenizer, p_theta, ct_theta, system_prompt)
                ids_t = _ids(self.tokenizer, p_t, ct_t, system_prompt)
            except PromptError as e:
                err = str(e)
            for j in range(n):
                key = (i << 20) + j if keys is None else int(keys[len(requests)])
                requests.append(Request(index=len(requests), group=i, ids_theta=ids_theta, ids_t=ids_t,
                                        key=key, prompt_index=i, sample_index=j, error=err))
        if self.engine_cfg.threads:
            torch.set_num_threads(self.engine_cfg.threads)
        return self.engine.run(requests, params, progress=progress, should_stop=should_stop)


def create_optimal_sampling_model(model_theta, model_t, alpha_method: str = "kl_symmetry", alpha: float = 0.5,
                                  device: str | None = None, dtype: str | None = None, *,
                                  tokenizer=None, alpha_min: float = 0.0, alpha_max: float = 1.0,
                                  support: str = "", force_teacher: str = "",
                                  backend: str = "hf", **engine_options) -> OptimalSamplingModel:
    """Load the pair (paths, hub names, .gguf files or transformers models), check the tokenizers.

    alpha_method: fixed | entropy | kl_symmetry | ess_balance | reverse_kl_symmetry; alpha is the
    weight on pi_theta (for "fixed"). support="t_top_k:K,t_top_p:P" restricts both models to
    pi_t's top-k / nucleus set before alpha is solved; force_teacher="first,special" samples the
    first response token, and tokens where pi_t's argmax is a special token, from pi_t alone
    (alpha = 0, recorded in `forced`); docs/theory.md#controls. engine_options: EngineConfig fields (max_batch_size,
    threads, kernels_backend, cuda_graphs, force_row_model). tokenizer: required when both models
    are given as objects without one. backend: "hf" (this engine) or "vllm" (both models in one
    vLLM engine: engine.backends.vllm.QStarVLLM, docs/vllm.md).
    """
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
    tok_theta = tok_theta or tokenizer or tok_t
    tok_t = tok_t or tokenizer or tok_theta
    if tok_theta is None:
        raise ValueError("no tokenizer: pass tokenizer=... when both models are given as objects")
    vocab = tokenizer_gate(tok_theta, tok_t, m_theta, m_t, name_theta, name_t)
    pair = Pair(model_theta=m_theta, model_t=m_t, tokenizer=tok_theta, vocab=vocab,
                max_pos_theta=_max_positions(m_theta), max_pos_t=_max_positions(m_t),
                name_theta=name_theta, name_t=name_t, force_row_model=cfg.force_row_model,
                cuda_graphs=cfg.cuda_graphs and dev.type == "cuda")
    return OptimalSamplingModel(pair, cfg, mixture)
