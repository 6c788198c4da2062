"""The decode step on per-slot device state: pi_theta forward, pi_t forward, qstar_kernels.step.

Everything a step needs per row lives in (slots + 1,) device tensors indexed by slot — the last
token, each side's next position, the response length (the sampler's Philox position), the RNG
key and the sampling parameters — and the step updates them in place. So `decode_step(rows)`
takes one (B,) tensor of slots and has no host sync and no Python branch on tensor values: on
CUDA it is captured as one graph per batch bucket (graphs.py), on CPU it runs eagerly or under
torch.compile(fullgraph=True). The runners (SlotModel, or RowModel for other architectures) and
their caches are built once and live as long as the engine.
Cross-tokenizer mode (pair.cross set): `sample` first carries the teacher's row onto θ's
vocabulary (qstar_kernels.carry), and `cross_step` replaces decode_step: the teacher side is a
batched variable-length extend of host-computed feeds (rollback + re-tokenized tokens), so that
step runs eagerly, outside CUDA graphs and torch.compile.
Not for: scheduling, stop conditions or outputs (core.py).
"""
from __future__ import annotations

import warnings

import torch

from qstar_kernels import step as mix_step

from .loading import token_table
from .outputs import TOKEN_FIELDS

SPAN_ROUND = 64  # CPU attention gathers a multiple of this many positions (fewer recompiles)


def make_runner(model, n_slots: int, max_len: int, force_row_model: bool, packed: bool):
    from .hf_fallback import RowModel
    from .slot_model import SlotModel, unsupported_reason

    if force_row_model or unsupported_reason(model, max_len) is not None:
        return RowModel(model, n_slots, max_len)
    return SlotModel(model, n_slots, max_len, packed_linears=packed)


class Stepper:
    """Both runners, the per-slot state and the step; slots 0..n_slots-1 are rows, n_slots the
    scratch slot padded rows point at."""

    def __init__(self, pair, cfg, mixture, n_slots: int, len_theta: int, len_t: int):
        self.pair, self.cfg, self.mixture = pair, cfg, mixture
        dev = self.device = torch.device(cfg.device)
        self.n_slots, self.scratch = n_slots, n_slots
        packed = not cfg.compile  # eager CPU: oneDNN-packed linears (cpu_linear.py); inductor packs its own
        self.runners = (make_runner(pair.model_theta, n_slots, len_theta, cfg.force_row_model, packed),
                        make_runner(pair.model_t, n_slots, len_t, cfg.force_row_model, packed))
        self.max_len = (len_theta, len_t)
        S = n_slots + 1

        def zeros(dtype=torch.int64):
            return torch.zeros(S, dtype=dtype, device=dev)

        self.last_tok, self.n, self.keys, self.seed, self.top_k = (zeros() for _ in range(5))
        self.pos = torch.zeros(2, S, dtype=torch.int64, device=dev)  # next position, per side
        self.temperature, self.top_p, self.min_p = (zeros(torch.float32) for _ in range(3))
        self.alpha = torch.full((S,), mixture.alpha, dtype=torch.float32, device=dev)
        W = pair.vocab.logits_width
        self.force_tokens = token_table(pair.vocab.special_ids, W, dev) if mixture.force_special else None
        self.capturable = all(r.capturable for r in self.runners)
        self.carry_index = self.t_logits = None
        if pair.cross is not None:
            self._cross_init(pair.cross, S)
        self.backend = self._backend()
        self.graphs = None
        self._decode = self.decode_step
        if pair.cross is not None:
            pass  # cross_step runs eagerly: the teacher's feeds come from the host every step
        elif dev.type == "cuda" and cfg.cuda_graphs and self.capturable:
            from .graphs import GraphedStep

            self.graphs = GraphedStep(self, n_slots, strict=cfg.cuda_graphs == "strict")
        elif dev.type == "cpu" and cfg.compile:
            self._decode = self._compiled()

    def _cross_init(self, cross, S: int) -> None:
        from .slot_model import SlotModel

        if not isinstance(self.runners[1], SlotModel):
            raise ValueError(f"cross-tokenizer mode needs a teacher the slot engine runs (llama, qwen2, qwen3, "
                             f"mistral; rollback uses SlotModel.extend): {self.pair.name_t} runs on the per-row "
                             "fallback" + (" because force_row_model=True" if self.cfg.force_row_model else ""))
        from qstar_kernels.carry import carry_table

        self.carry_index, self.carry_targets = carry_table(torch.tensor(cross.index, dtype=torch.int64,
                                                                        device=self.device))
        width_t = self.pair.model_t.get_output_embeddings().weight.shape[0]
        self.t_logits = torch.zeros(S, width_t, dtype=torch.float32, device=self.device)  # last teacher row per slot

    def _compiled(self):
        why = ("the RowModel path runs one forward per row from Python" if not self.capturable else
               "the support control takes host-side candidate sets on CPU"
               if self.mixture.support_top_k or self.mixture.support_top_p < 1 else None)
        if why:
            warnings.warn(f"compile=True ignored: {why}; the decode step runs eagerly")
            return self.decode_step
        return torch.compile(self.decode_step, fullgraph=True)

    @property
    def cuda_graphs(self) -> str:
        """'on (N graphs)' or 'off (<reason>)', for run summaries."""
        if self.graphs is not None:
            return self.graphs.status()
        if self.device.type != "cuda":
            return "off (cpu)"
        if not self.cfg.cuda_graphs:
            return "off (disabled: cuda_graphs=False)"
        if self.pair.cross is not None:
            return "off (cross-tokenizer mode: the teacher is re-tokenized on the host every step)"
        return "off (a model runs on the per-row RowModel path)"

    # ---- per call and per request -------------------------------------------------------
    def set_params(self, params) -> None:
        """The sampling parameters of one generate call (every row alike)."""
        for name in ("temperature", "top_k", "top_p", "min_p", "seed"):
            getattr(self, name).fill_(getattr(params, name))

    def start(self, rows: torch.Tensor, keys: list[int], pos_theta: list[int], pos_t: list[int]) -> None:
        """New requests in slots `rows`: their keys and positions (prompt lengths); response length 0."""
        t = lambda x: torch.tensor(x, dtype=torch.int64, device=self.device)  # noqa: E731
        self.keys[rows] = t(keys)
        self.pos[0, rows] = t(pos_theta)
        self.pos[1, rows] = t(pos_t)
        self.n[rows] = 0

    # ---- the step -----------------------------------------------------------------------
    def sample(self, rows: torch.Tensor, logits_theta: torch.Tensor, logits_t: torch.Tensor):
        """Draw each row's next token from the mixture of the two logit rows (B, >= W); update
        the row state. Returns tokens (B,) and the recorded values (B, len(TOKEN_FIELDS)) fp32."""
        m, W = self.mixture, self.pair.vocab.logits_width
        n = self.n[rows]
        if self.carry_index is not None:  # the teacher's row, carried onto θ's vocabulary
            from qstar_kernels.carry import carry

            self.t_logits[rows] = logits_t.float()
            logits_t = carry(logits_t, self.carry_index, W, self.pair.cross.n_real_t, self.carry_targets)  # fp32
            logits_theta = logits_theta.float()  # one dtype for the step (bf16 / fp16 models)
        st = mix_step(logits_theta[:, :W], logits_t[:, :W], m.alpha_method, alpha=self.alpha[rows],
                      alpha_min=m.alpha_min, alpha_max=m.alpha_max, vocab_size=self.pair.vocab.vocab_size,
                      temperature=self.temperature[rows], top_k=self.top_k[rows], top_p=self.top_p[rows],
                      min_p=self.min_p[rows], seed=self.seed[rows], keys=self.keys[rows], positions=n,
                      support_top_k=m.support_top_k, support_top_p=m.support_top_p,
                      force=(n == 0) if m.force_first else None, force_tokens=self.force_tokens,
                      backend=self.backend, validate=False)
        self.last_tok[rows] = st.tokens
        self.n[rows] = n + 1
        vals = torch.stack([getattr(st, f).to(torch.float32) for f in TOKEN_FIELDS], 1)
        return st.tokens, vals

    def _backend(self) -> str:
        b = self.cfg.kernels_backend
        if b == "auto" and self.device.type == "cpu":
            from qstar_kernels.cpu_step import available

            return "cpu" if available() else "torch"
        return b

    def decode_step(self, rows: torch.Tensor, span_theta: int | None = None, span_t: int | None = None,
                    first: int | None = None):
        """Both models read each row's last token at its position, then the mixture draws the next
        one. rows (B,) slots; span_*: CPU bounds on positions + 1, first: rows are first, first + 1,
        ... (CPU hints, Python ints; CUDA ignores them)."""
        tok = self.last_tok[rows]
        logits = []
        for side, span in ((0, span_theta), (1, span_t)):
            p = self.pos[side, rows]
            logits.append(self.runners[side].decode(rows, tok, p, span=span, first=first))
            self.pos[side, rows] = p + 1
        out = self.sample(rows, logits[0], logits[1])
        self.pos[:, self.scratch] = 0  # the padded rows of a graph bucket never run off the cache
        self.n[self.scratch] = 0
        return out

    def cross_step(self, rows: torch.Tensor, feeds: list[tuple[int, list[int]]], span_theta: int,
                   first: int | None, timing: dict):
        """The cross-tokenizer decode step (eager): θ reads its last token; the teacher appends each
        row's feed (start, tokens) — its KV rolled back to `start` — in one extend; a row with no
        feed (an incomplete UTF-8 character) reuses its last teacher row. Then `sample`."""
        import time

        tok = self.last_tok[rows]
        p = self.pos[0, rows]
        lg_theta = self.runners[0].decode(rows, tok, p, span=span_theta, first=first)
        self.pos[0, rows] = p + 1
        t0 = time.perf_counter()
        live = [i for i, (_, new) in enumerate(feeds) if new]
        every = len(live) == len(feeds)
        lg_t = None if every else self.t_logits[rows]  # (a copy) rows without a feed keep their last row
        if live:
            T = max(len(feeds[i][1]) for i in live)
            dev = self.device
            toks = torch.tensor([feeds[i][1] + [0] * (T - len(feeds[i][1])) for i in live], device=dev)
            starts = torch.tensor([feeds[i][0] for i in live], device=dev)
            lens = torch.tensor([len(feeds[i][1]) for i in live], device=dev)
            idx = None if every else torch.tensor(live, device=dev)
            top = max(feeds[i][0] + len(feeds[i][1]) for i in live)
            out = self.runners[1].extend(rows if every else rows[idx], toks, starts, lens, last_only=True,
                                         span=self.span(1, top - 1))
            if every:
                lg_t = out
            else:
                lg_t[idx] = out.float()
        timing["extend"] += time.perf_counter() - t0
        return self.sample(rows, lg_theta, lg_t)

    def step(self, rows: torch.Tensor, spans: tuple[int, int], first: int | None = None):
        """decode_step through the graph for its bucket (CUDA), compiled or eager (CPU)."""
        if self.graphs is not None:
            return self.graphs(rows)
        return self._decode(rows, *spans, first)

    def span(self, side: int, top: int) -> int:
        """CPU attention bound for the largest next position `top` of a side (rounded up)."""
        return min(self.max_len[side], -(-(top + 1) // SPAN_ROUND) * SPAN_ROUND)
