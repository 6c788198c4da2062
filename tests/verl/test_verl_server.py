"""The server contract verl relies on, in process (no Ray): TokenOutput fields and their lengths,
log_probs = logp_behavior = a float64 recomputation, verl's keyword arguments, token budget, RNG
keys, pi_t's prompt, lifecycle answers, settings errors."""
import asyncio

import numpy as np
import pytest

import tiny
import verl_tiny
from engine.integrations.verl.settings import QStarRolloutSettings, rollout_key, teacher_messages

FIELDS = ("qstar_logp_theta", "qstar_logp_t", "qstar_alpha", "qstar_forced", "qstar_clamped")


def _ids(text):
    return tiny.tokenizer()(text)["input_ids"]


def _gather(server, *calls):
    async def go():
        return await asyncio.gather(*[server.generate(**c) for c in calls])
    return asyncio.run(go())


class _Recording:
    """The sampler, keeping what its generate returned (the recorded SampleOutputs)."""

    def __init__(self, sampler):
        self.inner, self.outputs = sampler, []

    def generate(self, *a, **k):
        outs = self.inner.generate(*a, **k)
        self.outputs += outs
        return outs

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_token_output_contract_and_float64_logprobs(sampler, pair_dirs):
    rec = _Recording(sampler)
    server = verl_tiny.server(rec, response_length=6, prompt_length=32, seed=3)
    ids_a, ids_b = _ids("what is two plus two?"), _ids("solve the problem")
    ids_t = _ids("reference solution: add the numbers")
    sp = dict(temperature=0.8, top_p=0.9, top_k=20, repetition_penalty=1.0, logprobs=True)
    outs = _gather(server,
                   dict(prompt_ids=ids_a, sampling_params=sp, request_id="r1", image_data=None, video_data=None,
                        priority=3, mm_processor_kwargs=None, some_future_kwarg="x"),  # unknown kwargs: accepted
                   dict(prompt_ids=ids_b, sampling_params=dict(sp), request_id="r2", qstar_prompt_ids_t=ids_t))
    assert len(rec.outputs) == 2  # sent together: one batch
    ref = verl_tiny.Reference(*pair_dirs)
    for out, rec_out, ids, idt in zip(outs, rec.outputs, (ids_a, ids_b), (ids_a, ids_t)):
        n = len(out.token_ids)
        assert 1 <= n <= 6 and out.stop_reason == "completed"
        assert len(out.log_probs) == n and all(len(out.extra_fields[f]) == n for f in FIELDS)
        assert out.log_probs == rec_out.logp_behavior  # exactly what the engine recorded
        assert out.extra_fields["qstar_logp_theta"] == rec_out.logp_theta
        want = ref.behaviour_logprobs(ids, idt, out.token_ids, out.extra_fields["qstar_alpha"], 0.8, 20, 0.9)
        np.testing.assert_allclose(out.log_probs, want, atol=1e-4)
        assert out.extra_fields["global_steps"] is None


def test_logprobs_false_budget_and_keys(sampler):
    server = verl_tiny.server(sampler, response_length=5, prompt_length=32, seed=0, ignore_eos=True)
    ids = _ids("hello world")
    sp = dict(temperature=1.0, top_p=1.0, top_k=-1, repetition_penalty=1.0, logprobs=False)
    a, b, c = _gather(server, *[dict(prompt_ids=ids, sampling_params=dict(sp), request_id=r) for r in ("x", "y", "x")])
    assert a.log_probs is None and len(a.token_ids) == 5  # max_new_tokens = response_length
    assert len(a.extra_fields["qstar_alpha"]) == 5
    assert a.token_ids == c.token_ids and a.token_ids != b.token_ids  # a key per request id
    (d,) = _gather(server, dict(prompt_ids=ids, sampling_params=dict(sp, max_tokens=2), request_id="x"))
    assert len(d.token_ids) == 2  # an explicit max_tokens (verl's fully-async client) wins
    keys = {rollout_key(0, s, r) for s in (None, 1, 2) for r in ("x", "y")}
    assert len(keys) == 6 and all(0 <= k < 2**63 for k in keys)
    with pytest.raises(ValueError, match="repetition_penalty"):
        _gather(server, dict(prompt_ids=ids, sampling_params=dict(sp, repetition_penalty=1.1), request_id="z"))


def test_teacher_prompt_changes_only_logp_t(sampler):
    server = verl_tiny.server(sampler, response_length=4, prompt_length=32, ignore_eos=True)
    ids, ids_t = _ids("what is two plus two?"), _ids("reference solution: four")
    sp = dict(temperature=0, top_p=1.0, top_k=-1, logprobs=True)  # greedy: tokens may still differ via alpha
    plain, teach = _gather(server, dict(prompt_ids=ids, sampling_params=sp, request_id="a"),
                           dict(prompt_ids=ids, sampling_params=dict(sp), request_id="a", qstar_prompt_ids_t=ids_t))
    assert plain.extra_fields["qstar_logp_t"][0] != teach.extra_fields["qstar_logp_t"][0]
    assert plain.log_probs == [0.0] * 4  # greedy: the behaviour is a point mass


def test_lifecycle_is_idempotent_and_honest(sampler):
    server = verl_tiny.server(sampler, response_length=2, prompt_length=32)
    run = asyncio.run
    _gather(server, dict(prompt_ids=_ids("hello"), sampling_params={}, request_id="w"))
    assert run(server.release_kv_cache())["kv_cache"] == "released"
    assert sampler.engine.stepper is None
    assert run(server.release_kv_cache())["kv_cache"] == "none held"  # twice: honest, no error
    s = run(server.sleep())
    assert s["kv_cache"] == "none held" and "not offload" in s["weights"]
    assert run(server.wake_up(tags=["weights"])) == run(server.wake_up(tags=["kv_cache"]))
    assert run(server.clear_kv_cache())["prefix_cache"].startswith("none")
    out = run(server.abort_all_requests(reject_request=True))
    assert out["aborted_count"] == 0
    (r,) = _gather(server, dict(prompt_ids=_ids("hello"), sampling_params={}, request_id="v"))
    assert r.stop_reason == "aborted" and r.token_ids == []
    run(server.resume_generation())
    run(server.resume_generation())
    (r,) = _gather(server, dict(prompt_ids=_ids("hello"), sampling_params={}, request_id="v"))
    assert r.stop_reason == "completed" and sampler.engine.stepper is not None  # cache rebuilt
    assert run(server.start_profile())["profile"] == "not supported"


def test_settings_and_teacher_template():
    s = QStarRolloutSettings.from_config({"qstar": {"model_t": "t/", "alpha_method": "fixed", "alpha": 0.3,
                                                    "engine": {"max_batch_size": 4}}})
    assert s.sampler_kwargs()["max_batch_size"] == 4 and s.sampler_kwargs()["alpha"] == 0.3
    for bad, msg in (({}, "model_t is required"), ({"model_t": "t", "alhpa": 1}, "unknown keys"),
                     ({"model_t": "t", "alpha_method": "kl"}, "alpha_method"),
                     ({"model_t": "t", "teacher_template": "{}"}, "positional"),
                     ({"model_t": "t", "alpha_min": 0.8, "alpha_max": 0.2}, "exceeds")):
        with pytest.raises(ValueError, match=msg):
            QStarRolloutSettings.from_config({"qstar": bad})
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]
    out = teacher_messages("{prompt}\nReference: {reward_model[ground_truth]}", msgs,
                           {"reward_model": {"ground_truth": "4"}})
    assert out == [msgs[0], {"role": "user", "content": "2+2?\nReference: 4"}] and msgs[1]["content"] == "2+2?"
    assert teacher_messages(None, msgs, {}) is msgs
    with pytest.raises(ValueError, match="no field 'extra_info'"):
        teacher_messages("{extra_info[x]}", msgs, {})
