"""load_pair: both models and the engine as a run's options say — what `qstar generate` loads in
its own process (run.py) and what each Ray replica loads (distributed/replica.py), in one place.

Not for: Ray (distributed/), prompts or records.
"""
from __future__ import annotations


def load_pair(cfg):
    """An OptimalSamplingModel over cfg's --model-theta / --model-t with cfg's mixture and engine options."""
    from ..api import create_optimal_sampling_model  # torch and transformers: only once a run loads models
    from ..loading import quiet_libraries

    quiet_libraries()  # our progress line is the one to read
    m = cfg.mixture()
    return create_optimal_sampling_model(cfg.model_theta, cfg.model_t, alpha_method=m.alpha_method,
                                         alpha=m.alpha, alpha_min=m.alpha_min, alpha_max=m.alpha_max,
                                         support=m.support, force_teacher=m.force_teacher, device=cfg.device,
                                         dtype=cfg.dtype, max_batch_size=cfg.batch_size, threads=cfg.threads,
                                         backend=cfg.backend, cross_tokenizer=bool(cfg.cross_tokenizer))
