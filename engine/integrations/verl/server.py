"""The qstar rollout server verl talks to: one per replica, run as a Ray actor (replica.py), holding
an OptimalSamplingModel. alpha is the weight on pi_theta.

verl's LLMServerClient calls `generate(prompt_ids, sampling_params, request_id, image_data,
video_data, **kw)` and wants a TokenOutput: `log_probs` = `logp_behavior` (what each token was
really drawn from: verl's `rollout_log_probs`), and per token in `extra_fields` `qstar_logp_theta`,
`qstar_logp_t`, `qstar_alpha`, `qstar_forced`, `qstar_clamped`, with `global_steps` (the step of
the weights that drew it). Requests that arrive together are sampled as one batch (same
sampling parameters), in a worker thread, one batch at a time; a weight update waits for it.
Not for: placement (replica.py), the trainer side of weight sync (adapter.py), pi_t's prompt
(agent_loop.py renders it and passes `qstar_prompt_ids_t`).
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from verl.workers.rollout.replica import TokenOutput

from ...config import SamplingParams
from ...policy_weights import WeightsError
from .settings import QStarRolloutSettings, rollout_key, token_budget

logger = logging.getLogger(__name__)
EXTRA_FIELDS = ("logp_theta", "logp_t", "alpha", "forced", "clamped")  # -> qstar_<name>


@dataclass
class Limits:
    """The rollout config's lengths and seed (verl's RolloutConfig fields of the same names)."""

    prompt_length: int = 512
    response_length: int = 512
    max_model_len: int | None = None
    seed: int = 42
    ignore_eos: bool = False


@dataclass
class _Pending:
    params: tuple       # (max_new_tokens, temperature, top_k, top_p): one batch shares them
    ids: list
    ids_t: list
    key: int
    request_id: str
    future: asyncio.Future


def sampling_tuple(sampling_params: dict, budget: int) -> tuple:
    """verl's sampling_params -> (max_new_tokens, temperature, top_k, top_p), checked."""
    rep = float(sampling_params.get("repetition_penalty", 1.0) or 1.0)
    if rep != 1.0:
        raise ValueError(f"qstar samples the exact mixture: repetition_penalty must be 1.0, got {rep} "
                         "(set actor_rollout_ref.rollout.repetition_penalty=1.0)")
    temperature = float(sampling_params.get("temperature", 1.0))
    top_k = int(sampling_params.get("top_k", -1) or -1)
    top_p = float(sampling_params.get("top_p", 1.0))
    p = SamplingParams(max_new_tokens=budget, temperature=temperature, top_k=max(top_k, 0), top_p=top_p)  # checks
    return p.max_new_tokens, p.temperature, p.top_k, p.top_p


class QStarServer:
    """What verl's replica and load balancer hold a handle to (ray.remote(QStarServer))."""

    def __init__(self, sampler, limits: Limits, replica_rank: int = 0, address: str | None = None):
        self.sampler, self.limits, self.replica_rank = sampler, limits, replica_rank
        self.address = address or f"qstar-replica-{replica_rank}"
        self.global_steps = None
        self._queue: list[_Pending] = []
        self._drainer: asyncio.Task | None = None
        self._lock = asyncio.Lock()          # one engine call at a time: sampling or a weight update
        self._paused = False                 # abort_all_requests .. resume_generation
        self._reject = False
        self._resumed = asyncio.Event()
        self._resumed.set()
        self.running: list[_Pending] = []

    @classmethod
    def from_verl(cls, config, model_config, replica_rank: int = 0):
        """Load the pair from verl's rollout config (engine_kwargs.qstar) and model config (pi_theta)."""
        from ...api import create_optimal_sampling_model

        settings = QStarRolloutSettings.from_config(config.engine_kwargs)
        path = getattr(model_config, "local_path", None) or model_config["path"]
        sampler = create_optimal_sampling_model(model_theta=path, model_t=settings.model_t,
                                                **settings.sampler_kwargs())
        limits = Limits(prompt_length=config.prompt_length, response_length=config.response_length,
                        max_model_len=config.max_model_len, seed=config.seed, ignore_eos=config.ignore_eos)
        import ray

        address = f"qstar-{replica_rank}-{ray.get_runtime_context().get_actor_id()}"
        return cls(sampler, limits, replica_rank, address)

    def get_server_address(self) -> str:
        """The load balancer's key for this server (unique per actor; there is no HTTP endpoint)."""
        return self.address

    # ---- generation -------------------------------------------------------------------
    async def generate(self, prompt_ids, sampling_params: dict, request_id: str, image_data=None,
                       video_data=None, **kwargs) -> TokenOutput:
        """One response for prompt_ids; kwargs verl adds (priority, audio_data, ...) are accepted and
        ignored, except `qstar_prompt_ids_t`: pi_t's prompt ids (default: prompt_ids)."""
        if image_data is not None or video_data is not None or kwargs.get("audio_data") is not None:
            raise ValueError("qstar samples text only: this request carries image/video/audio data")
        ids = [int(i) for i in prompt_ids]
        ids_t = [int(i) for i in (kwargs.get("qstar_prompt_ids_t") or ids)]
        L = self.limits
        budget = token_budget(sampling_params, len(ids), L.prompt_length, L.response_length, L.max_model_len)
        params = sampling_tuple(sampling_params, budget)
        if self._paused:
            if self._reject:
                return self._aborted()
            await self._resumed.wait()
        fut = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(params, ids, ids_t, rollout_key(L.seed, self.global_steps, request_id),
                                    str(request_id), fut))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        out = await fut
        return out if isinstance(out, TokenOutput) else self._token_output(out, bool(sampling_params.get("logprobs")))

    async def _drain(self) -> None:
        while self._queue and not self._paused:
            await asyncio.sleep(0)  # let requests sent together join this batch
            first = self._queue[0].params
            batch = [p for p in self._queue if p.params == first]
            self._queue = [p for p in self._queue if p.params != first]
            async with self._lock:
                self.running = batch
                try:
                    outs = await asyncio.to_thread(self._sample, batch)
                except Exception as e:  # noqa: BLE001 - every waiting request sees the failure
                    outs = [e] * len(batch)
                finally:
                    self.running = []
            for p, out in zip(batch, outs):
                if p.future.done():
                    continue
                if isinstance(out, Exception):
                    p.future.set_exception(out)
                else:
                    p.future.set_result(out)

    def _sample(self, batch: list[_Pending]) -> list:
        budget, temperature, top_k, top_p = batch[0].params
        outs = self.sampler.generate([p.ids for p in batch], prompts_t=[p.ids_t for p in batch],
                                     keys=[p.key for p in batch], max_new_tokens=budget,
                                     temperature=temperature, top_k=top_k, top_p=top_p, seed=self.limits.seed,
                                     ignore_eos=self.limits.ignore_eos, should_stop=lambda: self._paused)
        by_index = {o.prompt_index: o for o in outs}
        # requests the engine had not started when abort_all_requests came are not returned
        return [by_index.get(i) or self._aborted() for i in range(len(batch))]

    def _token_output(self, out, logprobs: bool) -> TokenOutput:
        if out.finish_reason == "error":
            raise ValueError(f"qstar could not sample this request: {out.error}")
        extra = {"global_steps": self.global_steps}
        extra.update({f"qstar_{name}": list(getattr(out, name)) for name in EXTRA_FIELDS})
        return TokenOutput(token_ids=list(out.token_ids), log_probs=list(out.logp_behavior) if logprobs else None,
                           stop_reason="completed", extra_fields=extra)

    def _aborted(self) -> TokenOutput:
        return TokenOutput(token_ids=[], log_probs=None, stop_reason="aborted",
                           extra_fields={"global_steps": self.global_steps})

    # ---- weights ------------------------------------------------------------------------
    async def set_global_steps(self, global_steps) -> None:
        self.global_steps = global_steps

    async def update_weights(self, weights: list, global_steps=None) -> dict:
        """Copy (HF name, tensor) pairs into pi_theta (never pi_t), after the running batch. A
        name or shape that does not fit comes back as {"error": message}: nothing was copied."""
        async with self._lock:
            try:
                copied = await asyncio.to_thread(self.sampler.update_policy_weights, weights)
            except WeightsError as e:
                return {"error": str(e)}
        if global_steps is not None:
            self.global_steps = global_steps
        return {"copied": copied, "global_steps": self.global_steps}

    # ---- lifecycle (verl's RolloutReplica calls these on every server) ------------------
    async def wake_up(self, tags=None, **kwargs) -> dict:
        """Weights are always resident; the KV cache is (re)built by the next generate."""
        return self._state()

    async def sleep(self, **kwargs) -> dict:
        """Frees the KV cache; the weights stay where they are (qstar does not offload them)."""
        state = await self.release_kv_cache()
        state["weights"] = "kept in memory (qstar does not offload weights)"
        return state

    async def release_kv_cache(self) -> dict:
        """Drops the engine's KV caches (and CUDA graphs) after the running batch; rebuilt on the
        next generate. Says whether there was one to free, and the CUDA bytes freed."""
        import gc

        import torch

        async with self._lock:
            cuda = torch.cuda.is_available()
            before = torch.cuda.memory_allocated() if cuda else None
            held = self.sampler.engine.release()
            if held:
                gc.collect()
                if cuda:
                    torch.cuda.empty_cache()
            freed = before - torch.cuda.memory_allocated() if cuda else None
        return {"kv_cache": "released" if held else "none held", "freed_cuda_bytes": freed}

    async def resume_kv_cache(self) -> dict:
        return self._state()

    async def clear_kv_cache(self) -> dict:
        """qstar keeps no prefix cache between requests: nothing to clear."""
        return {**self._state(), "prefix_cache": "none kept between requests"}

    async def abort_all_requests(self, reject_request: bool = False) -> dict:
        """Stops admitting: queued requests and rows not yet started come back with stop_reason
        "aborted"; rows already decoding finish. New requests wait for resume_generation (or are
        answered "aborted" at once with reject_request=True)."""
        self._paused, self._reject = True, bool(reject_request)
        self._resumed.clear()
        queued, self._queue = self._queue, []
        for p in queued:
            if not p.future.done():
                p.future.set_result(self._aborted())
        ids = [p.request_id for p in queued]
        return {"aborted_count": len(ids), "request_ids": ids, "running": [p.request_id for p in self.running]}

    async def resume_generation(self) -> dict:
        self._paused, self._reject = False, False
        self._resumed.set()
        return self._state()

    async def start_profile(self, **kwargs) -> dict:
        logger.warning("qstar's verl server has no profiler hook: start_profile does nothing")
        return {"profile": "not supported"}

    async def stop_profile(self, **kwargs) -> dict:
        return {"profile": "not supported"}

    def _state(self) -> dict:
        held = self.sampler.engine.stepper is not None
        return {"weights": "resident", "kv_cache": "allocated" if held else "built on the next generate",
                "paused": self._paused, "global_steps": self.global_steps}
