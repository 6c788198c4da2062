"""How every benchmark ends: a human table, then one JSON line (STYLE habit 7)."""
from __future__ import annotations

import json


def report(name: str, rows: list[dict], cols: list[str], width: int = 14, headers=None, **meta) -> None:
    heads = [headers.get(c, c) if headers else c for c in cols]
    print(" ".join(f"{h:>{width}}" for h in heads))
    for r in rows:
        print(" ".join(f"{r[c]:>{width}}" for c in cols))
    print(json.dumps(dict(bench=name, **meta, rows=rows)))
