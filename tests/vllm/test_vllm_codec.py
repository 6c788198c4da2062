"""Per-token values survive the trip through an fp32 logits row and vLLM's log_softmax."""
import math

import torch

from engine.backends.vllm import codec

W = 300


def _row(values, token=7):
    """The row the logits processor writes, as vLLM's sampler then sees it (fp32)."""
    row = torch.full((1, 2 * W), float("-inf"))
    row[0, token] = 0.0
    row[:, W:W + codec.NUM_COLUMNS] = codec.encode(torch.tensor([values], dtype=torch.float32))
    return row


def test_round_trip_within_stated_bound_and_argmax_is_the_token():
    vals = [0.3, -5.25, -20.0, -1e-7, 0.0, 3.7, 150.0, 1e-3, 0.99, 2.0, 11.0, 0.0, -0.693, 7.0, 1e-6, 1.0, 1.0]
    assert len(vals) == len(codec.FIELDS)
    row = _row(vals)
    lp = torch.log_softmax(row, dim=-1)
    assert torch.equal(lp[0, :W], row[0, :W])  # extra columns change nothing: exp() underflows to 0
    assert torch.equal(lp, row)
    assert int(row.argmax()) == 7 and float(torch.softmax(row, -1)[0, W:].sum()) == 0.0
    top = torch.topk(lp[0], codec.NUM_LOGPROBS)
    got = codec.decode(dict(zip(top.indices.tolist(), top.values.tolist())), W)
    for v, g in zip(vals, got):
        bound = 3.9e-6 if abs(v) < 16 else 7.7e-6 if abs(v) < 144 else 1e-7 * (112 + abs(v))
        assert abs(float(torch.tensor(v)) - g) <= bound, (v, g)


def test_infinities_and_missing_columns():
    vals = [math.inf, -math.inf] + [1.0] * (len(codec.FIELDS) - 2)
    row = _row(vals)
    lp = torch.log_softmax(row, dim=-1)[0]
    finite = {i: float(lp[i]) for i in range(2 * W) if math.isfinite(float(lp[i]))}
    got = codec.decode(finite, W)  # the -inf magnitude columns are absent, as top-k may leave them
    assert got[0] == math.inf and got[1] == -math.inf and got[2:] == [1.0] * (len(codec.FIELDS) - 2)
