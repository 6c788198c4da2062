"""What `actor_rollout_ref.rollout.engine_kwargs.qstar` holds, validated, plus the pieces of a
rollout that need no verl: RNG keys per (request id, step), the token budget, the teacher's view.

    actor_rollout_ref.rollout.engine_kwargs.qstar:
      model_t: /path/to/teacher            # required; pi_theta is actor_rollout_ref.model.path
      alpha_method: kl_symmetry             # fixed | entropy | kl_symmetry | ess_balance | reverse_kl_symmetry
      teacher_template: "{prompt}\n\nReference solution: {reward_model[solution]}"

alpha is the weight on pi_theta (alpha = 1: sample pi_theta; 0: pi_t).
Not for: Ray, verl classes or models (server.py, replica.py, adapter.py, agent_loop.py).
"""
from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass, field

ALPHA_METHODS = ("fixed", "entropy", "kl_symmetry", "ess_balance", "reverse_kl_symmetry")


@dataclass
class QStarRolloutSettings:
    """engine_kwargs.qstar, one field per key (unknown keys are refused by from_config)."""

    model_t: str = ""                   # the teacher pi_t: a path, hub name or .gguf file (required)
    alpha_method: str = "kl_symmetry"   # how alpha (the weight on pi_theta) is chosen per token
    alpha: float = 0.5                  # alpha for alpha_method="fixed"
    alpha_min: float = 0.0              # clamps applied after solving (recorded in qstar_clamped)
    alpha_max: float = 1.0
    support: str = ""                   # e.g. "t_top_k:64" (docs/theory.md#controls)
    force_teacher: str = ""             # e.g. "first,special" (recorded in qstar_forced)
    dtype: str | None = None            # model dtype; None: bfloat16 on CUDA, float32 on CPU
    device: str | None = None           # None: cuda if visible, else cpu
    teacher_template: str | None = None  # pi_t's user turn over the sample's fields; None: the policy's prompt
    engine: dict = field(default_factory=dict)  # EngineConfig fields (max_batch_size, max_model_len, ...)

    def __post_init__(self):
        if not isinstance(self.model_t, str) or not self.model_t:
            raise ValueError("actor_rollout_ref.rollout.engine_kwargs.qstar.model_t is required: the teacher "
                             f"pi_t's path or hub name (got {self.model_t!r})")
        if self.alpha_method not in ALPHA_METHODS:
            raise ValueError(f"engine_kwargs.qstar.alpha_method must be one of {ALPHA_METHODS}, "
                             f"got {self.alpha_method!r}")
        for name in ("alpha", "alpha_min", "alpha_max"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"engine_kwargs.qstar.{name} must be a number in [0, 1], got {v!r}")
        if self.alpha_min > self.alpha_max:
            raise ValueError(f"engine_kwargs.qstar.alpha_min={self.alpha_min} exceeds alpha_max={self.alpha_max}")
        if self.teacher_template is not None:
            check_template(self.teacher_template)
        if not isinstance(self.engine, dict):
            raise ValueError(f"engine_kwargs.qstar.engine must be a mapping of EngineConfig fields, "
                             f"got {type(self.engine).__name__}")

    @classmethod
    def from_config(cls, engine_kwargs) -> "QStarRolloutSettings":
        """From the rollout config's engine_kwargs (a dict or DictConfig) under the key "qstar"."""
        raw = (engine_kwargs or {}).get("qstar") if engine_kwargs is not None else None
        raw = dict(raw or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"engine_kwargs.qstar has unknown keys {unknown}; known: {sorted(known)}")
        if "engine" in raw and raw["engine"] is not None:
            raw["engine"] = dict(raw["engine"])
        return cls(**raw)

    def sampler_kwargs(self) -> dict:
        """Keyword arguments of create_optimal_sampling_model (model paths aside)."""
        return dict(alpha_method=self.alpha_method, alpha=self.alpha, alpha_min=self.alpha_min,
                    alpha_max=self.alpha_max, support=self.support, force_teacher=self.force_teacher,
                    dtype=self.dtype, device=self.device, **self.engine)


def rollout_key(seed: int, step, request_id: str) -> int:
    """A 63-bit RNG key from (seed, trainer step, request id): requests and steps never share draws."""
    digest = hashlib.blake2b(f"qstar-verl:{seed}:{step}:{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def token_budget(sampling_params: dict, prompt_len: int, prompt_length: int, response_length: int,
                 max_model_len: int | None) -> int:
    """max_new_tokens the way verl's vLLM server picks max_tokens: the request's max_tokens /
    max_new_tokens if given, else response_length (capped by what prompt_length + response_length
    leaves), always >= 1 and within max_model_len."""
    if "max_tokens" in sampling_params:
        budget = sampling_params["max_tokens"]
    elif "max_new_tokens" in sampling_params:
        budget = sampling_params["max_new_tokens"]
    else:
        budget = min(response_length, prompt_length + response_length - prompt_len)
    if max_model_len:
        if max_model_len - prompt_len < 1:
            raise ValueError(f"prompt of {prompt_len} tokens leaves no room to generate within "
                             f"max_model_len={max_model_len}: raise rollout.max_model_len or shorten the prompt")
        budget = min(budget, max_model_len - prompt_len)
    return max(1, int(budget))


def check_template(template: str) -> list[str]:
    """The top-level field names a teacher template uses; a malformed template is a ValueError."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ValueError(f"engine_kwargs.qstar.teacher_template {template!r} is not a format string: {e}") from None
    if any(n == "" or n.isdigit() for n in names):
        raise ValueError(f"engine_kwargs.qstar.teacher_template {template!r} uses positional fields: "
                         "name each one, e.g. {prompt} or {reward_model[ground_truth]}")
    return [n.split(".")[0].split("[")[0] for n in names]


def teacher_messages(template: str | None, messages: list[dict], fields: dict) -> list[dict]:
    """pi_t's messages: the policy's, with the last user turn replaced by template.format(prompt=<that
    turn's text>, **fields) (fields: the sample's non-tensor fields). None: the policy's messages."""
    if not template:
        return messages
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last is None:
        raise ValueError("teacher_template needs a user turn in the sample's raw_prompt")
    values = {**fields, "prompt": messages[last]["content"]}
    try:
        text = template.format(**values)
    except (KeyError, IndexError, AttributeError) as e:
        raise ValueError(f"teacher_template {template!r}: the sample has no field {e} "
                         f"(its fields: {sorted(values)})") from None
    out = [dict(m) for m in messages]
    out[last]["content"] = text
    return out
