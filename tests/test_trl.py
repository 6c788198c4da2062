"""qstar as TRL GRPOTrainer's rollout backend (docs/examples/trl_grpo.py on tiny pairs, CPU fp32).

Skipped where trl is not installed (Python < 3.11: the `trl` extra's marker).
"""
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
import tiny  # noqa: E402


def _import_trl_trainer():
    """tests/ is on sys.path, and there tests/vllm looks like a namespace package "vllm" to TRL's
    find_spec check (then its version is "N/A" and TRL's import fails): import TRL's trainer
    once with tests/ off the path (modules stay cached)."""
    here = os.path.abspath(os.path.dirname(__file__))
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    try:
        importlib.import_module("trl.trainer.grpo_trainer")
    finally:
        sys.path[:] = saved


_import_trl_trainer()

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "trl_grpo.py"
SMALL = ["--num-generations", "2", "--prompts-per-step", "2", "--max-completion-length", "6"]


def _example():
    spec = importlib.util.spec_from_file_location("trl_grpo_example", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(dirs, *extra):
    return _example().main(["--model-theta", dirs[0], "--model-t", dirs[1], *SMALL, *extra])


@pytest.fixture(scope="module")
def fixed_run(pair_dirs):
    return _run(pair_dirs, "--steps", "2", "--alpha-method", "fixed", "--alpha", "1")


def test_alpha_one_matches_trl_after_syncs(fixed_run):
    """q = pi_theta: TRL's own log-ratio ~0 on every step, also after the policy moved."""
    r = fixed_run
    assert r["steps"] == r["sync_calls"] == r["rollout_rounds"] == 2
    assert len(r["is_log_ratio_per_step"]) == 2 and max(r["is_log_ratio_per_step"]) <= 1e-4, r
    assert r["policy_logp_moved"] >= 1e-3
    assert r["weights_max_abs_diff"] == 0.0  # the sync is bit-exact
    # qstar's logp_theta vs the trainer's weights evaluated in float64, after every sync
    # fp32 floor of the engine on these models: ~1.5e-5 absolute at |logp| up to ~8 (docs/guide.md)
    assert r["logp_theta_vs_trainer_max"] <= 3e-5, r["logp_theta_vs_trainer_per_round"]
    assert r["logp_theta_vs_trainer_fp32_max"] <= 5e-5  # vs its fp32 forward: two fp32 noises
    assert r["sampling_metrics_logged"] and r["completions_differ"] and r["reward_kwargs_ok"]
    assert r["teacher_saw_more"] and r["reward_std_mean"] > 0 and r["loss"] is not None


def test_kl_symmetry_ratio_clearly_nonzero(pair_dirs):
    r = _run(pair_dirs, "--steps", "1", "--alpha-method", "kl_symmetry")
    assert r["sampling_metrics_logged"] and r["is_log_ratio_abs_max"] > 0.1


def test_padded_vocabulary_bias(tmp_path):
    """64 padded logit rows: qstar samples the tokenizer's len(tok) real tokens, TRL normalises over
    all rows, so at alpha = 1 the per-token log-ratio is log(1 - padded mass) (docs/guide.md)."""
    tok = tiny.tokenizer()
    dirs = []
    for name, seed in (("theta", 1), ("t", 2)):
        tiny.model(seed=seed, vocab=len(tok) + 64).save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
        dirs.append(str(tmp_path / name))
    r = _run(dirs, "--steps", "1", "--alpha-method", "fixed", "--alpha", "1")
    assert r["is_log_ratio_abs_max"] > 1e-2  # the documented bias, measured


def _trainer(pair_dirs, model=None, teacher_prompt=None, **cfg):
    from transformers import AutoTokenizer

    from engine import create_optimal_sampling_model
    from engine.integrations.trl_grpo import QStarGRPOConfig, QStarGRPOTrainer

    ex = _example()
    args = QStarGRPOConfig(output_dir="/tmp/qstar-trl-test", num_generations=2, per_device_train_batch_size=2,
                           max_steps=1, use_cpu=True, bf16=False, report_to="none", **cfg)
    sampler = create_optimal_sampling_model(pair_dirs[0], pair_dirs[1], "fixed", 1.0, device="cpu")
    return QStarGRPOTrainer(model=model or pair_dirs[0], reward_funcs=[lambda completions, **k: [0.0] * len(completions)],
                            args=args, train_dataset=ex.dataset(), processing_class=AutoTokenizer.from_pretrained(pair_dirs[0]),
                            sampler=sampler, teacher_prompt=teacher_prompt)


@pytest.mark.parametrize("cfg,match", [(dict(use_vllm=True), "use_vllm"),
                                       (dict(repetition_penalty=1.2), "repetition_penalty")])
def test_config_qstar_cannot_honour(pair_dirs, cfg, match):
    with pytest.raises(ValueError, match=f"cannot honour: {match}"):
        _trainer(pair_dirs, **cfg)


def test_policy_of_another_model_refused(pair_dirs):
    from engine.policy_weights import WeightsError

    with pytest.raises(WeightsError, match="model_theta"):
        _trainer(pair_dirs, model=tiny.model("qwen2", seed=3))


def test_rollout_keys_distinct_across_rounds_ranks_indices():
    from engine.integrations.trl_grpo import rollout_key

    keys = {rollout_key(r, k, i) for r in range(20) for k in range(4) for i in range(64)}
    assert len(keys) == 20 * 4 * 64 and all(0 <= k < 2**63 for k in keys)


def test_teacher_view_from_a_function(pair_dirs):
    """pi_t's prompt from teacher_prompt(row); keys differ between rounds; config's length honoured."""
    hint = lambda row: row["prompt"][0]["content"] + " reference solution: " + row["answer"]  # noqa: E731
    trainer = _trainer(pair_dirs, teacher_prompt=hint, max_completion_length=3)
    rows = [trainer.train_dataset[0]] * 2
    trainer._rows = rows
    first = trainer.rollout([r["prompt"] for r in rows])
    trainer._rows = rows
    trainer.rollout([r["prompt"] for r in rows])
    outs = trainer.last_outputs
    assert all(o.num_prompt_tokens_t > o.num_prompt_tokens_theta for o in outs)
    assert all(len(c) <= 3 for c in first["completion_ids"])
    assert len({o.key for o in outs}) == 2 and trainer.rollout_rounds == 2
    assert [len(x) for x in first["logprobs"]] == [len(c) for c in first["completion_ids"]]


def test_repeats_share_a_prefill_only_when_blocks_match():
    from engine.integrations.trl_grpo import repeats

    a, b = [1, 2], [3]
    assert repeats([a, a, b, b], [a, a, b, b], 2) == 2
    assert repeats([a, a, b, b], [a, b, b, b], 2) == 1  # pi_t's views differ inside a block
    assert repeats([a, a, a], [a, a, a], 2) == 1 and repeats([a, a], [a, a], 1) == 1
