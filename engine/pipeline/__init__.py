"""qstar generate: a prompt dataset in, mixture-sampled training records out, crash-safe.

config.py (every option, one dataclass) -> data.py (rows -> per-side prompts) -> run.py (the
engine, progress, SIGINT) -> store.py (JSONL checkpoint, diagnostics, manifest, resume) with
records.py (what a line holds). Not for: the math (qstar_kernels) or the decode loop (engine.core).
"""
import importlib

_LAZY = {"GenerateConfig": "config", "run_generate": "run"}  # run loads torch: only on first use


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["GenerateConfig", "run_generate"]
