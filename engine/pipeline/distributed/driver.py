"""RayEngine: the driver side of `qstar generate --ray` — an Engine.run that fans out to replicas.

The CLI process stays the only writer: it renders prompts with the tokenizer (loaded here from
model_theta's files, no weights; the context lengths come from the replicas), cuts the
requests into chunks (whole rows, so n samples keep sharing a prefill), keeps at most IN_FLIGHT
chunks per replica (back-pressure: the object store holds a few chunks, not the dataset), and
hands each returned output to run.py's `progress` callback, which writes it. A replica that dies
(killed, node lost) is replaced and its unfinished chunks are sent again; the set of keys
already handed over decides, so nothing is written twice.
Not for: records, files or resume (run.py / store.py), or the decode loop (engine.core).
"""
from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import replace

from ..errors import RunError
from . import cluster, wire
from .fingerprint import first_line, vocab_fingerprint
from .pool import Pool

IN_FLIGHT = 2   # chunks per replica: one running, one queued behind it (no idle gap between chunks)
MAX_TRIES = 3   # a chunk whose replica died this many times stops the run (it may be the cause)


def driver_tokenizer(cfg, side: str = "theta"):
    """model_theta's tokenizer (side="t": model_t's, for --cross-tokenizer), as the replicas load it
    (engine.loading), without any weights."""
    from transformers import AutoTokenizer

    from ...loading import resolve

    spec = cfg.model_theta if side == "theta" else cfg.model_t
    try:
        return AutoTokenizer.from_pretrained(resolve(spec))
    except (OSError, ValueError) as e:
        raise OSError(f"could not load model {spec!r}: {first_line(e)}. Give a local HF model dir, a "
                      ".gguf file, or a hub name when the hub is reachable (with --ray: the same path on every "
                      "node)") from None


def chunks(requests: list, size: int) -> list[list]:
    """Consecutive requests, >= size each, never splitting a row; indices renumbered per chunk."""
    out, cur = [], []
    for r in requests:
        if len(cur) >= size and r.group != cur[-1].group:
            out.append(cur)
            cur = []
        cur.append(r)
    if cur:
        out.append(cur)
    return [[replace(r, index=i) for i, r in enumerate(c)] for c in out]


class RayEngine:
    """Connects to Ray and starts the replicas (blocking until they hold the models, like a load);
    run() then behaves like Engine.run: each output goes to `progress` as it comes back."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.cluster = cluster.connect(cfg)
        self.ray = self.cluster.ray
        self.pool = None
        try:
            self.tokenizer = driver_tokenizer(cfg)
            # --cross-tokenizer: pi_t's prompts render with its own tokenizer
            self.tokenizer_t = driver_tokenizer(cfg, "t") if cfg.cross_tokenizer else self.tokenizer
            self.pool = Pool(self.cluster, cfg, dict(vocab=vocab_fingerprint(self.tokenizer)), self._say)
            self.pool.start()
            self.max_pos = self.pool.want["max_pos"]  # what the replicas' engines admit prompts by
        except BaseException:
            self.close()
            raise

    def run(self, requests: list, params, progress=None, should_stop=None) -> None:
        """Every request's output goes to progress() once (after should_stop: the started ones)."""
        cpu0, wall0 = time.process_time(), time.perf_counter()
        todo = deque((c, 0) for c in chunks(requests, self.cfg.chunk_size or 4 * self.cfg.batch_size))
        flight: dict = {}   # ObjectRef -> (chunk, tries so far, slot)
        handed: set = set()  # (prompt_index, sample_index) already given to progress: the dedup
        stopping, quiet_since = False, time.perf_counter()
        try:
            while todo or flight:
                if not stopping and should_stop is not None and should_stop():
                    stopping = True
                    todo.clear()  # unsent chunks are left for the resume
                    self.pool.stop_all()
                self._send(todo, flight, params)
                waitable = list(flight) + self.pool.pending()
                done = self.ray.wait(waitable, num_returns=1, timeout=0.2)[0] if waitable else []
                for ref in done:
                    if ref in flight:
                        self._receive(ref, flight, todo, handed, progress, stopping)
                if flight or not todo:
                    quiet_since = time.perf_counter()
                elif time.perf_counter() - quiet_since > 60:  # every replica lost, none ready yet
                    self._say("no replica ready for 60 s: waiting for replacements (`ray status`)")
                    quiet_since = time.perf_counter()
        finally:
            self.close()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0  # all the driver's threads
        print(f"\n[qstar] ray: {self.pool.started} replicas started ({self.pool.replaced} replaced); driver CPU "
              f"{1e3 * cpu / max(len(handed), 1):.2f} ms per sample, {100 * cpu / max(wall, 1e-9):.1f}% of one core "
              f"({cpu:.1f} s in {wall:.1f} s)", file=sys.stderr, flush=True)  # a summary line: even with --quiet

    def _send(self, todo: deque, flight: dict, params) -> None:
        slots = self.pool.usable() if todo else []
        while todo and slots:
            s = min(slots, key=lambda x: x.load)
            if s.load >= IN_FLIGHT:
                return  # back-pressure: every replica has its chunks
            chunk, tries = todo.popleft()
            flight[s.handle.run_chunk.remote(chunk, params)] = (chunk, tries, s)
            s.load += 1

    def _receive(self, ref, flight: dict, todo: deque, handed: set, progress, stopping: bool) -> None:
        chunk, tries, slot = flight.pop(ref)
        slot.load -= 1
        try:
            outputs = wire.unpack(self.ray.get(ref))
        except self.ray.exceptions.RayActorError:
            self.pool.lost(slot)
            if tries + 1 >= MAX_TRIES:
                rows = sorted({r.prompt_index for r in chunk})
                raise RunError(f"the chunk of rows {rows[0]}..{rows[-1]} lost its replica {MAX_TRIES} times "
                               "(out of memory?): lower --batch-size or --chunk-size, then resume") from None
            if not stopping:
                todo.appendleft((chunk, tries + 1))
            return
        except self.ray.exceptions.RayTaskError as e:
            raise RunError(f"a Ray replica failed: {first_line(getattr(e, 'cause', None) or e)}") from None
        self.pool.deaths_in_a_row = 0
        for o in outputs:
            if o is None or (o.prompt_index, o.sample_index) in handed:
                continue
            handed.add((o.prompt_index, o.sample_index))
            if progress:
                progress(o)

    def _say(self, msg: str) -> None:
        if not self.cfg.quiet:
            print(f"\n[qstar] {msg}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        self.cluster.close()
