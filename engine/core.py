"""The two-model decode loop: slots, continuous batching, one qstar_kernels.step per step.

Each request holds its own prompt ids per side; both models prefill their side into the same
slot index, then decode the shared response tokens at their own positions. A finished row's
slot is refilled from the queue before the next step. n samples of one prompt share one
prefill (the prompt's KV is saved once and copied into each sample's slot).
Not for: loading models or rendering prompts (api.py), writing records (the pipeline).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from qstar_kernels import step as mix_step

from .config import EngineConfig, MixtureConfig, SamplingParams
from .loading import Vocab, token_table
from .outputs import TOKEN_FIELDS, SampleOutput


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
    runner_theta: object = None
    runner_t: object = None
    n_slots: int = 0

    def make_runners(self, n_slots: int, len_theta: int, len_t: int) -> None:
        """KV caches for n_slots rows of up to len_* positions (SlotModel when it qualifies)."""
        from .hf_fallback import RowModel
        from .slot_model import SlotModel, unsupported_reason

        def runner(model, max_len):
            if self.force_row_model or unsupported_reason(model, max_len) is not None:
                return RowModel(model, n_slots, max_len)
            if not self.cuda_graphs:
                return SlotModel(model, n_slots, max_len)
            from .graphs import GraphedDecode

            return GraphedDecode(SlotModel(model, n_slots + 1, max_len), n_slots)  # +1: scratch slot

        self.runner_theta = runner(self.model_theta, len_theta)
        self.runner_t = runner(self.model_t, len_t)
        self.n_slots = n_slots


class Engine:
    def __init__(self, pair: Pair, cfg: EngineConfig, mixture: MixtureConfig):
        self.pair, self.cfg, self.mixture = pair, cfg, mixture
        self.device = torch.device(cfg.device)

    # ---- admission -------------------------------------------------------------------
    def _admit_error(self, req: Request, params: SamplingParams) -> str | None:
        if req.error:
            return req.error
        for side, ids, limit, name in (("theta", req.ids_theta, self.pair.max_pos_theta, self.pair.name_theta),
                                       ("t", req.ids_t, self.pair.max_pos_t, self.pair.name_t)):
            if not ids:
                return f"empty prompt for model_{side}"
            if len(ids) >= limit:
                return (f"prompt for model_{side} has {len(ids)} tokens; {name} accepts at most "
                        f"{limit} positions (prompt + response): shorten or skip it")
        return None

    def _start(self, req: Request, slot: int, prefixes: dict, remaining: dict, bufs, need_kv: bool = True) -> Row:
        """Prefill both sides into `slot` (or copy the group's saved prefill; not even that when
        no decode step will follow, need_kv=False: one-token requests)."""
        p = self.pair
        if req.group in prefixes:
            kv_theta, kv_t, lg_theta, lg_t = prefixes[req.group]
            if need_kv:
                p.runner_theta.load_prefix(slot, kv_theta)
                p.runner_t.load_prefix(slot, kv_t)
        else:
            lg_theta = p.runner_theta.prefill(slot, req.ids_theta)
            lg_t = p.runner_t.prefill(slot, req.ids_t)
            if remaining[req.group] > 1:
                prefixes[req.group] = (p.runner_theta.save_prefix(slot, len(req.ids_theta)),
                                       p.runner_t.save_prefix(slot, len(req.ids_t)), lg_theta, lg_t)
        remaining[req.group] -= 1
        if remaining[req.group] == 0:
            prefixes.pop(req.group, None)
        W = p.vocab.logits_width
        bufs[0][slot] = lg_theta[:W]
        bufs[1][slot] = lg_t[:W]
        return Row(req=req, pos_theta=len(req.ids_theta), pos_t=len(req.ids_t))

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
        if row.pos_theta + 1 >= self.pair.max_pos_theta or row.pos_t + 1 >= self.pair.max_pos_t:
            return "length"  # a model's context is full
        return None

    def _output(self, row: Row, reason: str, params: SamplingParams) -> SampleOutput:
        req = row.req
        out = SampleOutput(prompt_index=req.prompt_index, sample_index=req.sample_index, key=req.key,
                           token_ids=list(row.tokens), finish_reason=reason,
                           num_prompt_tokens_theta=len(req.ids_theta), num_prompt_tokens_t=len(req.ids_t))
        cols = list(zip(*row.values)) if row.values else [()] * len(TOKEN_FIELDS)
        for name, col in zip(TOKEN_FIELDS, cols):
            setattr(out, name, list(col))
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
        results: list[SampleOutput | None] = [None] * len(requests)
        queue = deque(requests)
        remaining: dict[int, int] = {}
        for r in requests:
            remaining[r.group] = remaining.get(r.group, 0) + 1
        prefixes: dict = {}
        n_slots = max(1, min(self.cfg.max_batch_size, len(requests)))
        budget = params.max_new_tokens + 1
        self.pair.make_runners(
            n_slots,
            min(self.pair.max_pos_theta, max((len(r.ids_theta) for r in requests), default=1) + budget),
            min(self.pair.max_pos_t, max((len(r.ids_t) for r in requests), default=1) + budget))
        W = self.pair.vocab.logits_width
        dt = torch.float32 if self.device.type == "cpu" else self.cfg.torch_dtype
        bufs = (torch.empty(n_slots, W, dtype=dt, device=self.device),
                torch.empty(n_slots, W, dtype=dt, device=self.device))
        free = list(range(n_slots - 1, -1, -1))  # pop() yields the lowest slot
        active: dict[int, Row] = {}
        stop_window = 2 + max((len(s) for s in params.stop), default=0)
        m = self.mixture
        force_tokens = token_table(self.pair.vocab.special_ids, W, self.device) if m.force_special else None
        while queue or active:
            if should_stop is not None and queue and should_stop():
                queue.clear()  # stop admitting; the running rows finish
            while free and queue:
                req = queue.popleft()
                err = self._admit_error(req, params)
                if err is None:
                    slot = free.pop()
                    try:
                        active[slot] = self._start(req, slot, prefixes, remaining, bufs,
                                                   need_kv=params.max_new_tokens > 1)
                        continue
                    except Exception as e:  # a request's failure never stops the others
                        free.append(slot)
                        err = f"{type(e).__name__}: {e}"
                else:
                    remaining[req.group] -= 1
                results[req.index] = SampleOutput(prompt_index=req.prompt_index, sample_index=req.sample_index,
                                                  key=req.key, finish_reason="error", error=err)
                if progress:
                    progress(results[req.index])
            if not active:
                continue
            slots = sorted(active)
            rows = torch.tensor(slots, device=self.device)
            positions = torch.tensor([len(active[s].tokens) for s in slots], device=self.device)
            st = mix_step(bufs[0][rows], bufs[1][rows], m.alpha_method, alpha=m.alpha, alpha_min=m.alpha_min,
                          alpha_max=m.alpha_max, vocab_size=self.pair.vocab.vocab_size,
                          temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                          min_p=params.min_p, seed=params.seed,
                          keys=torch.tensor([active[s].req.key for s in slots], device=self.device),
                          positions=positions, support_top_k=m.support_top_k, support_top_p=m.support_top_p,
                          force=(positions == 0) if m.force_first else None, force_tokens=force_tokens,
                          backend=self.cfg.kernels_backend, validate=False)
            tokens = st.tokens.tolist()
            values = torch.stack([getattr(st, f).float() for f in TOKEN_FIELDS], 1).tolist()
            going = []
            for s, tok, vals in zip(slots, tokens, values):
                row = active[s]
                row.tokens.append(tok)
                row.values.append(vals)
                reason = self._finish_reason(row, tok, params, stop_window)
                if reason:
                    results[row.req.index] = self._output(row, reason, params)
                    del active[s]
                    free.append(s)
                    if progress:
                        progress(results[row.req.index])
                else:
                    going.append(s)
            if going:
                self._decode(going, active, bufs)
        return results  # type: ignore[return-value]

    def _decode(self, slots: list[int], active: dict[int, Row], bufs) -> None:
        dev = self.device
        rows = torch.tensor(slots, device=dev)
        toks = torch.tensor([active[s].tokens[-1] for s in slots], device=dev)
        W = self.pair.vocab.logits_width
        for side, runner, buf in (("theta", self.pair.runner_theta, bufs[0]), ("t", self.pair.runner_t, bufs[1])):
            pos = torch.tensor([getattr(active[s], f"pos_{side}") for s in slots], device=dev)
            buf[rows] = runner.decode(rows, toks, pos)[:, :W].to(buf.dtype)
        for s in slots:
            active[s].pos_theta += 1
            active[s].pos_t += 1
