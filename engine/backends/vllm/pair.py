"""What the adapter learns about a pair before starting vLLM: paths, configs, tokenizer gate.

Everything here reads config and tokenizer files only (seconds), so a bad pair fails before an
engine starts. The tokenizer gate is the hf engine's own (engine.loading.tokenizer_gate), fed
the lm_head sizes from the configs.
Not for: running anything (adapter.py) or vLLM internals (model.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

from ...loading import Vocab, resolve, tokenizer_gate
from .checks import PairError, check_pair_configs


@dataclass
class PairInfo:
    """The pair as the engine sees it (also what the pipeline reads as `.pair`)."""

    path_theta: str
    path_t: str
    name_theta: str
    name_t: str
    tokenizer: object
    vocab: Vocab             # logits_width W, vocab_size V, eos_ids (tokenizer + both gen configs)
    arch_theta: list[str]
    max_pos_theta: int
    max_pos_t: int
    tokenizer_t: object = None  # one shared tokenizer: this backend refuses cross-tokenizer mode
    cross: object = None

    @property
    def max_model_len(self) -> int:
        return min(self.max_pos_theta, self.max_pos_t)


def _max_pos(cfg) -> int:
    c = cfg.get_text_config()
    return int(getattr(c, "max_position_embeddings", None) or getattr(c, "n_positions", None) or 1 << 20)


def _head_stub(cfg, path: str, trust_remote_code: bool):
    """Duck-types what tokenizer_gate reads from a model: lm_head rows, generation config."""
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(path)
    except OSError:
        gen = None
    rows = int(cfg.get_text_config().vocab_size)
    head = SimpleNamespace(weight=SimpleNamespace(shape=(rows,)))
    return SimpleNamespace(get_output_embeddings=lambda: head, generation_config=gen)


def inspect_pair(model_theta: str, model_t: str, *, tensor_parallel_size: int = 1, cpu: bool = False,
                 trust_remote_code: bool = False) -> PairInfo:
    """Resolve both models (GGUF -> cached safetensors dir), check them, gate the tokenizers."""
    from transformers import AutoConfig, AutoTokenizer

    for side, spec in (("model_theta", model_theta), ("model_t", model_t)):
        if not isinstance(spec, (str, bytes)) and not hasattr(spec, "__fspath__"):
            raise PairError(f"{side}: the vllm backend loads models from paths or hub names, got a "
                            f"{type(spec).__name__}; save it with save_pretrained() or use backend 'hf'")
    path_theta, path_t = resolve(str(model_theta)), resolve(str(model_t))
    try:
        cfg_theta = AutoConfig.from_pretrained(path_theta, trust_remote_code=trust_remote_code)
        cfg_t = AutoConfig.from_pretrained(path_t, trust_remote_code=trust_remote_code)
        tok_theta = AutoTokenizer.from_pretrained(path_theta, trust_remote_code=trust_remote_code)
        tok_t = AutoTokenizer.from_pretrained(path_t, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise OSError(f"could not read the pair ({model_theta!r}, {model_t!r}): {e}. Give local HF "
                      "model dirs, .gguf files, or hub names when the hub is reachable") from e
    check_pair_configs(cfg_theta, cfg_t, tensor_parallel_size, name_theta=str(model_theta),
                       name_t=str(model_t), cpu=cpu)
    vocab = tokenizer_gate(tok_theta, tok_t, _head_stub(cfg_theta, path_theta, trust_remote_code),
                           _head_stub(cfg_t, path_t, trust_remote_code), str(model_theta), str(model_t))
    arch = list(getattr(cfg_theta, "architectures", None) or [])
    if not arch:
        raise PairError(f"model_theta ({model_theta}): config.json names no architectures")
    return PairInfo(path_theta=path_theta, path_t=path_t, name_theta=str(model_theta), name_t=str(model_t),
                    tokenizer=tok_theta, vocab=vocab, arch_theta=arch,
                    max_pos_theta=_max_pos(cfg_theta), max_pos_t=_max_pos(cfg_t))
