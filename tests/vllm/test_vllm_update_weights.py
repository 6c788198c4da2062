"""update_policy_weights on the vllm backend: pi_theta reloaded in place, pi_t untouched.

Uses the session's engine_a and puts pi_theta's original weights back at the end (other tests
share the engine).
"""
import numpy as np
import pytest
from safetensors.torch import load_file

import vllm_tiny
from engine.config import MixtureConfig
from engine.policy_weights import WeightsError
from engine.prompts import render

PROMPTS = ["hello world", "what is two plus two?"]
TOL = 2e-4  # vLLM's CPU fp32 forward vs float64 (test_vllm_exact.py measures up to 1.3e-4)


def _max_err(model, outs, ref, side):
    err = 0.0
    for o in outs:
        pids = render(model.tokenizer, PROMPTS[o.prompt_index])
        lp, lt = ref.rows(pids, o.token_ids)
        rows = lp if side == "logp_theta" else lt
        exact = rows[np.arange(len(o.token_ids)), o.token_ids]
        err = max(err, float(np.max(np.abs(np.array(getattr(o, side)) - exact) / (1 + np.abs(exact)))))
    return err


def test_update_reloads_theta_keeps_t(engine_a, pair_a, tmp_path):
    import glob

    original = {}
    for f in glob.glob(f"{pair_a[0]}/*.safetensors"):
        original.update(load_file(f))
    new = vllm_tiny._model("llama", 11, hidden=64, layers=2, heads=2, kv_heads=1, head_dim=32)
    new.save_pretrained(tmp_path / "new")
    ref_new = vllm_tiny.Reference(str(tmp_path / "new"), pair_a[1])
    ref_old = vllm_tiny.Reference(*pair_a)
    engine_a.mixture = engine_a.engine.mixture = MixtureConfig(alpha_method="kl_symmetry")
    args = dict(max_new_tokens=8, n=2, seed=4)
    try:
        before = engine_a.generate(PROMPTS, **args)
        assert _max_err(engine_a, before, ref_old, "logp_theta") <= TOL
        # DDP-style names: accepted like the hf backend's
        n = engine_a.update_policy_weights([("module." + k, v) for k, v in new.state_dict().items()])
        assert n == len(new.state_dict())
        after = engine_a.generate(PROMPTS, **args)  # same prompts: the prefix cache must not answer
        assert _max_err(engine_a, after, ref_new, "logp_theta") <= TOL
        assert _max_err(engine_a, after, ref_new, "logp_t") <= TOL  # ref_new's t is the original t
        assert _max_err(engine_a, after, ref_old, "logp_theta") > 1e-2  # it really moved
    finally:
        engine_a.update_policy_weights(original)
    again = engine_a.generate(PROMPTS, **args)
    assert [o.token_ids for o in again] == [o.token_ids for o in before]


def test_update_refuses_another_model(engine_a, pair_a):
    t_weights = load_file(next(iter(__import__("glob").glob(f"{pair_a[1]}/*.safetensors"))))
    with pytest.raises(WeightsError, match="model_theta"):
        engine_a.update_policy_weights(t_weights)  # pi_t's qwen2 weights: other names and shapes


def test_trl_grpo_on_vllm(engine_a, pair_a):
    """docs/examples/trl_grpo.py on the vllm backend, q = pi_theta: TRL's log-ratio stays at the
    backend's fp32 noise after syncs (skipped where trl is not installed in this venv)."""
    pytest.importorskip("trl")
    import glob
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "docs" / "examples" / "trl_grpo.py"
    spec = importlib.util.spec_from_file_location("trl_grpo_example", path)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    original = {}
    for f in glob.glob(f"{pair_a[0]}/*.safetensors"):
        original.update(load_file(f))
    engine_a.mixture = engine_a.engine.mixture = MixtureConfig(alpha_method="fixed", alpha=1.0)
    try:
        r = ex.main(["--model-theta", pair_a[0], "--model-t", pair_a[1], "--backend", "vllm", "--steps", "2",
                     "--num-generations", "2", "--max-completion-length", "6"], sampler=engine_a)
    finally:
        engine_a.update_policy_weights(original)
    assert r["steps"] == r["sync_calls"] == 2 and r["policy_logp_moved"] >= 1e-3
    assert max(r["is_log_ratio_per_step"]) <= 3e-4, r  # vLLM's CPU fp32 forward vs transformers'
    assert r["reward_kwargs_ok"] and r["sampling_metrics_logged"]
