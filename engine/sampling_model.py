"""OptimalSamplingModel: a loaded pair ready to sample (what create_optimal_sampling_model returns;
the vLLM backend subclasses it). alpha is the weight on pi_theta.

update_policy_weights copies a trainer's pi_theta into the pair in place (RL rollouts).
Not for: loading the pair (api.py, loading.py) or the decode loop (core.py).
"""
from __future__ import annotations

import copy

import torch

from .config import EngineConfig, MixtureConfig, SamplingParams
from .core import Engine, Pair, Request
from .outputs import SampleOutput
from .policy_weights import check_weights, named_weights
from .prompts import PromptError, render


def _ids(tokenizer, prompt, chat_template, system_prompt) -> list[int]:
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return list(prompt)  # already token ids
    return render(tokenizer, prompt, chat_template=chat_template, system_prompt=system_prompt)



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
                 progress=None, should_stop=None, speculative: int = 0,
                 draft: str = "auto") -> list[SampleOutput]:
        """Sample n responses per prompt; returns len(prompts) * n outputs, prompt-major.

        prompts / prompts_t: strings or OpenAI message lists; prompts_t (default: prompts) is
        what pi_t sees — e.g. the problem plus a reference solution. chat_template: apply the
        tokenizer's chat template (a (theta, t) pair sets it per side); a prompt given as a list
        of token ids is used as it is (cross-tokenizer mode: pi_t's prompts render with pi_t's
        own tokenizer and chat template; ids in prompts_t are the teacher's). keys: one int64 RNG key per output (flat, prompt-major,
        len(prompts) * n; default: (i << 20) + j for sample j of prompt i) — a sample's tokens
        depend only on (seed, key, position). speculative=K: the draft model (draft="theta" |
        "t" | "auto" = fewer parameters) proposes K tokens per round and both models score them in
        one forward; the emitted tokens keep exactly the behaviour distribution and the records
        their meaning (docs/theory.md#speculative), though not a plain run's tokens. should_stop: polled every step; once true no new
        request starts (the running ones finish) and the unstarted ones are not returned.
        A prompt that cannot be used becomes an output with finish_reason "error".
        """
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                top_p=top_p, min_p=min_p, seed=seed, n=n, ignore_eos=ignore_eos,
                                stop=stop or [], speculative=speculative, draft=draft)
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], dict)):
            raise ValueError("prompts must be a list of prompts (each a string or a message list)")
        if self.pair.cross is not None and prompts_t is None and any(
                isinstance(p, list) and p and all(isinstance(t, int) for t in p) for p in prompts):
            raise ValueError("cross-tokenizer mode: a prompt given as token ids is theta's ids; pass prompts_t "
                             "(the teacher's own ids or text) too")
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
                ids_t = _ids(self.pair.tokenizer_t or self.tokenizer, p_t, ct_t, system_prompt)
            except PromptError as e:
                err = str(e)
            for j in range(n):
                key = (i << 20) + j if keys is None else int(keys[len(requests)])
                requests.append(Request(index=len(requests), group=i, ids_theta=ids_theta, ids_t=ids_t,
                                        key=key, prompt_index=i, sample_index=j, error=err))
        if self.engine_cfg.threads:
            torch.set_num_threads(self.engine_cfg.threads)
        return self.engine.run(requests, params, progress=progress, should_stop=should_stop)

    # ---- policy weight sync (a trainer's rollouts) -------------------------------------
    def update_policy_weights(self, weights) -> int:
        """Copy new pi_theta weights into the pair in place; returns how many tensors were copied.

        weights: a state dict or an iterable of (name, tensor) pairs, under the names of the
        transformers model or of its DDP / torch.compile / PEFT (merged) wrappings. Every name and
        shape is checked before anything is copied (WeightsError, a ValueError, otherwise). The copy
        goes into the model's own parameters (`param.copy_` under no_grad), so KV caches, compiled
        steps and CUDA graphs stay valid. pi_t never changes: when both sides share one model
        object (model_t loaded from model_theta's path), the first update gives pi_t its own copy
        of the weights (memory: one more model) and rebuilds the engine once.
        """
        items = named_weights(weights)
        params = dict(self.pair.model_theta.named_parameters(remove_duplicate=False))
        check_weights(items, {n: p.shape for n, p in params.items()}, self.pair.name_theta)
        self._unshare_teacher()
        with torch.no_grad():
            for name, tensor in items:
                params[name].copy_(tensor)  # casts dtype and moves device as needed
        return len(items)

    def _unshare_teacher(self) -> None:
        """Give pi_t weights of its own when any of its parameters is one of pi_theta's."""
        p = self.pair
        theta_ptrs = {t.data_ptr() for t in p.model_theta.parameters()}
        if not any(t.data_ptr() in theta_ptrs for t in p.model_t.parameters()):
            return
        p.model_t = copy.deepcopy(p.model_t)
        # the old engine's runners hold the shared object on both sides: start a fresh one (built
        # on the next generate, as in __init__)
        self.engine = Engine(p, self.engine_cfg, self.mixture)
