"""The vllm backend: both models of the pair inside one vLLM engine, exact qstar sampling.

    from engine.backends.vllm import QStarVLLM
    eng = QStarVLLM("policy/", "teacher/", alpha_method="kl_symmetry")
    outs = eng.generate(["What is 2+2?"], max_new_tokens=64, n=2)   # engine.outputs.SampleOutput

Pieces: model.py (the pair as one vLLM architecture), logits_processor.py (the qstar step in
vLLM's sampler), codec.py (per-token values through logprobs), checks.py (pairs refused up
front), adapter.py (engine + requests -> SampleOutput). `register` is the
`vllm.general_plugins` entry point: vLLM calls it in every process it starts.
Not for: the hf engine (engine.core) or the math (qstar_kernels). See docs/vllm.md.
"""
from __future__ import annotations

ARCH = "QStarPairForCausalLM"


def register() -> None:
    """Make the pair architecture known to vLLM (lazily: nothing heavy imports here)."""
    from vllm import ModelRegistry

    if ARCH not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCH, "engine.backends.vllm.model:QStarPairForCausalLM")


def __getattr__(name):
    if name == "QStarVLLM":
        from .adapter import QStarVLLM

        return QStarVLLM
    raise AttributeError(name)
