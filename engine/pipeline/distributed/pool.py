"""The replicas of one run: start them, check they see the same models, replace the dead ones.

A slot is one replica position. A fresh replica gets work only once its ready() has come back
(models loaded; the driver's vocabulary and the other replicas' context lengths), so the chunks
of a dead replica go to the live ones while its replacement loads.
Not for: which chunk goes where or what comes back (driver.py).
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, replace

from ..errors import RunError
from .fingerprint import first_line

MAX_DEATHS = 3   # x --num-workers replica deaths in a row (no chunk coming back between them) stop the run


@dataclass
class Slot:
    handle: object
    name: str
    pending: object = None  # its ready() ref until it has answered; None: ready
    load: int = 0           # chunks sent and not yet returned
    dead: bool = False      # replaced: its chunks in flight are sent again


class Pool:
    def __init__(self, cluster, cfg, want: dict, say):
        self.ray, self.cluster, self.cfg, self.want, self.say = cluster.ray, cluster, cfg, want, say
        self.slots: list[Slot] = []
        self.started = self.replaced = self.deaths_in_a_row = 0
        self.run_id = f"{self.ray.get_runtime_context().get_job_id()}-{secrets.token_hex(3)}"  # names unique per run

    def _new(self) -> Slot:
        from .replica import Replica

        c, cfg = self.cluster, self.cfg
        rcfg = replace(cfg, device="cpu") if c.gpus_per_worker == 0 and not cfg.device else cfg
        name = f"qstar-replica-{self.run_id}-{self.started}"
        self.started += 1
        handle = Replica.options(name=name, num_cpus=c.cpus_per_worker, num_gpus=c.gpus_per_worker).remote(rcfg)
        return Slot(handle=handle, name=name, pending=handle.ready.remote())

    def start(self) -> None:
        """All replicas, blocking until each holds the models (like loading them here)."""
        t0 = time.perf_counter()
        self.say(f"starting {self.cfg.num_workers} Ray replicas (each loads both models)")
        self.slots = [self._new() for _ in range(self.cfg.num_workers)]
        refs, waited = [s.pending for s in self.slots], 0
        while len(self.ray.wait(refs, num_returns=len(refs), timeout=30)[0]) < len(refs):
            waited += 30
            self.say(f"still waiting for replicas after {waited} s: is the cluster busy? (`ray status`)")
        infos = [self._check(s) for s in self.slots]
        hosts = sorted({f"{i['host']} ({i['device']})" for i in infos})
        self.say(f"{len(infos)} replicas ready in {time.perf_counter() - t0:.1f} s on {', '.join(hosts)}")

    def _check(self, s: Slot) -> dict:
        try:
            info = self.ray.get(s.pending)
        except self.ray.exceptions.RayActorError as e:
            raise RunError(f"a Ray replica could not start ({first_line(e)}): qstar and its dependencies must be "
                           "importable on every node (install them there, or pass a runtime env)") from None
        return self._verify(s, info)

    def _verify(self, s: Slot, info: dict) -> dict:
        if info["error"]:
            raise RunError(info["error"])
        got = dict(max_pos=tuple(info["max_pos"]), vocab=info["vocab"])
        self.want.setdefault("max_pos", got["max_pos"])  # the first replica's context lengths rule the run
        if got != self.want:
            raise RunError(f"{s.name} on {info['host']} sees other model files than this process ({got} vs "
                           f"{self.want}): every node must see the same --model-theta / --model-t")
        s.pending = None
        return info

    def usable(self) -> list[Slot]:
        """Live replicas that have loaded the models (a replacement joins once its ready() is back)."""
        for s in list(self.slots):
            if s.pending is None or not self.ray.wait([s.pending], timeout=0)[0]:
                continue
            try:
                info = self.ray.get(s.pending)
            except self.ray.exceptions.RayActorError:
                self.lost(s)  # died while loading: start another
                continue
            self._verify(s, info)
        return [s for s in self.slots if s.pending is None]

    def pending(self) -> list:
        return [s.pending for s in self.slots if s.pending is not None]

    def lost(self, dead: Slot) -> None:
        """Replace a replica that died (its in-flight chunks are the caller's to send again)."""
        if dead.dead:
            return  # another of its chunks reported it first
        dead.dead = True
        self.deaths_in_a_row += 1
        if self.deaths_in_a_row > MAX_DEATHS * self.cfg.num_workers:
            raise RunError(f"Ray replicas died {self.deaths_in_a_row} times in a row: see `ray status` and the "
                           "Ray logs (/tmp/ray/session_latest/logs) on the nodes; resume when the cluster is healthy")
        self.kill(dead)
        fresh = self._new()
        self.slots[self.slots.index(dead)] = fresh
        self.replaced += 1
        self.say(f"{dead.name} died; {fresh.name} replaces it; its chunks are sent again")

    def kill(self, s: Slot) -> None:
        try:
            self.ray.kill(s.handle, no_restart=True)
        except Exception:  # already gone
            pass

    def stop_all(self) -> None:
        for s in self.slots:
            s.handle.stop.remote()

    def close(self) -> None:
        for s in self.slots:
            self.kill(s)
        self.slots = []
