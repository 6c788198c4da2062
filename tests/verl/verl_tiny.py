"""A tiny random pair on disk (verl loads by path), a float64 reference, and a server helper.

Reference teacher-forces a response through both HF models in float64 (each with its own prompt)
and gives the exact log_softmax rows; tests/exact.py (numpy) turns them into behaviour log-probs.
Not for: assertions (the test files).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import exact
import tiny


def save_pair(root: Path) -> tuple[str, str]:
    """llama pi_theta and qwen2 pi_t, each saved with the tiny tokenizer (chat template included)."""
    theta, t = tiny.save(root, {"theta": tiny.model("llama", seed=1), "t": tiny.model("qwen2", seed=2)})
    return theta, t


class Reference(tiny.Float64Pair):
    """float64 log_softmax rows of both models along a response (teacher forcing)."""

    @torch.no_grad()
    def behaviour_logprobs(self, ids, ids_t, tokens, alphas, temperature=1.0, top_k=0, top_p=1.0) -> np.ndarray:
        """log behaviour(token) per position, with the recorded alpha (the weight on pi_theta)."""
        rows = []
        for m, prompt in ((self.theta, ids), (self.t, ids_t)):
            x = torch.tensor([list(prompt) + list(tokens[:-1])])
            rows.append(m(x).logits[0, len(prompt) - 1:].numpy())
        out = []
        for i, tok in enumerate(tokens):
            lq = exact.mixture(exact.norm(rows[0][i]), exact.norm(rows[1][i]), alphas[i])
            out.append(np.log(exact.behaviour(lq, temperature, top_k, top_p)[tok]))
        return np.array(out)


    @torch.no_grad()
    def logp_t(self, ids_t, tokens) -> np.ndarray:
        """pi_t's log-prob of each response token after ids_t (T = 1)."""
        x = torch.tensor([list(ids_t) + list(tokens[:-1])])
        rows = self.t(x).logits[0, len(ids_t) - 1:].numpy()
        return np.array([exact.norm(r)[t] for r, t in zip(rows, tokens)])


def server(sampler, **limits):
    """An in-process QStarServer (no Ray) over `sampler`."""
    from engine.integrations.verl.server import Limits, QStarServer

    return QStarServer(sampler, Limits(**limits))
