"""Any transformers causal LM, one row at a time on its own DynamicCache.

The slower path for architectures SlotModel does not cover (sliding windows, other
attention variants): correct for every HF causal LM, with the same interface as SlotModel, but
each decode step runs one forward per row. Not for: llama-family models (slot_model.py).
"""
from __future__ import annotations

import copy

import torch


class RowModel:
    capturable = False  # one forward per row, driven from Python

    def __init__(self, model, n_slots: int, max_len: int):
        self.model = model
        self.max_len = max_len
        self.caches: list = [None] * (n_slots + 1)  # + the scratch slot, as SlotModel
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def prefill(self, slots: list[int], ids: list[list[int]]) -> torch.Tensor:  # (B, W)
        outs = []
        for slot, x in zip(slots, ids):
            out = self.model(input_ids=torch.tensor([x], device=self.device), use_cache=True)
            self.caches[slot] = out.past_key_values
            outs.append(out.logits[0, -1])
        return torch.stack(outs)

    @torch.inference_mode()
    def decode(self, rows: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor,
               span: int | None = None, first: int | None = None) -> torch.Tensor:  # (B, W)
        outs = []
        for r, t, p in zip(rows.tolist(), tokens.tolist(), positions.tolist()):
            out = self.model(input_ids=torch.tensor([[t]], device=self.device),
                             position_ids=torch.tensor([[p]], device=self.device),
                             past_key_values=self.caches[r], use_cache=True)
            self.caches[r] = out.past_key_values
            outs.append(out.logits[0, -1])
        return torch.stack(outs)

    def save_prefix(self, slot: int, length: int):
        return copy.deepcopy(self.caches[slot])

    def load_prefix(self, slot: int, prefix) -> None:
        self.caches[slot] = copy.deepcopy(prefix)
