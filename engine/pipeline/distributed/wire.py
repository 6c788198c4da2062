"""SampleOutputs packed as a few numpy arrays for the trip from a replica to the driver.

The engine's per-token values are float32 (Step fields cast with .float()), so float32 arrays
carry them exactly, in 4 bytes instead of a pickled Python float each, and the driver unpacks a
whole chunk with one tolist() per array: its CPU time per record stays small (no serialising on
the driver). Outputs the engine left out (a stop before they started) travel as None.
Not for: what a record holds (records.py).
"""
from __future__ import annotations

from itertools import chain

import numpy as np

from ...outputs import RECORD_FIELDS, SampleOutput

SCALARS = ("prompt_index", "sample_index", "key", "text", "finish_reason", "error",
           "num_prompt_tokens_theta", "num_prompt_tokens_t", "draft_accept_rate", "carry_direct",
           "noncanonical")


def pack(outputs: list[SampleOutput | None]) -> dict:
    real = [o for o in outputs if o is not None]
    lengths = np.array([len(o.token_ids) for o in real], dtype=np.int64)
    total = int(lengths.sum())
    tokens = np.fromiter(chain.from_iterable(o.token_ids for o in real), dtype=np.int64, count=total)
    values = np.empty((len(RECORD_FIELDS), total), dtype=np.float32)  # (fields, tokens of all outputs)
    for k, f in enumerate(RECORD_FIELDS):  # a backend without `drafted` (vllm) sends zeros
        cols = (getattr(o, f) or [0.0] * len(o.token_ids) for o in real)
        values[k] = np.fromiter(chain.from_iterable(cols), dtype=np.float32, count=total)
    return dict(present=[o is not None for o in outputs], scalars=[[getattr(o, s) for s in SCALARS] for o in real],
                lengths=lengths, tokens=tokens, values=values)


def unpack(packed: dict) -> list[SampleOutput | None]:
    ends = np.cumsum(packed["lengths"]).tolist()
    tokens, values = packed["tokens"].tolist(), packed["values"].tolist()
    real, start = [], 0
    for scalars, end in zip(packed["scalars"], ends):
        o = SampleOutput(**dict(zip(SCALARS, scalars)), token_ids=tokens[start:end])
        for f, col in zip(RECORD_FIELDS, values):
            setattr(o, f, col[start:end])
        real.append(o)
        start = end
    it = iter(real)
    return [next(it) if present else None for present in packed["present"]]
