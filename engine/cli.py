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
from dataclasses import MISSING, fields
from pathlib import Path

from .pipeline.config import GenerateConfig

GROUPS = {"models": "models", "data": "data and prompts", "mixture": "mixture (alpha is the weight on pi_theta)",
          "sampling": "sampling (acts on q after alpha is solved)", "output": "output and resume",
          "execution": "execution (not part of the resume config)"}


def _flags(name: str) -> list[str]:
    kebab = "--" + name.replace("_", "-")
    return [kebab] if "_" not in name else [kebab, "--" + name]


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


def add_config_flags(p: argparse.ArgumentParser, groups: dict, names=None) -> dict:
    """One flag per GenerateConfig field (of `names`, default all) in its group; returns the groups."""
    groups = {k: p.add_argument_group(v) for k, v in groups.items()}
    for f in fields(GenerateConfig):
        if names is not None and f.name not in names:
            continue
        g = groups[f.metadata["group"]]
        default = f.default if f.default is not MISSING else f.default_factory()
        help_ = f.metadata["help"] + (f" (default: {default})" if default not in (None, False, []) else "")
        if f.type in ("bool", bool):
            g.add_argument(*_flags(f.name), action="store_true", dest=f.name, help=help_)
            if default is True:
                g.add_argument(*_flags("no_" + f.name), action="store_false", dest=f.name,
                               help=f"turn off --{f.name.replace('_', '-')}")
        elif f.metadata.get("flag_type") == "append":
            g.add_argument(*_flags(f.name), action="append", dest=f.name, help=help_)
        else:
            kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(str(f.type), str)
            g.add_argument(*_flags(f.name), type=kind, dest=f.name, choices=f.metadata.get("choices"),
                           help=help_, metavar=f.name.upper() if not f.metadata.get("choices") else None)
    return groups


def _read_config(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--config {path}: no such file")
    text = p.read_text(encoding="utf-8")
    if p.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text) or {}
    else:
        data = json.loads(text)
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
    from .check import add_parser as add_check

    add_check(sub)
    sub.add_parser("demo", help="the whole job on SmolLM2-135M (teacher sees the solution); see `qstar demo --help`")
    from .analysis.cli import add_parsers

    add_parsers(sub)
    return ap


def _run_generate(ns) -> int:
    from .pipeline import data, run, store

    try:
        cfg = build_config(ns)
        quiet_libraries()
        return run.run_generate(cfg)
    except (ValueError, OSError, run.RunError, data.DataError, store.ResumeError) as e:
        print(f"qstar generate: error: {e}", file=sys.stderr)
        return 2


def quiet_libraries() -> None:
    """Our progress line is the one to read: no per-file bars from transformers/datasets."""
    try:
        from transformers.utils import logging as tlog

        tlog.disable_progress_bar()
        tlog.set_verbosity_error()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["demo"]:  # its own flags: `qstar demo --help`
        from .demo import main as demo_main

        return demo_main(argv[1:])
    ap = parser()
    ns = ap.parse_args(argv)
    if ns.command == "generate":
        return _run_generate(ns)
    if ns.command == "check":
        from .check import run as run_check

        quiet_libraries()
        return run_check(ns)
    if ns.command in ("analyze", "report"):
        from .analysis import cli as analysis_cli

        return analysis_cli.run(ns)
    ap.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
