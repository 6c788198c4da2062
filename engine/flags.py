"""One command-line flag per GenerateConfig field, in its help group (`qstar generate` and
`qstar check` share them). No torch, no models: building a parser costs nothing.

Not for: what the flags mean (pipeline/config.py) or running a command (cli.py, check/cli.py).
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from .pipeline.config import GenerateConfig

GROUPS = {"models": "models", "data": "data and prompts", "mixture": "mixture (alpha is the weight on pi_theta)",
          "sampling": "sampling (acts on q after alpha is solved)", "output": "output and resume",
          "execution": "execution (not part of the resume config)"}


def _flags(name: str) -> list[str]:
    kebab = "--" + name.replace("_", "-")
    return [kebab] if "_" not in name else [kebab, "--" + name]


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
