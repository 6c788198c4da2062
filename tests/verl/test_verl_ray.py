"""verl's own machinery end to end on CPU: Ray -> LLMServerManager (rollout.name=qstar) -> agent
loop "qstar_agent" (pi_t sees a template over the sample's fields) -> DataProto -> verl's rollout
correction (token IS, truncated) and bypass mode. One Ray session, well under a minute."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

RESPONSE_LENGTH, THRESHOLD = 6, 1.5


def _config(pair_dirs):
    from hydra import compose, initialize_config_dir

    import verl

    conf = str(Path(verl.__file__).parent / "trainer" / "config")
    qstar = {"model_t": pair_dirs[1], "alpha_method": "kl_symmetry", "device": "cpu",
             "teacher_template": "{prompt}\nReference solution: {reward_model[ground_truth]}"}
    overrides = [f"actor_rollout_ref.model.path={pair_dirs[0]}", "actor_rollout_ref.rollout.name=qstar",
                 "actor_rollout_ref.rollout.nnodes=1", "actor_rollout_ref.rollout.n_gpus_per_node=1",
                 "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
                 "actor_rollout_ref.rollout.prompt_length=48",
                 f"actor_rollout_ref.rollout.response_length={RESPONSE_LENGTH}",
                 "actor_rollout_ref.rollout.calculate_log_probs=true",
                 "actor_rollout_ref.rollout.agent.num_workers=1",
                 "actor_rollout_ref.rollout.agent.default_agent_loop=qstar_agent",
                 "algorithm.rollout_correction.rollout_is=token",
                 f"algorithm.rollout_correction.rollout_is_threshold={THRESHOLD}"]
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=conf, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    with open_dict(cfg):
        cfg.actor_rollout_ref.rollout.engine_kwargs.qstar = qstar
    return cfg


@pytest.fixture(scope="module")
def ray_session():
    import ray

    # no idle workers prestarted: on 2 cores they only slow the three actors this test starts
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             _system_config={"prestart_worker_first_driver": False, "enable_worker_prestart": False},
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def test_agent_loop_to_rollout_correction(ray_session, pair_dirs):
    from verl import DataProto
    from verl.experimental.agent_loop.agent_loop import AgentLoopManager
    from verl.trainer.ppo.rollout_corr_helper import apply_bypass_mode, compute_rollout_correction_and_add_to_batch
    from verl.workers.rollout.llm_server import LLMServerManager

    config = _config(pair_dirs)
    servers = LLMServerManager.create(config)
    assert len(servers.server_addresses) == 1 and servers.server_addresses[0].startswith("qstar-0-")
    agents = AgentLoopManager.create(config, llm_client=servers.get_client())
    prompts = [[{"role": "user", "content": q}] for q in ("what is two plus two?", "solve the problem", "hello")]
    batch = DataProto.from_dict(non_tensors={
        "raw_prompt": np.array(prompts + [None], dtype=object)[:-1],
        "reward_model": np.array([{"ground_truth": str(i)} for i in range(3)], dtype=object),
        "data_source": np.array(["tiny"] * 3, dtype=object)})
    out = agents.generate_sequences(batch)

    rlp, mask = out.batch["rollout_log_probs"], out.batch["response_mask"]
    assert rlp.shape == (3, RESPONSE_LENGTH) and mask.shape == (3, RESPONSE_LENGTH)
    for i in range(3):
        n = int(mask[i].sum())
        theta = out.non_tensor_batch["qstar_logp_theta"][i]
        assert n >= 1 and all(len(out.non_tensor_batch[f"qstar_{k}"][i]) == n
                              for k in ("logp_theta", "logp_t", "alpha", "forced", "clamped"))
        assert torch.all(rlp[i, n:] == 0) and torch.all(rlp[i, :n] <= 0)  # zero-padded behaviour log-probs
        assert len(theta) == n

    # pi_t saw the template over the sample's fields, uncut (float64 teacher forcing with either
    # prompt; the teacher's 62 tokens exceed prompt_length, which caps only the policy's 40)
    import tiny
    import verl_tiny

    ref, tok = verl_tiny.Reference(*pair_dirs), tiny.tokenizer()
    n0 = int(mask[0].sum())
    tokens = out.batch["responses"][0, :n0].tolist()
    policy = [m for m in prompts[0]]
    shown = [{"role": "user", "content": prompts[0][0]["content"] + "\nReference solution: 0"}]
    ids = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
           for m in (policy, shown)]
    got = np.array(out.non_tensor_batch["qstar_logp_t"][0])
    np.testing.assert_allclose(got, ref.logp_t(ids[1], tokens), atol=2e-4)
    assert np.abs(got - ref.logp_t(ids[0], tokens)).max() > 1e-3

    # verl's decoupled correction: old_log_probs would come from the actor (= pi_theta at T = 1);
    # here qstar's own logp_theta stands in for it
    old = torch.zeros_like(rlp)
    for i in range(3):
        th = out.non_tensor_batch["qstar_logp_theta"][i]
        old[i, :len(th)] = torch.tensor(th, dtype=old.dtype)
    out.batch["old_log_probs"] = old
    corr, metrics = compute_rollout_correction_and_add_to_batch(out, config.algorithm.rollout_correction)
    want = torch.exp(old - rlp).clamp(max=THRESHOLD) * mask
    torch.testing.assert_close(corr.batch["rollout_is_weights"], want, rtol=1e-5, atol=1e-6)
    assert any(k.startswith("rollout_corr/") for k in metrics)

    from omegaconf import OmegaConf

    policy_loss = OmegaConf.create({"loss_mode": "vanilla"})
    apply_bypass_mode(out, config.algorithm.rollout_correction, policy_loss)
    assert torch.equal(out.batch["old_log_probs"], out.batch["rollout_log_probs"])
    assert policy_loss.loss_mode == "bypass_mode"
