"""verl's BaseRollout adapter for qstar: what verl's trainer workers call to sync pi_theta into the
qstar server and to free or restore its memory around a training step.

update_weights consumes verl's generator of (HF name, full tensor) on every rank (FSDP's
`full_tensor()` is a collective: each rank must iterate), and the replica's rank 0 sends the tensors
(on CPU) to its server, which checks every name and shape against pi_theta before copying any
(pi_t is never touched) and tags later samples with `global_steps`. Not for: sampling (server.py).
"""
from __future__ import annotations

import inspect
import os

import torch
from verl.workers.rollout.base import BaseRollout

from ...policy_weights import WeightsError
from .replica import server_name


async def collect(weights) -> list[tuple[str, torch.Tensor]]:
    """(name, CPU tensor) pairs from a sync or async generator (or any iterable) of (name, tensor)."""
    out = []
    if hasattr(weights, "__aiter__"):
        async for name, tensor in weights:
            out.append((name, _cpu(tensor)))
    else:
        for name, tensor in weights:
            out.append((name, _cpu(tensor)))
    return out


def _cpu(tensor):
    full = getattr(tensor, "full_tensor", None)  # DTensor shards -> the whole tensor (a collective)
    tensor = full() if callable(full) else tensor
    return tensor.detach().to("cpu") if isinstance(tensor, torch.Tensor) else tensor


class QStarRolloutAdapter(BaseRollout):
    """Registered as ("qstar", "async") in verl's _ROLLOUT_REGISTRY. `server`: a QStarServer (or
    its actor handle); by default the named actor of this rank's replica, looked up lazily."""

    def __init__(self, config, model_config, device_mesh=None, replica_rank: int = -1, server=None, **kwargs):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        size = (self.config.tensor_model_parallel_size * self.config.data_parallel_size
                * self.config.pipeline_model_parallel_size)
        self.replica_rank = rank // size if replica_rank == -1 else replica_rank
        self.has_server = server is not None or rank % size == 0
        self.server = server
        self.global_steps = None

    async def _call(self, method: str, *args, **kwargs):
        if not self.has_server:
            return None
        if self.server is None:
            import ray

            self.server = ray.get_actor(server_name(self.replica_rank))
        fn = getattr(self.server, method)
        if hasattr(fn, "remote"):
            return await fn.remote(*args, **kwargs)
        out = fn(*args, **kwargs)
        return await out if inspect.isawaitable(out) else out

    async def update_weights(self, weights, wire_format: str = "named_tensors", global_steps=None, **kwargs):
        """Copy the trainer's pi_theta into the server (every rank iterates `weights`). A name or
        shape pi_theta does not have raises WeightsError before anything is copied."""
        if wire_format != "named_tensors":
            raise ValueError(f"qstar's rollout takes wire_format='named_tensors' (full tensors), got {wire_format!r}")
        items = await collect(weights)
        if not self.has_server:
            return None
        out = await self._call("update_weights", items, global_steps)
        if "error" in out:
            raise WeightsError(out["error"])
        self.global_steps = out["global_steps"]
        return out

    async def resume(self, tags: list[str]):
        """Weights are always resident; a released KV cache is rebuilt by the next generate."""
        return await self._call("wake_up", tags=tags)

    async def release(self):
        """Frees the server's KV cache (weights stay: qstar does not offload them)."""
        return await self._call("sleep")
