"""What a replica and the driver compare and report: the tokenizer's fingerprint and an error's
first line. Its own module so that pool.py (which starts replicas) and replica.py (which reports
to it) both import it and neither imports the other the wrong way (pool -> replica only).
Not for: starting or replacing replicas (pool.py).
"""
from __future__ import annotations

import hashlib
import json


def vocab_fingerprint(tok) -> str:
    """Same files on every node? The driver compares its tokenizer's fingerprint with each replica's."""
    return hashlib.sha256(json.dumps(sorted(tok.get_vocab().items())).encode()).hexdigest()[:16]


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
