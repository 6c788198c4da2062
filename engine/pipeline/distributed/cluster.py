"""Reaching Ray for `qstar generate --ray`: import it, connect or start it, check its resources.

Each mistake a user can make here (Ray not installed, an address nothing answers on, fewer GPUs
or CPUs than the replicas ask for) becomes one RunError line that names the value and the fix,
before any model is loaded.
Not for: the replicas (replica.py) or sending them work (driver.py).
"""
from __future__ import annotations

import logging
import socket
import warnings
from dataclasses import dataclass

from ..errors import RunError

INSTALL = "pip install 'qstar[ray]'"


@dataclass
class Cluster:
    ray: object              # the ray module
    owned: bool              # this process opened the connection (or started Ray) and closes it
    where: str               # the --ray value, for messages
    gpus_per_worker: float   # resolved from --gpus-per-worker / --device / the cluster
    cpus_per_worker: float   # what one replica reserves (= torch threads)

    def close(self) -> None:
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()
        self.owned = False


def import_ray():
    try:
        import ray
    except ImportError:
        raise RunError(f"--ray needs Ray, which is not installed here: {INSTALL}") from None
    return ray


def _check_reachable(address: str) -> None:
    """A TCP probe: a dead address fails in seconds instead of after Ray's 30 s of retries."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise RunError(f"--ray {address!r} is not a cluster address: give host:port (the head node's GCS, "
                       "e.g. 10.0.0.5:6379), ray://host:10001, auto or local")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise RunError(f"Ray cluster at {address} is unreachable ({e.strerror or e}): check the address "
                       "(`ray status` on the head node), the network/firewall, or use --ray local to start "
                       "Ray on this machine") from None


def _init(ray, where: str) -> None:
    kw = dict(log_to_driver=False, logging_level=logging.WARNING)
    if where == "local":
        kw["include_dashboard"] = False
    try:
        with warnings.catch_warnings():  # Ray's FutureWarning about GPU env vars is not the user's business
            warnings.simplefilter("ignore", FutureWarning)
            ray.init(address=where, **kw)
    except ConnectionError as e:
        hint = ("start one with `ray start --head`, give its address, or use --ray local" if where == "auto"
                else "check that the address is the head node's (`ray status` there) and the versions match")
        raise RunError(f"--ray {where}: could not connect to a Ray cluster ({str(e).splitlines()[0]}): "
                       f"{hint}") from None


def _resources(ray, cfg, where: str) -> tuple[float, float]:
    """(GPUs, CPUs) per replica, after checking the cluster has them for --num-workers replicas."""
    have = ray.cluster_resources()
    gpus, cpus = float(have.get("GPU", 0)), float(have.get("CPU", 0))
    g = cfg.gpus_per_worker
    if g is None:
        wants_gpu = (cfg.device or "").startswith("cuda") or (cfg.device is None and gpus > 0)
        g = 1.0 if wants_gpu else 0.0
    c = float(cfg.threads or 1)
    n = cfg.num_workers
    if n * g > gpus + 1e-9:
        raise RunError(f"--num-workers {n} x --gpus-per-worker {g:g} needs {n * g:g} GPUs but the Ray cluster "
                       f"({where}) has {gpus:g}: lower --num-workers or --gpus-per-worker (0 runs on CPU), "
                       "or add GPU nodes")
    if n * c > cpus + 1e-9:
        raise RunError(f"--num-workers {n} replicas x {c:g} CPU (--threads) need {n * c:g} CPUs but the Ray "
                       f"cluster ({where}) has {cpus:g}: lower --num-workers or --threads")
    return g, c


def connect(cfg) -> Cluster:
    """Connect as --ray says (a Ray connection already open in this process is reused)."""
    ray = import_ray()
    where = str(cfg.ray).strip()
    if where not in ("auto", "local"):
        _check_reachable(where)
    owned = not ray.is_initialized()
    if owned:
        _init(ray, where)
    try:
        g, c = _resources(ray, cfg, where)
    except RunError:
        if owned:
            ray.shutdown()
        raise
    return Cluster(ray=ray, owned=owned, where=where, gpus_per_worker=g, cpus_per_worker=c)
