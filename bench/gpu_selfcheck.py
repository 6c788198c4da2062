"""`qstar check` on the device: the exactness self-test of a tiny random pair (tests/tiny.py),
with every mixture control on, per dtype; then in float32 speculative decoding (K = 4, draft t)
and cross-tokenizer mode (a teacher on a second in-code tokenizer). Prints each PASS/FAIL table,
then one JSON line.

    PYTHONPATH=. python -m bench.gpu_selfcheck [--out DIR] [--device cuda] [--draws 2000]

float32 must pass; bfloat16 is reported (its tolerance is looser by design, docs/guide.md).
Installs nothing; no network (the pair and its tokenizer are built in code).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTROLS = dict(support="t_top_k:60,t_top_p:0.97", force_teacher="first,special")


def pair_dirs(out: Path, vocab_t: int | None = None) -> tuple[str, str]:
    """The tiny pair on disk; vocab_t: pi_t gets its own in-code tokenizer of that size."""
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny

    dirs = []
    for name, seed, vocab in (("theta", 1, None), ("t", 2, vocab_t)):
        tok = tiny.tokenizer(vocab) if vocab else tiny.tokenizer()
        d = out / ("pair" if vocab_t is None else f"pair-cross{vocab_t}") / name
        if not (d / "config.json").exists():
            tiny.model(seed=seed, vocab=len(tok)).save_pretrained(d)
            tok.save_pretrained(d)
        dirs.append(str(d))
    return dirs[0], dirs[1]


def variants(dtypes, out: Path):
    """(dtype, name, pair dirs, mixture method, extra sampling, cross_tokenizer) per check."""
    plain = pair_dirs(out)
    for dtype in dtypes:
        for method in ("kl_symmetry", "ess_balance", "reverse_kl_symmetry"):
            yield dtype, method, plain, method, {}, False
    if "float32" in dtypes:
        yield "float32", "speculative=4,draft=t", plain, "kl_symmetry", dict(speculative=4, draft="t"), False
        yield "float32", "cross_tokenizer", pair_dirs(out, vocab_t=300), "kl_symmetry", {}, True


def main(argv=None) -> int:
    from engine.check import check
    from engine.config import MixtureConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-check-out"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--draws", type=int, default=2000)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for dtype, name, (theta, t), method, extra, cross in variants(args.dtypes, out):
        t0 = time.time()
        rep = check(theta, t, mixture=MixtureConfig(alpha_method=method, alpha_min=0.05, **CONTROLS),
                    sampling=dict(temperature=0.9, top_p=0.95, **extra), draws=args.draws, samples=2,
                    max_new_tokens=16, device=args.device, dtype=dtype, batch_size=16, cross_tokenizer=cross,
                    log=lambda m: None)
        print(f"== {dtype} {name}", flush=True)
        print(rep.table(), flush=True)
        results.append(dict(dtype=dtype, method=name, passed=rep.passed, seconds=round(time.time() - t0, 1),
                            failed=[r.name for r in rep.rows if not r.ok],
                            rows=[dict(name=r.name, value=r.value, ok=r.ok) for r in rep.rows]))
    with open(out / "gpu_selfcheck.json", "w") as f:
        json.dump(results, f, indent=1)
    ok = all(r["passed"] for r in results if r["dtype"] == "float32")
    print(json.dumps(dict(bench="gpu_selfcheck", correct=ok,
                          summary=[(r["dtype"], r["method"], r["passed"], r["failed"]) for r in results])))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
