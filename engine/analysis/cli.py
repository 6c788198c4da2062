"""`qstar analyze` and `qstar report`: read and validate run files, then hand them to stats /
plots / report.

    qstar analyze RUN.diagnostics.jsonl [MORE ...] --output-dir DIR
    qstar report RUN.jsonl -o report.html

Input errors (a missing, empty or wrong-kind file, a corrupt line) print one line and exit 2;
a torn last line (a run still writing) is skipped with a warning.
Not for: the statistics themselves (stats.py), drawing (plots.py), HTML (report.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..pipeline.store import paths
from . import answers, importance, plots, stats, tables

DIAG_SUFFIX = ".diagnostics.jsonl"


class InputError(ValueError):
    """A bad input file; the message names it and says what to do."""


def _warn(cmd: str, msg: str) -> None:
    print(f"qstar {cmd}: warning: {msg}", file=sys.stderr)


def read_jsonl(path: Path, cmd: str) -> list[dict]:
    """The JSON objects of a JSONL file; a torn last line is skipped with a warning."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path} is not a file; give a .jsonl file")
    data = path.read_bytes()
    if not data.strip():
        raise InputError(f"{path} is empty: the run has written no samples yet, or this is not a run file")
    rows, lines = [], data.splitlines(keepends=True)
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if i == len(lines) and not line.endswith(b"\n"):
                _warn(cmd, f"{path}: last line {i} is incomplete (the run may still be writing it); skipped it")
                continue
            raise InputError(f"{path}: line {i} is not valid JSON ({e}): not a qstar JSONL file, or a damaged "
                             "one") from None
        if not isinstance(obj, dict):
            raise InputError(f"{path}: line {i} is not a JSON object: not a qstar records or diagnostics file")
        rows.append(obj)
    if not rows:
        raise InputError(f"{path} has no complete lines yet (only a torn one): wait for the run to write a sample")
    return rows


def kind_of(rows: list[dict]) -> str:
    first = rows[0]
    if "messages" in first:
        return "records"
    if "sample_idx" in first and ("alpha_method" in first or "alpha_mean" in first):
        return "diagnostics"
    return "unknown"


def stem_of(path: Path) -> Path:
    """runs/kl.diagnostics.jsonl and runs/kl.jsonl -> runs/kl."""
    if path.name.endswith(DIAG_SUFFIX):
        return path.with_name(path.name[: -len(DIAG_SUFFIX)])
    return path.with_suffix("") if path.suffix in (".jsonl", ".json", ".parquet") else path


def read_diagnostics(path: Path, cmd: str = "analyze", rows: list[dict] | None = None) -> list[dict]:
    rows = read_jsonl(path, cmd) if rows is None else rows
    kind = kind_of(rows)
    if kind == "records":
        diag = paths(str(path))["diagnostics"]
        hint = f"give {diag}" if diag.exists() else f"its diagnostics file would be {diag} (not found)"
        raise InputError(f"{path} is a records file (its lines hold 'messages'); analyze reads the diagnostics "
                         f"file: {hint}")
    if kind != "diagnostics":
        raise InputError(f"{path} is not a qstar diagnostics file (lines lack sample_idx/alpha_method); give "
                         "<stem>.diagnostics.jsonl written by qstar generate")
    return rows


def read_records(path: Path, cmd: str = "report") -> list[dict]:
    rows = read_jsonl(path, cmd)
    kind = kind_of(rows)
    if kind == "diagnostics":
        rec = Path(f"{stem_of(path)}.jsonl")
        raise InputError(f"{path} is a diagnostics file; report reads the records file (it holds the response "
                         f"texts) and finds the diagnostics next to it: give {rec}")
    if kind != "records":
        raise InputError(f"{path} is not a qstar records file (lines lack 'messages'); give the --output file "
                         "of qstar generate")
    return rows


def diag_from_record(rec: dict, method: str) -> dict:
    """A diagnostics line rebuilt from a record (when the diagnostics file is missing)."""
    d = {k: v for k, v in rec.items() if k not in ("messages", "prompt_t")}
    d["alpha_method"] = method
    if isinstance(rec.get("ess_theta"), list) and isinstance(rec.get("ess_t"), list):
        d["ess_ratio"] = [a / b if a is not None and b else None for a, b in zip(rec["ess_theta"], rec["ess_t"])]
    return d


def run_names(files: list[Path]) -> list[str]:
    """Stems, with the parent folder added where two runs share a stem."""
    names = [stem_of(f).name for f in files]
    out = [f"{stem_of(f).parent.name}/{n}" if names.count(n) > 1 else n for f, n in zip(files, names)]
    return [n if out.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(out)]


# ---- the two commands ----

def _thresholds(ns) -> stats.Thresholds:
    return stats.Thresholds(ess_low=ns.ess_band[0], ess_high=ns.ess_band[1], kl_tol=ns.kl_tol,
                            alpha_low=ns.alpha_band[0], alpha_high=ns.alpha_band[1])


def _writable_dir(d: Path) -> Path:
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot create output directory {d} ({e.strerror}); choose another --output-dir") from None
    return d


@dataclass
class Run:
    """One run as both commands see it: its diagnostics lines (or the records' summaries), its
    records when found (texts and references), manifest, and the statistics of it all."""

    summary: stats.RunSummary
    diag: list[dict]
    records: list[dict] | None
    manifest: dict | None
    manifest_path: Path
    graded: dict  # 'idx/n' -> {answer, reference, reward}; empty without an answer step


def _diag_for(records: list[dict], p: dict, manifest: dict | None, cmd: str) -> list[dict]:
    """The diagnostics next to a records file, or lines rebuilt from the records' summaries."""
    if p["diagnostics"].exists():
        try:
            return read_diagnostics(p["diagnostics"], cmd)
        except InputError as e:
            _warn(cmd, f"{e}; using the summaries in the records instead")
    else:
        _warn(cmd, f"no {p['diagnostics'].name} next to the run; using the summaries in the records")
    method = (manifest or {}).get("config", {}).get("alpha_method", "unknown")
    return [diag_from_record(r, method) for r in records]


def _records_for(diag_path: Path, cmd: str) -> list[dict] | None:
    """The records next to a diagnostics file (for the answer step), or None with a note why."""
    rec = Path(f"{stem_of(diag_path)}.jsonl")
    if not rec.exists():
        return None
    try:
        return read_records(rec, cmd)
    except InputError as e:
        _warn(cmd, f"{e}; no answer step for this run")
        return None


def read_speed(stem: Path) -> dict | None:
    """qstar generate's <stem>.summary.json (tokens/s of its last session), when it exists."""
    f = paths(f"{stem}.jsonl").get("summary") or Path(f"{stem}.summary.json")
    if not f.exists():
        return None
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    return data if isinstance(data, dict) else None


def load_run(path: Path, name: str, ns, cmd: str) -> Run:
    """A run from either of its files (report needs the records file, analyze takes both)."""
    rows = read_jsonl(path, cmd)
    p = paths(f"{stem_of(path)}.jsonl")
    manifest = _read_manifest(p["manifest"], cmd)
    if kind_of(rows) == "records":
        records, diag = rows, _diag_for(rows, p, manifest, cmd)
    elif cmd == "report":
        records = read_records(path, cmd)  # raises: names the records file to give instead
    else:
        diag, records = read_diagnostics(path, cmd, rows), _records_for(path, cmd)
    summary = stats.summarize(name, str(path), diag, _thresholds(ns))
    summary.speed = read_speed(stem_of(path))
    graded = {}
    field = answers.answer_field(records, ns.answer_field) if records else None
    if ns.answer_field and not records:
        raise InputError(f"--answer-field {ns.answer_field}: no records file {p['output']} next to {path} "
                         "(the diagnostics hold no texts or references)")
    if field:
        summary.answers, graded = answers.answer_step(records, field, ns.reward_hook, ns.min_ess)
    return Run(summary, diag, records, manifest, p["manifest"], graded)


def run_analyze(ns) -> int:
    th = _thresholds(ns)
    files = [Path(f).expanduser() for f in ns.inputs]
    runs = [load_run(f, name, ns, "analyze") for name, f in zip(run_names(files), files)]
    out_dir = _writable_dir(Path(ns.output_dir).expanduser() if ns.output_dir
                            else Path(f"{stem_of(files[0])}.analysis"))
    summaries = [r.summary for r in runs]
    rows = stats.comparison(summaries)
    pngs, skipped = ({}, {"all": "--no-plots"}) if ns.no_plots else \
        plots.make_all([(s.name, r.diag) for s, r in zip(summaries, runs)], summaries, th, rows)
    for k, png in pngs.items():
        (out_dir / f"{k}.png").write_bytes(png)
    result = {"thresholds": vars(th), "runs": [s.to_dict() for s in summaries], "comparison": rows,
              "plots": {k: f"{k}.png" for k in pngs}, "skipped_plots": skipped}
    (out_dir / "summary.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    print("\n\n".join(tables.format_run(s, th) for s in summaries))
    if len(summaries) > 1:
        print("\n" + tables.format_comparison(rows))
    if any(s.answers for s in summaries):
        print("\n" + tables.format_answer_comparison(rows))
    for k, why in skipped.items():
        print(f"plot {k} skipped: {why}")
    print(f"wrote {out_dir / 'summary.json'} and {len(pngs)} plots in {out_dir}")
    print(json.dumps({"command": "analyze", "output_dir": str(out_dir), "runs": rows}))
    return 0


def run_report(ns) -> int:
    from . import report

    th = _thresholds(ns)
    files = [Path(f).expanduser() for f in ns.inputs]
    runs = [load_run(f, name, ns, "report") for name, f in zip(run_names(files), files)]
    main_run, summaries = runs[0], [r.summary for r in runs]
    rows = stats.comparison(summaries)
    pngs, skipped = plots.make_all([(main_run.summary.name, main_run.diag)], [main_run.summary], th)
    chart = plots.accuracy_chart(rows) if any(s.answers for s in summaries) else None
    cfg = (main_run.manifest or {}).get("config", {})
    tok, note = report.load_tokenizer(ns.tokenizer or cfg.get("model_theta"))
    out = Path(ns.output).expanduser() if ns.output else Path(f"{stem_of(files[0])}.report.html")
    page = report.render(name=main_run.summary.name, summary=main_run.summary, records=main_run.records, pngs=pngs,
                         skipped=skipped, manifest=main_run.manifest, manifest_path=main_run.manifest_path, tok=tok,
                         tok_note=note, max_samples=ns.max_samples, comparison=rows if chart or len(runs) > 1 else None,
                         chart=chart, graded=main_run.graded)
    _writable_dir(out.parent)
    out.write_text(page, encoding="utf-8")
    n = len(main_run.records)
    print(f"wrote {out} ({len(page) / 1e6:.2f} MB, {min(n, ns.max_samples)} of {n} samples of "
          f"{main_run.summary.name} in the browser; {len(runs)} run(s) compared; {note})")
    print(json.dumps({"command": "report", "output": str(out), "n_samples": n, "runs": len(runs),
                      "alpha_method": main_run.summary.alpha_method,
                      "checks_level": main_run.summary.checks["level"]}))
    return 0


def _read_manifest(path: Path, cmd: str = "report") -> dict | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        _warn(cmd, f"{path} is not readable JSON ({e}); no run config from it")
        return None


# ---- argparse ----

def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _threshold_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("condition checks (the seed's defaults)")
    g.add_argument("--ess-band", nargs=2, type=float, default=(0.8, 1.2), metavar=("LOW", "HIGH"),
                   help="ESS ratio ESS_theta/ESS_t passes in [LOW, HIGH] (default: 0.8 1.2)")
    g.add_argument("--kl-tol", type=float, default=0.05, metavar="TOL",
                   help="|KL(q||pi_theta) - KL(q||pi_t)| passes below this (default: 0.05)")
    g.add_argument("--alpha-band", nargs=2, type=float, default=(0.2, 0.8), metavar=("LOW", "HIGH"),
                   help="alpha (weight on pi_theta) passes in [LOW, HIGH] (default: 0.2 0.8)")


def add_parsers(sub) -> None:
    a = sub.add_parser("analyze", help="statistics, condition checks, answers and plots of one or more runs",
                       description="Per-run statistics of diagnostics files, the seed's condition checks as pass "
                       "rates, sequence importance-weight diagnostics, answer accuracy with importance-sampling "
                       "estimates of pi_theta's accuracy (when the records carry a reference answer), a "
                       "comparison table for several runs; prints tables, writes summary.json and PNG plots.")
    a.add_argument("inputs", nargs="+", metavar="RUN", help="a run's diagnostics file (<stem>.diagnostics.jsonl) or "
                   "records file (<stem>.jsonl); the other one next to it is read when present")
    a.add_argument("--output-dir", "-o", metavar="DIR", help="where summary.json and the plots go (default: <stem>.analysis "
                   "next to the first input)")
    a.add_argument("--no-plots", action="store_true", help="write summary.json only")
    _threshold_flags(a)
    _answer_flags(a)
    r = sub.add_parser("report", help="one self-contained offline HTML report of a run (or several, compared)",
                       description="Config, summary, plots and a token-coloured sample browser in one HTML file "
                       "(no network needed to make or view it). Given several runs, it opens with their "
                       "comparison (accuracy by sampler and a bar chart); the rest shows the first run.")
    r.add_argument("inputs", nargs="+", metavar="RUN.jsonl", help="records files of qstar generate (each one's "
                   "<stem>.diagnostics.jsonl and <stem>.manifest.json are read when present); the first is shown "
                   "in detail")
    r.add_argument("--output", "-o", metavar="FILE", help="HTML file to write (default: <stem>.report.html)")
    r.add_argument("--max-samples", type=_positive, default=200, metavar="N",
                   help="samples in the browser, the first by (sample_idx, n) (default: 200)")
    r.add_argument("--tokenizer", metavar="PATH", help="local tokenizer dir or .gguf file to decode token ids (default: the "
                   "manifest's model_theta when it is a local path)")
    _threshold_flags(r)
    _answer_flags(r)


def _answer_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("answers (verifiable rewards; read from the records file)")
    g.add_argument("--answer-field", metavar="FIELD", help="record field holding the reference answer (default: "
                   f"auto-detect {' / '.join(answers.ANSWER_FIELDS)}; none found: no answer step)")
    g.add_argument("--reward-hook", metavar="MODULE:FUNC", help="grade with FUNC(response, reference) -> bool or "
                   "number in [0, 1] instead of the number rule; MODULE may be a path/to/file.py")
    g.add_argument("--min-ess", type=float, default=importance.MIN_ESS, metavar="K",
                   help="below this sequence ESS the IS estimates are flagged as meaningless "
                   f"(default: {importance.MIN_ESS:g})")


def run(ns) -> int:
    try:
        return run_analyze(ns) if ns.command == "analyze" else run_report(ns)
    except (InputError, ValueError, OSError) as e:
        print(f"qstar {ns.command}: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # matplotlib is a dependency, but a broken env should still say what to do
        print(f"qstar {ns.command}: error: {e}; install the plotting dependency with `pip install matplotlib`",
              file=sys.stderr)
        return 2


def main(argv: list[str]) -> int:
    """`qstar analyze ...` / `qstar report ...` without the rest of the CLI (the demo calls this)."""
    ap = argparse.ArgumentParser(prog="qstar")
    add_parsers(ap.add_subparsers(dest="command", metavar="COMMAND", required=True))
    return run(ap.parse_args(argv))
