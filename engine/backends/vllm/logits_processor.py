"""The qstar step inside vLLM's sampler: a V1 logits processor that mixes, samples and records.

The model (model.py) hands the sampler both models' raw logits side by side, (B, 2W). For every
row this processor runs one `qstar_kernels.step` (solve alpha, mix, temperature -> min-p ->
top-k -> top-p, Philox Gumbel draw at (seed, key, position)) and rewrites the row so that
vLLM's greedy pick is qstar's token and the per-token values come back as processed logprobs
of extra columns (codec.py). Hence the engine must run with logprobs_mode="processed_logprobs"
and every request with temperature=0 in vLLM's own SamplingParams; qstar's sampling settings
travel per request in `extra_args["qstar"]` (REQUEST_KEYS). position = tokens generated so far
(len(output_tok_ids)), so a draw never depends on batch makeup, as in the hf engine.
The mixture controls are the hf engine's too: support_top_k / support_top_p per request,
force_first (force = position == 0) and force_special (force_tokens = the tokenizer's special
ids, which the adapter writes into the model config as qstar_special_ids). Rows are grouped by
everything `step` takes as one python scalar per call (method, clamps, support k / p, force
flags), one `step` per group.
Not for: the math (qstar_kernels), building requests or reading outputs (adapter.py).
"""
from __future__ import annotations

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from qstar_kernels import step as mix_step

from ...loading import token_table
from . import codec

REQUEST_KEYS = ("key", "seed", "temperature", "top_k", "top_p", "min_p", "alpha_method", "alpha",
                "alpha_min", "alpha_max", "support_top_k", "support_top_p", "force_first", "force_special")
FQCN = "engine.backends.vllm.logits_processor:QStarSampler"


def pair_width(hf_config) -> tuple[int, int]:
    """(W, V): per-model logits width and real vocabulary, as the adapter wrote them."""
    W = getattr(hf_config, "qstar_width", None)
    if W is None:
        raise ValueError("this vLLM engine was not started by qstar (no qstar_width in the model "
                         "config): build it with engine.backends.vllm.QStarVLLM")
    return int(W), int(getattr(hf_config, "qstar_vocab_size", W))


class QStarSampler(LogitsProcessor):
    """Per-row qstar.step on the concatenated logits; rows without qstar args are left alone."""

    @classmethod
    def validate_params(cls, params):
        q = (params.extra_args or {}).get("qstar")
        if q is None:
            raise ValueError("a qstar vLLM engine samples only requests that carry "
                             "SamplingParams(extra_args={'qstar': {...}}); use "
                             "engine.backends.vllm.QStarVLLM.generate to build them")
        missing = [k for k in REQUEST_KEYS if k not in q]
        if missing:
            raise ValueError(f"extra_args['qstar'] lacks {missing}")
        k, p = q["support_top_k"], q["support_top_p"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"extra_args['qstar']['support_top_k'] must be an int >= 0, got {k!r}")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p <= 1.0:
            raise ValueError(f"extra_args['qstar']['support_top_p'] must lie in (0, 1], got {p!r}")
        if params.temperature != 0:
            raise ValueError(f"vLLM's temperature must be 0 for qstar requests (qstar draws the token "
                             f"itself; put the real temperature in extra_args['qstar']), got "
                             f"{params.temperature}")

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        mc = vllm_config.model_config
        self.width, self.vocab = pair_width(mc.hf_config)
        if mc.logprobs_mode != "processed_logprobs":
            raise ValueError(f"a qstar vLLM engine needs logprobs_mode='processed_logprobs' (the "
                             f"per-token values travel in them), got {mc.logprobs_mode!r}")
        if 2 * self.width < self.width + codec.NUM_COLUMNS:
            raise ValueError(f"logits width {self.width} is too small to carry {codec.NUM_COLUMNS} "
                             "statistic columns")
        self.device = device
        self.special = token_table(getattr(mc.hf_config, "qstar_special_ids", None) or (), self.width,
                                   device)  # force_tokens
        self.rows: dict[int, tuple[dict, list[int]]] = {}  # batch index -> (qstar args, output ids)

    def is_argmax_invariant(self) -> bool:
        return False  # it decides the argmax

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.rows, batch_update, self._new_row)

    @staticmethod
    def _new_row(params, prompt_ids, output_ids):
        q = (params.extra_args or {}).get("qstar")
        return None if q is None else (q, output_ids)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """logits: (B, 2W) = [logits_theta | logits_t]; returns the rewritten rows (see codec)."""
        idx = sorted(i for i in self.rows if i < logits.shape[0])
        groups: dict[tuple, list[int]] = {}
        for i in idx:
            q = self.rows[i][0]
            groups.setdefault((q["alpha_method"], float(q["alpha_min"]), float(q["alpha_max"]),
                               int(q["support_top_k"]), float(q["support_top_p"]), bool(q["force_first"]),
                               bool(q["force_special"])), []).append(i)
        for key, rows in groups.items():
            self._step_rows(logits, rows, *key)
        return logits

    def _col(self, rows, name, dtype):
        return torch.tensor([self.rows[i][0][name] for i in rows], dtype=dtype, device=self.device)

    def _step_rows(self, logits, rows, method, a_min, a_max, support_k, support_p, force_first,
                   force_special) -> None:
        W = self.width
        r = torch.tensor(rows, device=logits.device)
        f32, i64 = torch.float32, torch.int64
        positions = torch.tensor([len(self.rows[i][1]) for i in rows], dtype=i64, device=self.device)
        st = mix_step(logits[r, :W], logits[r, W:2 * W], method, alpha=self._col(rows, "alpha", f32),
                      alpha_min=a_min, alpha_max=a_max, vocab_size=self.vocab,
                      temperature=self._col(rows, "temperature", f32), top_k=self._col(rows, "top_k", i64),
                      top_p=self._col(rows, "top_p", f32), min_p=self._col(rows, "min_p", f32),
                      seed=self._col(rows, "seed", i64), keys=self._col(rows, "key", i64),
                      positions=positions, support_top_k=support_k, support_top_p=support_p,
                      force=(positions == 0) if force_first else None,
                      force_tokens=self.special if force_special else None, validate=False)
        values = torch.stack([getattr(st, f).to(f32) for f in codec.FIELDS], 1)  # (b, F)
        out = torch.full((len(rows), logits.shape[1]), float("-inf"), dtype=logits.dtype, device=logits.device)
        out[torch.arange(len(rows), device=logits.device), st.tokens] = 0.0
        out[:, W:W + codec.NUM_COLUMNS] = codec.encode(values).to(logits.dtype)
        logits[r] = out
