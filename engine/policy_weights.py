"""Policy weight updates from a trainer: the names and shapes it sends, checked against pi_theta.

A trainer holds pi_theta wrapped in ways that change parameter names: DDP (`module.`),
torch.compile (`_orig_mod.`), activation checkpointing (`_checkpoint_wrapped_module.`), PEFT
(`base_model.model.`, `.base_layer`, `modules_to_save.default.` / `original_module`).
`named_weights` takes a state dict or an iterable of (name, tensor) under any of those wrappings
and returns canonical names (the plain transformers model's); `check_weights` refuses the whole
update before anything is copied when one name or shape does not belong to pi_theta.
Not for: copying (OptimalSamplingModel.update_policy_weights, the vllm adapter's) or gathering
sharded parameters (the trainer integration, engine/integrations/trl.py).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

# removed wherever they occur (wrappers insert them in the middle of names too)
WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.", "modules_to_save.default.")
PREFIXES = ("module.", "base_model.model.")  # DDP, then PEFT


class WeightsError(ValueError):
    """Weights that do not fit pi_theta: nothing was copied."""


def canonical(name: str) -> str | None:
    """The transformers name of a trainer's parameter; None for PEFT's frozen originals."""
    if "original_module" in name:
        return None  # modules_to_save keeps an untrained copy; the trained one is the real weight
    for part in WRAPPER_PARTS:
        name = name.replace(part, "")
    for prefix in PREFIXES:
        name = name.removeprefix(prefix)
    return name.replace(".base_layer", "")


def named_weights(weights) -> list[tuple[str, object]]:
    """[(canonical name, tensor)] from a state dict or an iterable of (name, tensor) pairs."""
    import torch

    items = weights.items() if isinstance(weights, Mapping) else weights
    if not isinstance(items, Iterable) or isinstance(weights, (str, bytes, torch.Tensor)):
        raise WeightsError(f"weights must be a state dict or an iterable of (name, tensor) pairs, "
                           f"got {type(weights).__name__}")
    out = []
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], torch.Tensor)):
            raise WeightsError(f"weights must yield (name, tensor) pairs, got {type(item).__name__} "
                               f"{str(item)[:80]!r}")
        name, tensor = item
        if "lora_" in name:
            raise WeightsError(f"{name!r} is a LoRA adapter tensor: merge the adapter first "
                               "(peft merge_adapter()) and send the merged base weights without lora_* names")
        full = getattr(tensor, "full_tensor", None)  # FSDP2 / DTensor shards -> the whole tensor
        key = canonical(name)
        if key is not None:
            out.append((key, full() if callable(full) else tensor))
    return out


def check_weights(weights: list[tuple[str, object]], shapes: Mapping[str, tuple], model_name: str) -> None:
    """Every name must be one of pi_theta's parameters, with its shape."""
    if not weights:
        raise WeightsError("no weights given: pass pi_theta's state dict or (name, tensor) pairs")
    unknown = [n for n, _ in weights if n not in shapes]
    if unknown:
        raise WeightsError(f"{len(unknown)} of {len(weights)} weights are not parameters of model_theta "
                           f"({model_name}), e.g. {unknown[:3]}; it has e.g. {sorted(shapes)[:3]}. Send the "
                           "policy's own state dict (the same architecture as model_theta)")
    bad = [(n, tuple(t.shape), tuple(shapes[n])) for n, t in weights if tuple(t.shape) != tuple(shapes[n])]
    if bad:
        n, got, want = bad[0]
        raise WeightsError(f"{len(bad)} weights have the wrong shape for model_theta ({model_name}): {n} is "
                           f"{got}, expected {want}. These are weights of another model")
