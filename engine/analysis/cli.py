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
from pathlib import Path

from ..pipeline.store import paths
from . import plots, stats

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


def read_diagnostics(path: Path, cmd: str = "analyze") -> list[dict]:
    rows = read_jsonl(path, cmd)
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


def read_records(path: Path) -> list[dict]:
    rows = read_jsonl(path, "report")
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


# ---- printing: a table per run, a comparison table, then one JSON line ----

def _f(x, spec=".4g") -> str:
    return "-" if x is None else format(x, spec)


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


CHECK_LABELS = {"ess_ratio": "ESS ratio in [{ess_low:g}, {ess_high:g}]",
                "kl_gap": "|KL(q||pi_theta) - KL(q||pi_t)| < {kl_tol:g}",
                "alpha": "alpha in [{alpha_low:g}, {alpha_high:g}]", "all": "all three at once"}


def format_run(s: stats.RunSummary, th: stats.Thresholds) -> str:
    out = [f"== {s.name}  ({s.path})",
           f"method {s.alpha_method} {s.alpha_methods if len(s.alpha_methods) > 1 else ''}| {s.n_samples} samples | "
           f"{s.n_tokens} tokens | finish {s.finish_reasons} | clamped {_pct(s.clamped_frac_mean)}"]
    tok = s.distributions["token"] or {}
    head = ["statistic", "level", "mean", "std", "min", "q05", "median", "q95", "max", "null"]
    out.append("".join(f"{h:>10}" if i > 1 else f"{h:<15}" if i == 0 else f"{h:<8}" for i, h in enumerate(head)))
    for name, d in s.distributions["sample"].items():
        lvl, d = ("token", tok[name]) if name in tok else ("sample", d)
        out.append(f"{name:<15}{lvl:<8}" + "".join(f"{_f(d[k]):>10}" for k in head[2:-1]) + f"{d['null']:>10}")
    out.append(f"{'check (' + s.checks['level'] + ' level)':<48}{'pass':>8}{'n':>8}{'null':>7}")
    for k, label in CHECK_LABELS.items():
        c = s.checks[k]
        mark = f"  by construction ({s.alpha_method})" if k in s.by_construction else ""
        out.append(f"{label.format(**vars(th)):<48}{_pct(c['pass_rate']):>8}{c['n']:>8}{c['null']:>7}{mark}")
    out.append(f"{'sequence weights':<18}{'n':>6}{'null':>6}{'mean logw':>12}{'std':>10}{'median':>10}{'ESS/n':>9}")
    for side, w in s.seq_weights.items():
        lw = w["logw"]
        out.append(f"{'pi_' + side + '/behavior':<18}{lw['count']:>6}{lw['null']:>6}{_f(lw['mean']):>12}"
                   f"{_f(lw['std']):>10}{_f(lw['median']):>10}{_f(w['ess_norm'], '.4f'):>9}")
    out += [f"note: {n}" for n in s.notes]
    return "\n".join(out)


def format_comparison(rows: list[dict]) -> str:
    head = f"{'run':<16}{'method':<20}{'level':<7}{'alpha':>7}{'KL_th':>8}{'KL_t':>8}{'ESSr med':>9}" \
           f"{'ESS ok':>9}{'KL ok':>9}{'alpha ok':>9}{'all':>8}{'seqESS':>8}"
    out = ["== comparison (* = passes by construction)", head]
    for r in rows:
        marks = {k: "*" if k in r["by_construction"] else " " for k in ("ess_ratio", "kl_gap")}
        out.append(f"{r['name'][:15]:<16}{r['alpha_method'][:19]:<20}{r['level']:<7}{_f(r['alpha_mean'], '.3f'):>7}"
                   f"{_f(r['kl_theta_mean'], '.4f'):>8}{_f(r['kl_t_mean'], '.4f'):>8}"
                   f"{_f(r['ess_ratio_median'], '.3f'):>9}{_pct(r['pass_ess_ratio']) + marks['ess_ratio']:>9}"
                   f"{_pct(r['pass_kl_gap']) + marks['kl_gap']:>9}{_pct(r['pass_alpha']):>9}{_pct(r['pass_all']):>8}"
                   f"{_f(r['seq_ess_theta'], '.3f'):>8}")
    return "\n".join(out)


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


def run_analyze(ns) -> int:
    th = _thresholds(ns)
    files = [Path(f).expanduser() for f in ns.inputs]
    runs = [(name, read_diagnostics(f)) for name, f in zip(run_names(files), files)]
    out_dir = _writable_dir(Path(ns.output_dir).expanduser() if ns.output_dir
                            else Path(f"{stem_of(files[0])}.analysis"))
    summaries = [stats.summarize(name, str(f), lines, th) for (name, lines), f in zip(runs, files)]
    pngs, skipped = plots.make_all(runs, summaries, th) if not ns.no_plots else ({}, {"all": "--no-plots"})
    for k, png in pngs.items():
        (out_dir / f"{k}.png").write_bytes(png)
    rows = stats.comparison(summaries)
    result = {"thresholds": vars(th), "runs": [s.to_dict() for s in summaries], "comparison": rows,
              "plots": {k: f"{k}.png" for k in pngs}, "skipped_plots": skipped}
    (out_dir / "summary.json").write_text(json.dumps(result, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    print("\n\n".join(format_run(s, th) for s in summaries))
    if len(summaries) > 1:
        print("\n" + format_comparison(rows))
    for k, why in skipped.items():
        print(f"plot {k} skipped: {why}")
    print(f"wrote {out_dir / 'summary.json'} and {len(pngs)} plots in {out_dir}")
    print(json.dumps({"command": "analyze", "output_dir": str(out_dir), "runs": rows}))
    return 0


def run_report(ns) -> int:
    from . import report

    th = _thresholds(ns)
    path = Path(ns.input).expanduser()
    records = read_records(path)
    p = paths(str(path))
    manifest = _read_manifest(p["manifest"])
    method = (manifest or {}).get("config", {}).get("alpha_method", "unknown")
    diag = None
    if p["diagnostics"].exists():
        try:
            diag = read_diagnostics(p["diagnostics"], "report")
        except InputError as e:
            _warn("report", f"{e}; using the summaries in the records instead")
    else:
        _warn("report", f"no {p['diagnostics'].name} next to the run; using the summaries in the records")
    diag = diag or [diag_from_record(r, method) for r in records]
    name = stem_of(path).name
    summary = stats.summarize(name, str(path), diag, th)
    pngs, skipped = plots.make_all([(name, diag)], [summary], th)
    tok, note = report.load_tokenizer(ns.tokenizer or (manifest or {}).get("config", {}).get("model_theta"))
    out = Path(ns.output).expanduser() if ns.output else Path(f"{stem_of(path)}.report.html")
    page = report.render(name=name, summary=summary, records=records, pngs=pngs, skipped=skipped,
                         manifest=manifest, manifest_path=p["manifest"], tok=tok, tok_note=note,
                         max_samples=ns.max_samples)
    _writable_dir(out.parent)
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out} ({len(page) / 1e6:.2f} MB, {min(len(records), ns.max_samples)} of {len(records)} samples "
          f"in the browser; {note})")
    print(json.dumps({"command": "report", "output": str(out), "n_samples": len(records),
                      "alpha_method": summary.alpha_method, "checks_level": summary.checks["level"]}))
    return 0


def _read_manifest(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        _warn("report", f"{path} is not readable JSON ({e}); the report shows no config")
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
    a = sub.add_parser("analyze", help="statistics, condition checks and plots of one or more runs",
                       description="Per-run statistics of diagnostics files, the seed's condition checks as pass "
                       "rates, sequence importance-weight diagnostics, a comparison table for several runs; "
                       "prints tables, writes summary.json and PNG plots.")
    a.add_argument("inputs", nargs="+", metavar="RUN.diagnostics.jsonl", help="diagnostics files of qstar generate")
    a.add_argument("--output-dir", "-o", metavar="DIR", help="where summary.json and the plots go (default: <stem>.analysis "
                   "next to the first input)")
    a.add_argument("--no-plots", action="store_true", help="write summary.json only")
    _threshold_flags(a)
    r = sub.add_parser("report", help="one self-contained offline HTML report of a run",
                       description="Config, summary, plots and a token-coloured sample browser in one HTML file "
                       "(no network needed to make or view it).")
    r.add_argument("input", metavar="RUN.jsonl", help="records file of qstar generate (its <stem>.diagnostics.jsonl "
                   "and <stem>.manifest.json are read when present)")
    r.add_argument("--output", "-o", metavar="FILE", help="HTML file to write (default: <stem>.report.html)")
    r.add_argument("--max-samples", type=_positive, default=200, metavar="N",
                   help="samples in the browser, the first by (sample_idx, n) (default: 200)")
    r.add_argument("--tokenizer", metavar="PATH", help="local tokenizer dir or .gguf file to decode token ids (default: the "
                   "manifest's model_theta when it is a local path)")
    _threshold_flags(r)


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
