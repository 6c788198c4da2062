"""The `qstar` command line: flags map onto the config dataclasses and nothing else.

    qstar generate --model-theta P --model-t T --dataset D --output out.jsonl [...]

Every GenerateConfig field is a flag in kebab-case and in the seed's snake_case
(--model_theta); --config FILE (YAML or JSON, same keys) sets defaults that flags override.
Errors a user can cause print one line and exit 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from .check.cli import add_parser as add_check
from .flags import GROUPS, add_config_flags
from .pipeline.config import GenerateConfig


def _add_generate(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("generate", help="sample a dataset into training records",
                       description="Turn a prompt dataset into mixture-sampled training data (JSONL records "
                       "+ diagnostics), resumable after a crash or Ctrl-C.",
                       argument_default=argparse.SUPPRESS, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML or JSON file with any of the options below (flags override it)")
    groups = add_config_flags(p, GROUPS)
    groups["output"].add_argument("--resume", action="store_false", dest="overwrite",
                                  help="resume an existing output (the default; the opposite of --overwrite)")
    return p


def _read_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--config {path}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--config {path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    if p.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:  # one line: where and what, not the parser's traceback
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(f"--config {path}:{where}: not valid YAML ({what})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--config {path}: line {e.lineno}, column {e.colno}: not valid JSON ({e.msg}); "
                             "YAML files need a .yaml or .yml suffix") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a mapping of option names to values")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    known = {f.name for f in fields(GenerateConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--config {path}: unknown keys {unknown}; see `qstar generate --help`")
    return data


def build_config(ns: argparse.Namespace) -> GenerateConfig:
    values = vars(ns).copy()
    values.pop("command", None)
    cfg_file = values.pop("config", None)
    merged = _read_config(cfg_file) if cfg_file else {}
    merged.update(values)
    return GenerateConfig(**merged)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qstar", description="Sample from the per-token geometric mixture of two "
                                 "causal LMs, q ∝ pi_theta^a * pi_t^(1-a).")
    ap.add_argument("--version", action="version", version="qstar 0.1.0")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    _add_generate(sub)
    add_check(sub)
    sub.add_parser("demo", help="the whole job on SmolLM2-135M (teacher sees the solution); see `qstar demo --help`")
    from .analysis.cli import add_parsers

    add_parsers(sub)
    return ap


def _run_generate(ns) -> int:
    try:
        cfg = build_config(ns)  # every flag checked here, before torch or a model loads
    except ValueError as e:
        print(f"qstar generate: error: {e}", file=sys.stderr)
        return 2
    from .pipeline import data, run, store
    from .pipeline.errors import RunError

    try:
        return run.run_generate(cfg)
    except (ValueError, OSError, RunError, data.DataError, store.ResumeError) as e:
        print(f"qstar generate: error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 a check failed, 2 bad input, 3 check had too few draws, 130 Ctrl-C."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv)
    except KeyboardInterrupt:  # while models load, or a second Ctrl-C: one line, no traceback
        what = argv[0] if argv and argv[0] in ("generate", "check", "demo", "analyze", "report") else "qstar"
        hint = ("; records written so far are kept: rerun the same command to resume"
                if what in ("generate", "demo") else "")
        print(f"\n[qstar] {what} interrupted{hint}", file=sys.stderr, flush=True)
        return 130


def _main(argv: list[str]) -> int:
    if argv[:1] == ["demo"]:  # its own flags: `qstar demo --help`
        from .demo import main as demo_main

        return demo_main(argv[1:])
    ap = parser()
    ns = ap.parse_args(argv)
    if ns.command == "generate":
        return _run_generate(ns)
    if ns.command == "check":
        from .check.cli import run as run_check

        return run_check(ns)
    if ns.command in ("analyze", "report"):
        from .analysis import cli as analysis_cli

        return analysis_cli.run(ns)
    ap.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
