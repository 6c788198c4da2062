"""One engine replica: a Ray actor holding both models, running chunks of requests.

A replica loads the pair exactly as a one-process run does (pair.load_pair) and runs
Engine.run on each chunk it is sent, one chunk at a time, returning the outputs packed
(wire.py). A request's tokens depend only on (seed, key, position), so which replica runs it
does not matter. stop() (its own thread) makes the running chunk finish its started rows and
the queued chunks return at once: Ctrl-C on the driver.
Not for: choosing replicas, retrying chunks or writing anything (driver.py, run.py).
"""
from __future__ import annotations

import socket

import ray

from ..pair import load_pair
from . import wire
from .fingerprint import first_line, vocab_fingerprint


@ray.remote(concurrency_groups={"control": 1}, max_restarts=0, max_task_retries=0)
class Replica:
    def __init__(self, cfg):
        self.error, self.qm, self.stopped = None, None, False
        try:
            self.qm = load_pair(cfg)
        except Exception as e:  # reported by ready() / run_chunk() as one line, not a dead actor
            self.error = f"replica on {socket.gethostname()} could not load the models: {first_line(e)}"

    def ready(self) -> dict:
        if self.error:
            return dict(error=self.error)
        qm = self.qm
        return dict(error=None, host=socket.gethostname(), device=str(getattr(qm.engine_cfg, "device", "?")),
                    max_pos=(qm.pair.max_pos_theta, qm.pair.max_pos_t), vocab=vocab_fingerprint(qm.tokenizer))

    def run_chunk(self, requests: list, params) -> dict:
        if self.error:
            raise RuntimeError(self.error)
        if self.stopped:
            return wire.pack([None] * len(requests))
        return wire.pack(self.qm.engine.run(requests, params, should_stop=lambda: self.stopped))

    @ray.method(concurrency_group="control")
    def stop(self) -> None:
        self.stopped = True
