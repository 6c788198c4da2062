"""CUDA graphs of the whole decode step (both forwards + the fused mixture step), one per batch
bucket, captured once per engine and replayed by every generate call (gpt-fast / nano-vllm).

Static shapes: a bucket's rows buffer is padded with the scratch slot (Stepper.scratch), whose
writes land in a slot no request uses; attention reads each row's live KV through the Triton
decode kernel, so one graph serves every length. All buckets share one memory pool (a step's
outputs are consumed before the next replay). A capture failure raises when strict (tests,
bench/gpu_engine.py); otherwise it warns once and every step runs eagerly, and `status()` says
`off (<reason>)` for the run summary.
Not for: CPU (the same Stepper.decode_step runs eagerly or compiled there).
"""
from __future__ import annotations

import warnings

import torch

BUCKETS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256)


class GraphedStep:
    def __init__(self, stepper, n_rows: int, strict: bool = False):
        self.st, self.strict = stepper, strict
        self.buckets = [b for b in BUCKETS if b < n_rows] + [n_rows]
        self.graphs: dict[int, tuple] = {}
        self.pool = None
        self.off: str | None = None
        self.captures = 0  # graphs captured over the engine's life (a test counts them)

    def status(self) -> str:
        return f"off ({self.off})" if self.off else f"on ({len(self.graphs)} graphs)"

    def _capture(self, b: int):
        rows = torch.full((b,), self.st.scratch, dtype=torch.long, device=self.st.device)
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):  # warm-up: Triton JIT and lazy inits happen outside the capture
                self.st.decode_step(rows)
        torch.cuda.current_stream().wait_stream(s)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            tokens, vals = self.st.decode_step(rows)
        self.captures += 1
        return graph, rows, tokens, vals

    def __call__(self, rows: torch.Tensor):
        if self.off:
            return self.st.decode_step(rows)
        B = rows.shape[0]
        b = next(x for x in self.buckets if x >= B)
        if b not in self.graphs:
            try:
                self.graphs[b] = self._capture(b)
            except Exception as e:  # noqa: BLE001 - strict raises; a run warns once and goes eager
                if self.strict:
                    raise
                self.off = f"capture failed for batch {b}: {type(e).__name__}: {e}"[:300]
                warnings.warn(f"CUDA graphs off ({self.off}); decode steps run eagerly")
                return self.st.decode_step(rows)
        graph, g_rows, tokens, vals = self.graphs[b]
        g_rows[:B].copy_(rows)
        g_rows[B:].fill_(self.st.scratch)
        graph.replay()
        return tokens[:B], vals[:B]
