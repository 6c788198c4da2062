"""verl's RolloutReplica for `actor_rollout_ref.rollout.name=qstar`: starts one QStarServer Ray
actor per replica and hands verl its handle and a unique address (the load balancer's key).

Placement: standalone (verl's default without a hybrid worker group) asks Ray for CPUs only, plus
the replica's GPUs when engine_kwargs.qstar.device is cuda (verl's own init_standalone hard-codes
GPU bundles, so it is replaced); hybrid / colocated put the server on the node of the replica's
first worker, with that worker's GPU visible. Not for: sampling (server.py) or trainer-side weight
sync (adapter.py).
"""
from __future__ import annotations

import ray
from verl.workers.rollout.replica import RolloutMode, RolloutReplica

from .server import QStarServer
from .settings import QStarRolloutSettings

SERVER_PREFIX = "qstar_"  # actor names: qstar_server_<replica>_<node>, as the adapter looks them up


def server_name(replica_rank: int, node_rank: int = 0, suffix: str = "") -> str:
    return f"{SERVER_PREFIX}server_{replica_rank}_{node_rank}{suffix}"


@ray.remote
class QStarServerActor(QStarServer):
    """QStarServer as a Ray actor, built from verl's configs inside the actor's process."""

    def __init__(self, config, model_config, replica_rank: int = 0):
        server = QStarServer.from_verl(config, model_config, replica_rank)
        super().__init__(server.sampler, server.limits, replica_rank, server.address)


class QStarReplica(RolloutReplica):
    """One qstar server per replica (qstar runs a whole pair in one process: nnodes must be 1)."""

    def _settings(self) -> QStarRolloutSettings:
        return QStarRolloutSettings.from_config(self.config.engine_kwargs)

    def rollout_worker_use_gpu(self) -> bool:
        return (self._settings().device or "").startswith("cuda")

    async def init_standalone(self):
        """A server of its own, without verl's GPU-only resource pool (CPU runs need none)."""
        self.rollout_mode = RolloutMode.STANDALONE
        self.workers = []
        await self.launch_servers()

    async def launch_servers(self):
        settings = self._settings()  # a bad engine_kwargs.qstar fails here, before any actor starts
        if self.nnodes != 1:
            raise ValueError(f"qstar runs one pair per process: set tensor_model_parallel_size * "
                             f"data_parallel_size * pipeline_model_parallel_size <= n_gpus_per_node "
                             f"(this replica spans {self.nnodes} nodes)")
        options = dict(name=server_name(self.replica_rank, 0, self.name_suffix), max_concurrency=self.max_concurrency)
        if self.workers:  # hybrid / colocated: next to the replica's first trainer worker
            node_id, gpu = await self.workers[0].__ray_call__.remote(
                lambda w: (ray.get_runtime_context().get_node_id(),
                           (ray.get_runtime_context().get_accelerator_ids().get("GPU") or [None])[0]))
            options["scheduling_strategy"] = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
                node_id=node_id, soft=False)
            if gpu is not None:
                options["runtime_env"] = {"env_vars": {"CUDA_VISIBLE_DEVICES": str(gpu),
                                                       "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}}
        elif (settings.device or "").startswith("cuda"):
            options["num_gpus"] = self.gpus_per_replica_node
        server = QStarServerActor.options(**options).remote(self.config, self.model_config, self.replica_rank)
        self.servers = [server]
        self._server_handle = server
        self._server_address = await server.get_server_address.remote()
