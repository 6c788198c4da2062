"""Where qstar keeps what it converts once (GGUF models as safetensors): `QSTAR_CACHE_DIR`,
default ~/.cache/qstar. No torch, no transformers: the loader writes here, the report reads.

Not for: loading models (loading.py).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("QSTAR_CACHE_DIR", Path.home() / ".cache" / "qstar"))


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    """The first 20 hex digits of the file's SHA-256 (a cache key that follows the content)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:20]


def gguf_cache_path(gguf: Path) -> Path:
    """The folder a GGUF file's safetensors copy (model + tokenizer) lives in, built or not."""
    return cache_root() / "gguf" / file_digest(gguf)
