"""The two-model decode loop: slots, continuous batching, packed prefill, stop conditions.

Each request holds its own prompt ids per side; both models prefill their side into the same
slot index, then decode the shared response tokens at their own positions. New requests are
prefilled together (one packed forward per side per scheduling step) and a finished row's slot
is refilled from the queue before the next step. n samples of one prompt share one prefill (the
prompt's KV is computed once and copied into each sample's slot). The step itself — both
forwards and the fused mixture step on per-slot device state — is stepper.py's; per step the
loop reads back only the new tokens (for EOS / stop strings), and a row's recorded values once,
when it finishes. Runners, caches and CUDA graphs are built on the first call and reused by
every later one.
Not for: loading models or rendering prompts (api.py), writing records (the pipeline).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from .config import EngineConfig, MixtureConfig, SamplingParams
from .loading import Vocab
from .outputs import RECORD_FIELDS, SampleOutput


@dataclass
class Request:
    index: int                # position in the returned list
    group: int                # requests of one group share a prompt (and a prefill)
    ids_theta: list[int]
    ids_t: list[int]
    key: int                  # RNG key: the draw at position p depends on (seed, key, p)
    prompt_index: int = 0
    sample_index: int = 0
    error: str | None = None  # set when the prompt could not be rendered


@dataclass
class Row:
    req: Request
    pos_theta: int
    pos_t: int
    tokens: list[int] = field(default_factory=list)
    values: list[list[float]] = field(default_factory=list)
    drafts: list[int] = field(default_factory=lambda: [0, 0])  # speculative: [accepted, verified]


@dataclass
class Pair:
    """Both models, the shared tokenizer and what the gate established; runners per run."""

    model_theta: object
    model_t: object
    tokenizer: object
    vocab: Vocab
    max_pos_theta: int
    max_pos_t: int
    name_theta: str = "model_theta"
    name_t: str = "model_t"
    force_row_model: bool = False
    cuda_graphs: bool = False
    runner_theta: object = None  # set when the engine builds its runners (for inspection)
    runner_t: object = None
    tokenizer_t: object = None   # the teacher's own tokenizer (cross-tokenizer mode; else `tokenizer`)
    cross: object = None         # cross_tokenizer.CrossPair: the teacher is carried onto θ's vocabulary


class Engine:
    def __init__(self, pair: Pair, cfg: EngineConfig, mixture: MixtureConfig):
        self.pair, self.cfg, self.mixture = pair, cfg, mixture
        self.device = torch.device(cfg.device)
        self.stepper = None  # built on the first run, kept for the engine's life
        self.limits = None   # (theta, t): positions a slot holds per side

    # ---- runners, once ---------------------------------------------------------------
    def _build(self):
        from .stepper import Stepper

        lens = cache_lengths(self.pair, self.cfg)
        self.stepper = Stepper(self.pair, self.cfg, self.mixture, self.cfg.max_batch_size, *lens)
        self.limits = lens
        self.pair.runner_theta, self.pair.runner_t = self.stepper.runners
        return self.stepper

    def release(self) -> bool:
        """Drop the stepper (runners, KV caches, CUDA graphs); the next run builds them again.
        True when there was one to drop."""
        held = self.stepper is not None
        self.stepper = self.limits = None
        self.pair.runner_theta = self.pair.runner_t = None
        return held

    @property
    def cuda_graphs(self) -> str:
        """'on (N graphs)' or 'off (<reason>)' (run summaries and manifests print it)."""
        if self.stepper is None:
            return "off (no run yet)" if self.device.type == "cuda" else "off (cpu)"
        return self.stepper.cuda_graphs

    # ---- admission -------------------------------------------------------------------
    def _admit_error(self, req: Request) -> str | None:
        if req.error:
            return req.error
        sides = (("theta", req.ids_theta, self.pair.max_pos_theta, self.pair.name_theta, self.limits[0]),
                 ("t", req.ids_t, self.pair.max_pos_t, self.pair.name_t, self.limits[1]))
        for side, ids, limit, name, cache in sides:
            if not ids:
                return f"empty prompt for model_{side}"
            if len(ids) >= limit:
                return (f"prompt for model_{side} has {len(ids)} tokens; {name} accepts at most "
                        f"{limit} positions (prompt + response): shorten or skip it")
            if len(ids) >= cache:
                return (f"prompt for model_{side} has {len(ids)} tokens; the engine's KV cache holds "
                        f"{cache} positions per row (prompt + response): raise max_model_len= (and "
                        f"kv_cache_gib= if needed) or lower max_batch_size=")
        return None

    def _prefill(self, new: list[tuple[int, Request]], prefixes: dict, remaining: dict, need_kv: bool):
        """Prefill the new rows: one packed forward per side over the prompts not yet computed
        (one per group), then the other samples of a group copy its KV. Returns per-row logits
        (theta, t), each (len(new), W), and the errors {slot: message} of rows that failed."""
        p, W = self.pair, self.pair.vocab.logits_width
        first: dict[int, int] = {}  # group -> slot prefilled in this batch
        fresh = []
        for slot, req in new:
            if req.group not in prefixes and req.group not in first:
                first[req.group] = slot
                fresh.append((slot, req))
        logits, errors = self._packed(fresh)
        for (slot, req), lg in zip(fresh, logits):
            if lg is not None and remaining[req.group] > sum(r.group == req.group for _, r in new):
                prefixes[req.group] = (p.runner_theta.save_prefix(slot, len(req.ids_theta)),
                                       p.runner_t.save_prefix(slot, len(req.ids_t)), *lg)
        rows_lg = []
        for slot, req in new:
            src = first.get(req.group)
            if src in errors:
                errors[slot] = errors[src]
            elif src == slot:
                rows_lg.append(logits[[s for s, _ in fresh].index(slot)])
            elif req.group in prefixes:
                kv_theta, kv_t, lg_theta, lg_t = prefixes[req.group]
                if need_kv:
                    p.runner_theta.load_prefix(slot, kv_theta)
                    p.runner_t.load_prefix(slot, kv_t)
                rows_lg.append((lg_theta, lg_t))
            else:  # a sibling prefilled in this same batch
                if need_kv:
                    p.runner_theta.load_prefix(slot, p.runner_theta.save_prefix(src, len(req.ids_theta)))
                    p.runner_t.load_prefix(slot, p.runner_t.save_prefix(src, len(req.ids_t)))
                rows_lg.append(logits[[s for s, _ in fresh].index(src)])
            remaining[req.group] -= 1
            if remaining[req.group] == 0:
                prefixes.pop(req.group, None)
        if not rows_lg:
            return None, None, errors
        # the teacher's row keeps its own width: cross-tokenizer mode carries it onto θ's in the step
        return (torch.stack([a[:W] for a, _ in rows_lg]), torch.stack([b for _, b in rows_lg]), errors)

    def _packed(self, fresh: list[tuple[int, Request]]):
        """[(logits_theta, logits_t) or None per row], {slot: error}. One packed forward per side;
        if it fails, row by row, so one bad request fails alone."""
        if not fresh:
            return [], {}
        p = self.pair
        slots = [s for s, _ in fresh]
        try:
            a = p.runner_theta.prefill(slots, [r.ids_theta for _, r in fresh])
            b = p.runner_t.prefill(slots, [r.ids_t for _, r in fresh])
            return list(zip(a, b)), {}
        except Exception:  # noqa: BLE001 - find the request that fails, the others go on
            if len(fresh) == 1:
                raise
        out, errors = [], {}
        for slot, req in fresh:
            try:
                out.append((p.runner_theta.prefill([slot], [req.ids_theta])[0],
                            p.runner_t.prefill([slot], [req.ids_t])[0]))
            except Exception as e:  # noqa: BLE001 - a request's failure never stops the others
                out.append(None)
                errors[slot] = f"{type(e).__name__}: {e}"
        return out, errors

    # ---- stopping ----------------------------------------------------------------------
    def _finish_reason(self, row: Row, tok: int, params: SamplingParams, stop_window: int) -> str | None:
        if not params.ignore_eos and tok in self.pair.vocab.eos_ids:
            return "stop"
        if params.stop:
            tail = self.pair.tokenizer.decode(row.tokens[-stop_window:], skip_special_tokens=True)
            if any(s in tail for s in params.stop):
                return "stop"
        if len(row.tokens) >= params.max_new_tokens:
            return "length"
        lim_theta = min(self.pair.max_pos_theta, self.limits[0])
        lim_t = min(self.pair.max_pos_t, self.limits[1])
        if row.pos_theta + 1 >= lim_theta or row.pos_t + 1 >= lim_t:
            return "length"  # a model's context (or the cache) is full
        return None

    def _output(self, row: Row, reason: str, params: SamplingParams, values) -> SampleOutput:
        req = row.req
        out = SampleOutput(prompt_index=req.prompt_index, sample_index=req.sample_index, key=req.key,
                           token_ids=list(row.tokens), finish_reason=reason,
                           num_prompt_tokens_theta=len(req.ids_theta), num_prompt_tokens_t=len(req.ids_t))
        cols = values.t().tolist() if len(row.tokens) else [[] for _ in RECORD_FIELDS]  # (F + 1, n)
        for name, col in zip(RECORD_FIELDS, cols):
            setattr(out, name, col)
        if params.speculative:
            out.draft_accept_rate = row.drafts[0] / row.drafts[1] if row.drafts[1] else None
        text = self.pair.tokenizer.decode(row.tokens, skip_special_tokens=True)
        if reason == "stop" and params.stop:
            cut = [text.find(s) for s in params.stop if s in text]
            if cut:
                text = text[:min(cut)]
        out.text = text
        return out

    # ---- the loop ----------------------------------------------------------------------
    def run(self, requests: list[Request], params: SamplingParams, progress=None,
            should_stop=None) -> list[SampleOutput]:
        """Outputs in request order; with should_stop, unstarted requests are left out (None)."""
        with torch.inference_mode():
            return _Run(self, requests, params, progress, should_stop).loop()


def cache_lengths(pair: Pair, cfg: EngineConfig) -> tuple[int, int]:
    """Positions per slot of each side's KV cache: the model's context, capped by max_model_len,
    or else by what kv_cache_gib holds for max_batch_size rows (+ the scratch slot) of both."""
    from .slot_model import kv_bytes_per_position, unsupported_reason

    lens = [pair.max_pos_theta, pair.max_pos_t]
    if cfg.max_model_len is not None:
        return min(lens[0], cfg.max_model_len), min(lens[1], cfg.max_model_len)
    static = [m for m, n in zip((pair.model_theta, pair.model_t), lens)
              if not cfg.force_row_model and unsupported_reason(m, n) is None]  # RowModel caches grow
    if not static:
        return lens[0], lens[1]
    if cfg.kv_cache_gib is not None:
        budget = cfg.kv_cache_gib * 2**30
    elif cfg.device.startswith("cuda"):
        budget = torch.cuda.mem_get_info(torch.device(cfg.device))[0] / 2
    else:
        budget = 2 * 2**30
    per_pos = sum(kv_bytes_per_position(m, cfg.torch_dtype) for m in static)
    cap = int(budget // (per_pos * (cfg.max_batch_size + 1)))
    if cap < 2:
        raise ValueError(f"kv_cache_gib={budget / 2**30:.3g} holds {cap} positions per row at "
                         f"max_batch_size={cfg.max_batch_size}: raise kv_cache_gib= or lower max_batch_size=")
    return min(lens[0], cap), min(lens[1], cap)


class _Run:
    """One generate call's scheduling state over the engine's stepper."""

    def __init__(self, engine: Engine, requests, params, progress, should_stop):
        self.e, self.params, self.progress, self.should_stop = engine, params, progress, should_stop
        # the stepper (and its graphs) bake in the mixture: a mixture set on the engine since the
        # last run gets a stepper of its own, built once like the first
        stale = engine.stepper is not None and engine.stepper.mixture != engine.mixture
        self.st = engine._build() if engine.stepper is None or stale else engine.stepper
        self.st.set_params(params)
        self.requests = requests
        self.results: list[SampleOutput | None] = [None] * len(requests)
        self.queue = deque(requests)
        self.remaining: dict[int, int] = {}
        for r in requests:
            self.remaining[r.group] = self.remaining.get(r.group, 0) + 1
        self.prefixes: dict = {}
        self.free = list(range(self.st.n_slots - 1, -1, -1))  # pop() yields the lowest slot
        self.active: dict[int, Row] = {}
        self.stop_window = 2 + max((len(s) for s in params.stop), default=0)
        F = len(RECORD_FIELDS)
        self.record = torch.zeros(self.st.n_slots + 1, params.max_new_tokens, F, device=engine.device)
        self._rows_key, self._rows = None, None
        self.cross = None  # cross-tokenizer mode: each row's teacher view (cross_tokenizer.CrossRows)
        if engine.pair.cross is not None:
            from .cross_tokenizer import CrossRows

            self.cross = CrossRows(engine.pair.cross)
        self.spec = None
        if params.speculative and self.cross:
            raise ValueError(f"speculative={params.speculative} with cross_tokenizer=True: speculative rounds need "
                             "both models on one tokenizer; drop one of the two")
        if params.speculative:
            from .speculative import SpeculativeRound, resolve_draft

            self.spec = SpeculativeRound(self.st, params.speculative, resolve_draft(engine.pair, params.draft))

    def _error(self, req: Request, err: str) -> None:
        self.results[req.index] = SampleOutput(prompt_index=req.prompt_index, sample_index=req.sample_index,
                                               key=req.key, finish_reason="error", error=err)
        if self.progress:
            self.progress(self.results[req.index])

    def _admit(self) -> None:
        new = []
        while self.free and self.queue:
            req = self.queue.popleft()
            err = self.e._admit_error(req)
            if err is None:
                new.append((self.free.pop(), req))
            else:
                self.remaining[req.group] -= 1
                self._error(req, err)
        if not new:
            return
        lg_theta, lg_t, errors = self.e._prefill(new, self.prefixes, self.remaining,
                                                 need_kv=self.params.max_new_tokens > 1)
        for slot, req in new:
            if slot in errors:
                self.free.append(slot)
                self._error(req, errors[slot])
        ok = [(slot, req) for slot, req in new if slot not in errors]
        if not ok:
            return
        dev = self.e.device
        rows = torch.tensor([s for s, _ in ok], device=dev)
        self.st.start(rows, [r.key for _, r in ok], [len(r.ids_theta) for _, r in ok],
                      [len(r.ids_t) for _, r in ok])
        for slot, req in ok:
            self.active[slot] = Row(req=req, pos_theta=len(req.ids_theta), pos_t=len(req.ids_t))
            if self.cross:
                self.cross.start(slot, len(req.ids_t))
        tokens, vals = self.st.sample(rows, lg_theta, lg_t)
        self._collect([s for s, _ in ok], rows, tokens, vals, decoded=False)

    def _collect(self, slots: list[int], rows, tokens, vals, decoded: bool, counts=None) -> None:
        """Record a step's values on the device, read back its tokens, finish rows that stop.
        One token per row (tokens (B,), vals (B, F)), or with counts (B,) the first counts[b] of
        tokens (B, C) with vals (B, C, F + 1) (a speculative round; stops are checked token by
        token and cut the round)."""
        if counts is None:
            self.record.index_put_((rows, self.st.n[rows] - 1), torch.nn.functional.pad(vals, (0, 1)))
            per_row = [[t] for t in tokens.tolist()]
        else:
            per_row = self._record_round(rows, tokens, vals, counts, slots)
        for slot, toks in zip(slots, per_row):
            row = self.active[slot]
            for tok in toks:
                if decoded:
                    row.pos_theta += 1
                    row.pos_t += 1
                row.tokens.append(tok)
                if self.cross:  # the teacher re-tokenizes; its position is what its KV will hold
                    row.pos_t = self.cross.append(slot, tok)
                reason = self.e._finish_reason(row, tok, self.params, self.stop_window)
                if reason:
                    self._finish(slot, row, reason)
                    break

    def _record_round(self, rows, tokens, vals, counts, slots) -> list[list[int]]:
        C = tokens.shape[1]
        col = torch.arange(C, device=rows.device)[None, :]
        idx = (self.st.n[rows] - counts)[:, None] + col  # response index of each token
        ok = (col < counts[:, None]) & (idx < self.params.max_new_tokens)
        self.record.index_put_((rows[:, None].expand(-1, C)[ok], idx[ok]), vals[ok])
        out = []
        for slot, toks, c in zip(slots, tokens.tolist(), counts.tolist()):
            d = self.active[slot].drafts  # descriptive: drafts accepted / drafts verified
            d[0] += c - 1
            d[1] += min(c, self.spec.K)
            out.append(toks[:c])
        return out

    def _finish(self, slot: int, row: Row, reason: str) -> None:
        out = self.e._output(row, reason, self.params, self.record[slot, :len(row.tokens)])
        if self.cross:
            self.cross.finish(slot, out)
        self.results[row.req.index] = out
        del self.active[slot]
        self.free.append(slot)
        if self.progress:
            self.progress(out)

    def _decode(self) -> None:
        slots = sorted(self.active)
        key = tuple(slots)
        if key != self._rows_key:  # the rows tensor changes only when the active set does
            self._rows_key, self._rows = key, torch.tensor(slots, device=self.e.device)
        tops = (max(self.active[s].pos_theta for s in slots), max(self.active[s].pos_t for s in slots))
        first = slots[0] if slots[-1] - slots[0] == len(slots) - 1 else None  # sorted, distinct
        if self.spec is not None:
            tokens, counts, vals = self.spec(self._rows, tops, first)
            return self._collect(slots, self._rows, tokens, vals, decoded=True, counts=counts)
        if self.cross:
            tokens, vals = self.cross.step(self.st, self._rows, slots, self.st.span(0, tops[0]), first)
        else:
            tokens, vals = self.st.step(self._rows, (self.st.span(0, tops[0]), self.st.span(1, tops[1])), first)
        self._collect(slots, self._rows, tokens, vals, decoded=True)

    def loop(self) -> list[SampleOutput]:
        while self.queue or self.active:
            if self.should_stop is not None and self.queue and self.should_stop():
                self.queue.clear()  # stop admitting; the running rows finish
            if self.free and self.queue:
                self._admit()
                continue  # rows that finished on their first token free slots for the queue
            if self.active:
                self._decode()
        return self.results  # type: ignore[return-value]
