"""CUDA-graph capture of SlotModel.decode, one graph per batch bucket (gpt-fast / nano-vllm).

Static shapes: rows are padded up to the bucket with a scratch slot (the cache's last one),
and attention reads the whole cache length under a mask, so one captured graph serves every
step of that bucket. Capture failure is never fatal: that bucket runs eagerly.
Not for: CPU (the same SlotModel code runs eagerly there).
"""
from __future__ import annotations

import warnings

import torch

BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256)


class GraphedDecode:
    def __init__(self, slot_model, n_rows: int):
        self.sm = slot_model
        self.scratch = slot_model.k.shape[1] - 1  # allocated one past the rows the engine uses
        self.buckets = [b for b in BUCKETS if b < n_rows] + [n_rows]
        self.graphs: dict[int, tuple] = {}
        self.failed: set[int] = set()

    def __getattr__(self, name):  # prefill, save_prefix, load_prefix, max_len ...
        return getattr(self.sm, name)

    def _capture(self, b: int):
        dev = self.sm.k.device
        rows = torch.full((b,), self.scratch, dtype=torch.long, device=dev)
        toks = torch.zeros(b, dtype=torch.long, device=dev)
        pos = torch.zeros(b, dtype=torch.long, device=dev)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):  # warm-up: lazy inits and autotuning happen outside the capture
                self.sm.decode(rows, toks, pos, span=self.sm.max_len)
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.sm.decode(rows, toks, pos, span=self.sm.max_len)
        return graph, rows, toks, pos, out

    def decode(self, rows, tokens, positions, span=None):
        B = rows.shape[0]
        b = next(x for x in self.buckets if x >= B)
        if b not in self.graphs and b not in self.failed:
            try:
                self.graphs[b] = self._capture(b)
            except Exception as e:  # noqa: BLE001 - fall back to eager, say so once
                self.failed.add(b)
                warnings.warn(f"CUDA graph capture failed for batch {b} ({e}); running it eagerly")
        if b in self.failed:
            return self.sm.decode(rows, tokens, positions)
        graph, g_rows, g_toks, g_pos, out = self.graphs[b]
        g_rows.fill_(self.scratch)
        g_toks.zero_()
        g_pos.zero_()
        g_rows[:B].copy_(rows)
        g_toks[:B].copy_(tokens)
        g_pos[:B].copy_(positions)
        graph.replay()
        return out[:B]
