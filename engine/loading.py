"""Loading a model pair: local HF dirs, hub names, GGUF files (cached once as safetensors),
or already-built transformers objects; then the tokenizer gate.

Not for: running the models (slot_model.py / hf_fallback.py) or rendering prompts (prompts.py).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .cache import gguf_cache_path


def quiet_libraries() -> None:
    """Our progress line is the one to read: no per-file bars from transformers/datasets."""
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except ImportError:
        pass


def gguf_cache_dir(gguf: Path) -> Path:
    """A safetensors copy of a GGUF model, keyed by the file's content hash; built once."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dest = gguf_cache_path(gguf)
    if (dest / "config.json").exists():
        return dest
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # a dequantised GGUF model refuses save_pretrained while it still looks quantised
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".tmp-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        tmp.rename(dest)  # atomic: a concurrent loader sees all of it or none
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process won the race
    return dest


def resolve(spec: str) -> str:
    """A loadable local dir (GGUF converted) or the hub name unchanged."""
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise FileNotFoundError(f"GGUF file not found: {spec}")
        return str(gguf_cache_dir(p.resolve()))
    if p.exists():
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"{spec} is a directory without config.json: not a HF model dir")
        return str(p)
    return spec


def load_model(spec, device: torch.device, dtype: torch.dtype):
    """(model, tokenizer, name) for a path / hub name / GGUF file / (model, tokenizer) pair."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

    if isinstance(spec, PreTrainedModel):
        return spec.to(device=device, dtype=dtype).eval(), None, getattr(spec, "name_or_path", "") or type(spec).__name__
    if isinstance(spec, tuple) and len(spec) == 2:
        model, _tok, _ = load_model(spec[0], device, dtype)
        return model, spec[1], getattr(spec[0], "name_or_path", "") or type(spec[0]).__name__
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"a model must be a path, hub name, .gguf file or transformers model, got {type(spec).__name__}")
    path = resolve(str(spec))
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except OSError as e:
        raise OSError(f"could not load model {spec!r}: {e}. Give a local HF model dir, a .gguf "
                      "file, or a hub name when the hub is reachable") from e
    return model.to(device).eval(), tok, str(spec)


@dataclass
class Vocab:
    """What the tokenizer gate established for the pair."""

    logits_width: int        # columns of both models' logits that are compared (min of the two)
    vocab_size: int          # real tokens; columns beyond are padding and masked
    eos_ids: frozenset[int]  # tokenizer EOS plus both generation configs' EOS
    special_ids: frozenset[int] = frozenset()  # the tokenizer's special tokens (and the EOS ids)


def token_table(ids, width: int, device=None) -> torch.Tensor:
    """(width,) bool, True at the given token ids (ids outside [0, width) are ignored): e.g. the
    special tokens that force_teacher "special" hands to qstar_kernels as force_tokens."""
    table = torch.zeros(width, dtype=torch.bool, device=device)
    ids = [int(i) for i in ids if 0 <= int(i) < width]
    if ids:
        table[torch.tensor(ids, device=device)] = True
    return table


def _eos_ids(tok, *models) -> frozenset[int]:
    ids = set()
    for src in [tok] + [getattr(m, "generation_config", None) for m in models]:
        val = getattr(src, "eos_token_id", None)
        if val is None:
            continue
        ids.update(val if isinstance(val, (list, tuple)) else [val])
    return frozenset(int(i) for i in ids)


def _special_ids(tok, eos_ids, n_tok: int) -> frozenset[int]:
    """Special tokens of the tokenizer: all_special_ids, added tokens marked special, EOS."""
    ids = set(getattr(tok, "all_special_ids", None) or [])
    for i, added in (getattr(tok, "added_tokens_decoder", None) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(i))
    ids |= set(eos_ids)
    return frozenset(i for i in ids if 0 <= i < n_tok)


def tokenizer_gate(tok_theta, tok_t, model_theta, model_t, name_theta: str, name_t: str) -> Vocab:
    """Both sides must map every token to the same id; a mismatch names both models."""
    v1, v2 = tok_theta.get_vocab(), tok_t.get_vocab()
    if v1 != v2:
        diff = sorted(set(v1.items()) ^ set(v2.items()), key=lambda kv: kv[1])[:3]
        raise ValueError(f"tokenizers of model_theta ({name_theta}) and model_t ({name_t}) differ "
                         f"({len(v1)} vs {len(v2)} tokens; e.g. {diff}): the mixture needs one "
                         "shared vocabulary: use one tokenizer for both, or opt into --cross-tokenizer "
                         "(API: cross_tokenizer=True), which samples in model_theta's vocabulary and "
                         "carries model_t's onto it (docs/guide.md#cross-tokenizer)")
    width = min(model_theta.get_output_embeddings().weight.shape[0],
                model_t.get_output_embeddings().weight.shape[0])
    n_tok = max(v1.values()) + 1
    if n_tok > width:
        raise ValueError(f"tokenizer has {n_tok} ids but a model's output layer has only {width} rows "
                         f"({name_theta} / {name_t}): tokenizer and model do not belong together")
    eos = _eos_ids(tok_theta, model_theta, model_t)
    return Vocab(logits_width=width, vocab_size=n_tok, eos_ids=eos, special_ids=_special_ids(tok_theta, eos, n_tok))


def policy_vocab(tok_theta, model_theta, name_theta: str, eos_theta) -> Vocab:
    """Cross-tokenizer mode: the vocabulary is pi_theta's alone (pi_t is carried onto it), and
    so are the stop ids (the teacher's EOS carries onto theta's EOS)."""
    width = model_theta.get_output_embeddings().weight.shape[0]
    n_tok = max(tok_theta.get_vocab().values()) + 1
    if n_tok > width:
        raise ValueError(f"tokenizer has {n_tok} ids but {name_theta}'s output layer has only {width} rows: "
                         "tokenizer and model do not belong together")
    eos = frozenset(int(i) for i in eos_theta)
    return Vocab(logits_width=width, vocab_size=n_tok, eos_ids=eos, special_ids=_special_ids(tok_theta, eos, n_tok))
