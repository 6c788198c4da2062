"""QStarPairForCausalLM: both models of the pair as one vLLM architecture.

The engine is started with pi_theta's checkpoint as `model` and hf_overrides naming this
architecture plus pi_t's path (adapter.py writes them). Each side is built from its own config
with vLLM's own model class (`vllm_config.with_hf_config`), under its own compile tag and module
prefix (`theta_model.` / `t_model.`), so every attention layer registers separately and each
model keeps its own KV cache in the engine's one block table. pi_t's checkpoint streams in
through the default loader's `secondary_weights`; `load_weights` routes by prefix.

forward runs both stacks on the same ids and positions and returns [h_theta | h_t];
compute_logits returns [logits_theta | logits_t] (each cut to the shared width W) for the
logits processor (logits_processor.py), which does the mixture and the draw.
Not for: the mixture math (qstar_kernels), request handling (adapter.py).
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import nn
from vllm.compilation.backends import set_model_tag
from vllm.model_executor.model_loader.default_loader import DefaultModelLoader
from vllm.model_executor.models.utils import init_vllm_registered_model
from vllm.transformers_utils.config import get_config

from .checks import check_pair_configs
from .logits_processor import pair_width

ARCH = "QStarPairForCausalLM"
OVERRIDE_KEYS = ("qstar_model_t", "qstar_arch_theta", "qstar_width", "qstar_vocab_size", "qstar_special_ids")
T_PREFIX = "t_model."


def _theta_config(hf_config):
    """pi_theta's own config: the engine's, minus qstar's keys, with its real architecture."""
    import copy

    cfg = copy.deepcopy(hf_config)
    cfg.architectures = list(hf_config.qstar_arch_theta)
    for k in OVERRIDE_KEYS:
        if hasattr(cfg, k):
            delattr(cfg, k)
    return cfg


class QStarPairForCausalLM(nn.Module):
    """pi_theta and pi_t side by side; see the module docstring for the contract."""

    def __init__(self, *, vllm_config, prefix: str = ""):
        super().__init__()
        mc = vllm_config.model_config
        cfg = mc.hf_config
        path_t = getattr(cfg, "qstar_model_t", None)
        if not path_t:
            raise ValueError(f"{ARCH} needs hf_overrides['qstar_model_t'] (pi_t's checkpoint); "
                             "start the engine with engine.backends.vllm.QStarVLLM")
        cfg_theta = _theta_config(cfg)
        cfg_t = get_config(path_t, mc.trust_remote_code)
        check_pair_configs(cfg_theta, cfg_t, vllm_config.parallel_config.tensor_parallel_size,
                           name_theta=mc.model, name_t=path_t)
        self.width, self.vocab = pair_width(cfg)
        # each side its own compile tag: the two stacks must not share compiled artifacts
        with set_model_tag("qstar_theta"):
            self.theta_model = init_vllm_registered_model(vllm_config, hf_config=cfg_theta,
                                                          prefix=_join(prefix, "theta_model"))
        with set_model_tag("qstar_t"):
            self.t_model = init_vllm_registered_model(vllm_config, hf_config=cfg_t,
                                                      prefix=_join(prefix, "t_model"))
        self.hidden_theta = cfg_theta.get_text_config().hidden_size
        self.secondary_weights = [DefaultModelLoader.Source(path_t, revision=None, prefix=T_PREFIX)]

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{ARCH} runs on token ids only (two embeddings, no inputs_embeds)")

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, intermediate_tensors=None,
                inputs_embeds=None, **kwargs) -> torch.Tensor:
        if inputs_embeds is not None or intermediate_tensors is not None:
            raise NotImplementedError(f"{ARCH}: no inputs_embeds, no pipeline parallelism")
        h_theta = self.theta_model(input_ids, positions)  # (N, H_theta)
        h_t = self.t_model(input_ids, positions)          # (N, H_t)
        return torch.cat([h_theta, h_t], dim=-1)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        H, W = self.hidden_theta, self.width
        lt = self.theta_model.compute_logits(hidden_states[:, :H].contiguous())
        lo = self.t_model.compute_logits(hidden_states[:, H:].contiguous())
        if lt is None or lo is None:  # TP rank > 0
            return None
        return torch.cat([lt[:, :W], lo[:, :W]], dim=-1)  # (N, 2W)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # the loader streams pi_theta's checkpoint first, then pi_t's (prefixed): split the
        # stream where the prefix starts, without holding either checkpoint in memory
        it = iter(weights)
        first_t: list = []

        def theta_part():
            for name, w in it:
                if name.startswith(T_PREFIX):
                    first_t.append((name, w))
                    return
                yield name, w

        def t_part():
            for name, w in itertools.chain(first_t, it):
                if not name.startswith(T_PREFIX):
                    raise ValueError(f"{ARCH}: pi_theta weight {name!r} after pi_t's started")
                yield name.removeprefix(T_PREFIX), w

        loaded = {"theta_model." + n for n in self.theta_model.load_weights(theta_part())}
        return loaded | {"t_model." + n for n in self.t_model.load_weights(t_part())}

def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
