"""Weight sync through verl's adapter interface (verl's own naive sync worker needs CUDA): sync and
async generators of HF-named tensors change pi_theta (logp_theta) and never pi_t; a wrong name or
shape is one WeightsError and copies nothing; the step tags later samples."""
import asyncio

import pytest
import torch

import tiny
import verl_tiny
from engine import create_optimal_sampling_model
from engine.integrations.verl.adapter import QStarRolloutAdapter
from engine.policy_weights import WeightsError



@pytest.fixture()
def fresh(pair_dirs):
    """Its own pair: these tests change pi_theta."""
    s = create_optimal_sampling_model(model_theta=pair_dirs[0], model_t=pair_dirs[1], device="cpu")
    server = verl_tiny.server(s, response_length=4, prompt_length=32, ignore_eos=True)
    from types import SimpleNamespace

    from verl.workers.config import RolloutConfig

    cfg = RolloutConfig(name="qstar", tensor_model_parallel_size=1, response_length=4, prompt_length=32)
    adapter = QStarRolloutAdapter(cfg, SimpleNamespace(path=pair_dirs[0]), None, server=server)
    return s, server, adapter


def _sample(server):
    ids = tiny.tokenizer()("what is two plus two?")["input_ids"]
    out = asyncio.run(server.generate(prompt_ids=ids, sampling_params={"logprobs": True}, request_id="q"))
    return out


def _teacher_state(s):
    return {k: v.clone() for k, v in s.pair.model_t.state_dict().items()}


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_update_weights_changes_theta_only(fresh, kind):
    s, server, adapter = fresh
    before, t_before = _sample(server), _teacher_state(s)
    new = tiny.model("llama", seed=7).state_dict()

    def gen():
        yield from new.items()

    async def agen():
        for item in new.items():
            yield item

    out = asyncio.run(adapter.update_weights(gen() if kind == "sync" else agen(), global_steps=5))
    assert out == {"copied": len(new), "global_steps": 5}
    for k, v in s.pair.model_theta.state_dict().items():
        assert torch.equal(v, new[k])
    assert all(torch.equal(v, t_before[k]) for k, v in s.pair.model_t.state_dict().items())
    after = _sample(server)
    assert after.extra_fields["qstar_logp_theta"][0] != before.extra_fields["qstar_logp_theta"][0]
    assert after.extra_fields["global_steps"] == 5
    asyncio.run(adapter.release())
    assert asyncio.run(adapter.resume(["weights"]))["global_steps"] == 5


@pytest.mark.parametrize("bad", ["name", "shape"])
def test_wrong_weights_are_one_clear_error(fresh, bad):
    s, _, adapter = fresh
    theta = {k: v.clone() for k, v in s.pair.model_theta.state_dict().items()}
    items = list(tiny.model("llama", seed=7).state_dict().items())
    items[-1] = ("model.no_such.weight", items[-1][1]) if bad == "name" else (items[-1][0], torch.zeros(3, 3))
    with pytest.raises(WeightsError, match="not parameters of model_theta" if bad == "name" else "wrong shape"):
        asyncio.run(adapter.update_weights(iter(items), global_steps=1))
    assert all(torch.equal(v, theta[k]) for k, v in s.pair.model_theta.state_dict().items())  # nothing copied
    with pytest.raises(ValueError, match="named_tensors"):
        asyncio.run(adapter.update_weights(iter(items), wire_format="delta_flush"))
