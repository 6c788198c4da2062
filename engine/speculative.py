"""Speculative mixture sampling: one round per decode step over the Stepper's per-slot state.

Per row and round: the draft model decodes K + 1 tokens (the last emitted token, then its own
draws x_1..x_K from d), the other model appends the same K + 1 tokens in one forward (`extend`),
so both models' logits exist at the K + 1 positions; b is computed there exactly as a plain step
computes it, qstar_kernels.speculative.verify keeps x_1..x_n and draws the corrected / bonus
token, and both sides' positions are set to just after the emitted tokens (rollback: the cache
entries past them are overwritten by the next round). Every row drafts K, whatever the batch,
so a sample is the same alone or in any batch; positions past a row's context or cache are
clamped by `extend` and only ever feed tokens the caller cuts (core.py stops a row token by token).
Runs eagerly (no CUDA graph, no torch.compile); needs both models on the SlotModel path.
Not for: stop conditions or records (core.py), the verification math (qstar_kernels).
"""
from __future__ import annotations

import torch

from qstar_kernels import Sampled, Step
from qstar_kernels.speculative import behaviour_mixture, draft, verify

from .outputs import TOKEN_FIELDS

SIDES = {"theta": 0, "t": 1}


def resolve_draft(pair, draft_side: str) -> str:
    """'theta' | 't': "auto" picks the model with fewer parameters (ties: theta)."""
    if draft_side != "auto":
        return draft_side
    n_theta, n_t = (sum(p.numel() for p in m.parameters()) for m in (pair.model_theta, pair.model_t))
    return "t" if n_t < n_theta else "theta"


class SpeculativeRound:
    """Draft K tokens per row with model `side`, verify under b, emit 1..K+1 tokens per row."""

    def __init__(self, stepper, K: int, draft_side: str):
        self.st, self.K = stepper, K
        self.side = SIDES[draft_side]
        names = (stepper.pair.name_theta, stepper.pair.name_t)
        for runner, name in zip(stepper.runners, names):
            if not hasattr(runner, "extend"):
                raise ValueError(f"speculative decoding needs both models on the SlotModel (llama-family) "
                                 f"path; {name} runs on the per-row fallback (no multi-token extend): "
                                 f"use speculative=0 for this pair")
        verifier = stepper.runners[1 - self.side]
        if hasattr(getattr(verifier, "lin", None), "set_batch_hint"):  # CPU oneDNN packing (cpu_linear.py)
            verifier.lin.set_batch_hint(stepper.n_slots * (K + 1))

    def __call__(self, rows: torch.Tensor, tops: tuple[int, int], first: int | None = None):
        """rows (B,) slots; tops: the largest next position per side (host ints). Returns tokens
        (B, K+1), counts (B,) (tokens emitted per row, 1..K+1) and values (B, K+1, F + 1): the
        TOKEN_FIELDS then `drafted`."""
        st, K, D = self.st, self.K, self.side
        W, B = st.pair.vocab.logits_width, rows.shape[0]
        seeds, keys, n = st.seed[rows], st.keys[rows], st.n[rows]
        spans = [st.span(s, tops[s] + K) for s in (0, 1)]
        lg_d, logd, drafts = self._draft(rows, seeds, keys, n, spans[D], first)
        seq = torch.cat([st.last_tok[rows][:, None], drafts], 1)  # (B, K + 1)
        lg_o = st.runners[1 - D].extend(rows, seq, st.pos[1 - D, rows], span=spans[1 - D])[..., :W]
        theta, t = (lg_d, lg_o) if D == 0 else (lg_o, lg_d)
        m, logb = self._behaviour(theta.reshape(B * (K + 1), W), t.reshape(B * (K + 1), W), rows, n)
        v = verify(logb.view(B, K + 1, W), logd, drafts, seeds, keys, n)
        counts = v.n_accepted + 1
        st.last_tok[rows] = v.tokens.gather(1, v.n_accepted[:, None])[:, 0]
        st.pos[:, rows] += counts[None, :]  # rollback: the next round overwrites past the emitted tokens
        st.n[rows] = n + counts
        return v.tokens, counts, self._values(m, v).view(B, K + 1, -1)

    def _draft(self, rows, seeds, keys, n, span, first):
        """The draft model decodes the last token and its own K draws: logits (B, K+1, W) at the
        round's K + 1 positions, log d (B, K, V) and the drafts (B, K)."""
        st, K, D, W = self.st, self.K, self.side, self.st.pair.vocab.logits_width
        tok, pos = st.last_tok[rows], st.pos[D, rows]
        one = dict(temperature=st.temperature[rows], top_k=st.top_k[rows], top_p=st.top_p[rows],
                   min_p=st.min_p[rows])
        lg, logd, drafts = [], [], []
        for i in range(K + 1):
            lg.append(st.runners[D].decode(rows, tok, pos + i, span=span, first=first)[:, :W])
            if i < K:
                tok, ld = draft(lg[-1], D, vocab_size=st.pair.vocab.vocab_size, seeds=seeds, keys=keys,
                                positions=n + i, **one)
                logd.append(ld)
                drafts.append(tok)
        return torch.stack(lg, 1), torch.stack(logd, 1), torch.stack(drafts, 1)

    def _behaviour(self, theta, t, rows, n):
        """The Mixture and log b at every (row, position) of the round, flattened (B * (K+1), W)."""
        st, mx = self.st, self.st.mixture
        rep = lambda x: x[rows][:, None].expand(-1, self.K + 1).reshape(-1)  # noqa: E731 - (B * (K+1),)
        samp = dict(temperature=rep(st.temperature), top_k=rep(st.top_k), top_p=rep(st.top_p), min_p=rep(st.min_p))
        positions = (n[:, None] + torch.arange(self.K + 1, device=n.device)[None, :]).reshape(-1)
        return behaviour_mixture(theta, t, mx.alpha_method, alpha=rep(st.alpha), alpha_min=mx.alpha_min,
                                 alpha_max=mx.alpha_max, vocab_size=st.pair.vocab.vocab_size,
                                 support_top_k=mx.support_top_k, support_top_p=mx.support_top_p,
                                 force=(positions == 0) if mx.force_first else None,
                                 force_tokens=st.force_tokens, **samp)

    @staticmethod
    def _values(m, v):
        """(B * (K+1), F + 1) recorded values at the round's tokens, from the same b computation."""
        s = Step.from_parts(m, Sampled(v.tokens.reshape(-1), v.logp_behavior.reshape(-1)))
        cols = [getattr(s, f).to(torch.float32) for f in TOKEN_FIELDS]
        return torch.stack(cols + [v.drafted.reshape(-1).to(torch.float32)], 1)
