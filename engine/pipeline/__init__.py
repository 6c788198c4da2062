"""qstar generate: a prompt dataset in, mixture-sampled training records out, crash-safe.

config.py (every option, one dataclass) -> data.py (rows -> per-side prompts) -> run.py (the
engine, progress, SIGINT) -> store.py (JSONL checkpoint, diagnostics, manifest, resume) with
records.py (what a line holds). Not for: the math (qstar_kernels) or the decode loop (engine.core).
"""
from qstar_kernels.lazy import lazy_getattr

_LAZY = {"GenerateConfig": "config", "run_generate": "run"}  # run loads torch: only on first use

__getattr__ = lazy_getattr(__name__, _LAZY)
__all__ = ["GenerateConfig", "run_generate"]
