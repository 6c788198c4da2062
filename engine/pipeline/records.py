"""What one output line and one diagnostics line hold (DESIGN §4).

Non-finite floats (an infinite KL where a model gives a token no mass, an ESS ratio with a zero
denominator) are written as null: JSON has no infinity.
Not for: files and resume (store.py).
"""
from __future__ import annotations

import hashlib
import math

from ..outputs import SampleOutput
from ..prompts import as_messages

TOKEN_ARRAYS = ("alpha", "logp_theta", "logp_t", "logq", "logp_behavior", "kl_theta", "kl_t",
                "ess_theta", "ess_t", "entropy_theta", "entropy_t", "clamped", "forced")
FLAGS = ("clamped", "forced", "drafted")  # per-token 0/1: a clamp / a forced-teacher token decided alpha;
# an accepted draft token (speculative runs: descriptive only, never a weight)


def hash64(sample_id, n: int) -> int:
    """The RNG key of sample n of a row: stable across runs, resumes and workers (signed int64)."""
    h = int.from_bytes(hashlib.blake2b(f"{sample_id!r}\x00{n}".encode(), digest_size=8).digest(), "little")
    return h - (1 << 64) if h >= 1 << 63 else h


def clean(x):
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, list):
        return [clean(v) for v in x]
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items()}
    return x


def _mean(xs):
    xs = [x for x in xs if math.isfinite(x)]
    return sum(xs) / len(xs) if xs else None


def _std(xs):
    m = _mean(xs)
    xs = [x for x in xs if math.isfinite(x)]
    return (sum((x - m) ** 2 for x in xs) / len(xs)) ** 0.5 if xs else None


def summary(o: SampleOutput) -> dict:
    out = dict(
        num_tokens=len(o.token_ids), finish_reason=o.finish_reason,
        alpha_mean=_mean(o.alpha), alpha_std=_std(o.alpha),
        kl_theta_mean=_mean(o.kl_theta), kl_t_mean=_mean(o.kl_t),
        ess_ratio_mean=_mean(o.ess_ratio), ess_theta_mean=_mean(o.ess_theta), ess_t_mean=_mean(o.ess_t),
        entropy_theta_mean=_mean(o.entropy_theta), entropy_t_mean=_mean(o.entropy_t),
        clamped_frac=_mean(o.clamped), forced_frac=_mean(o.forced),
        seq_logw_theta=o.seq_logw_theta, seq_logw_t=o.seq_logw_t,
    )
    if o.carry_direct is not None:  # cross-tokenizer runs
        out.update(carry_direct=o.carry_direct, noncanonical=o.noncanonical)
    if o.draft_accept_rate is not None:  # speculative runs: descriptive only, never a weight
        out["draft_accept_rate"] = o.draft_accept_rate
    return out


def _drafted(o: SampleOutput) -> tuple:
    """The per-token `drafted` array, on speculative runs only."""
    return ("drafted",) if o.draft_accept_rate is not None else ()


def _arrays(o: SampleOutput, names) -> dict:
    return {k: [int(v) for v in getattr(o, k)] if k in FLAGS else getattr(o, k) for k in names}


def record(o: SampleOutput, *, sample_idx: int, sample_id, prompt_theta, prompt_t, originals: dict,
           system_prompt: str | None, token_stats: bool) -> dict:
    rec = dict(messages=as_messages(prompt_theta, system_prompt) + [{"role": "assistant", "content": o.text}])
    if prompt_t != prompt_theta:
        rec["prompt_t"] = prompt_t
    rec.update(sample_idx=sample_idx, n=o.sample_index, sample_id=sample_id, **originals, **summary(o))
    if token_stats:
        rec["token_ids"] = o.token_ids
        rec.update(_arrays(o, TOKEN_ARRAYS + _drafted(o)))
    return clean(rec)


def diagnostics(o: SampleOutput, *, sample_idx: int, sample_id, alpha_method: str, token_stats: bool) -> dict:
    d = dict(sample_idx=sample_idx, n=o.sample_index, sample_id=sample_id, alpha_method=alpha_method,
             **summary(o))
    if token_stats:
        d["token_ids"] = o.token_ids
        d.update(_arrays(o, TOKEN_ARRAYS + ("ess_ratio",) + _drafted(o)))
    return clean(d)
