"""`qstar generate --ray`: the same run with the engine in N Ray actors (replicas).

cluster.py (import Ray, reach the cluster, check its CPUs/GPUs) -> replica.py (one actor: both
models, runs chunks of requests; fingerprint.py: what it reports) -> wire.py (outputs packed as
arrays for the trip back) -> pool.py (start, check and replace replicas) -> driver.py (RayEngine:
the CLI process keeps the tokenizer, sends chunks with back-pressure, hands each output once to
run.py's writer).
Not for: records, files or resume — run.py and store.py do those exactly as in a one-process run.
Importing this package needs Ray (`pip install 'qstar[ray]'`); run.py imports it only under --ray.
Imports are one-way: run.py -> here, never back (RunError and load_pair live in errors.py, pair.py).
"""
from .driver import RayEngine

__all__ = ["RayEngine"]
