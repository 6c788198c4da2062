"""`qstar check`'s flags and exit codes (no torch at import: help and bad flags cost nothing).

Not for: the checks themselves (runner.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from ..flags import GROUPS, add_config_flags
from .report import FLAG_FIELDS, PROMPTS, TOLERANCE

SUMMARY = ("qstar check --model-theta P --model-t T [--backend hf|vllm] [--cross-tokenizer] "
           "[mixture / sampling flags]")

def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("check", help="exactness self-test of a pair, backend, dtype and flags (PASS/FAIL table)",
                       description=SUMMARY + "\n\nDraws first tokens and compares them "
                       "with the exact behaviour distribution (chi-square), recomputes the recorded per-token "
                       "values of a few samples, checks the alpha equation. Exit 0 = every row PASS, 1 = a row "
                       "FAILs, 2 = bad input, 3 = too few --draws for a valid chi-square (the RESULT line "
                       "says how many are needed).",
                       argument_default=argparse.SUPPRESS, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    groups = add_config_flags(p, {k: v for k, v in GROUPS.items() if k not in ("data", "output")}, FLAG_FIELDS)
    g = p.add_argument_group("check")
    g.add_argument("--prompt", action="append", dest="prompts", default=None,
                   help="a prompt to test (repeatable; default: three built-in short prompts)")
    g.add_argument("--prompt-t", action="append", dest="prompts_t", default=None,
                   help="what pi_t sees for the matching --prompt, e.g. the problem plus a reference solution "
                   "(repeatable; default: the same prompts; --backend hf only)")
    g.add_argument("--draws", type=int, default=2000, help="first-token draws per prompt for the chi-square test")
    g.add_argument("--samples", type=int, default=2, help="full samples per prompt whose values are recomputed")
    g.add_argument("--max-new-tokens", type=int, default=32, help="response tokens per recomputed sample")
    g.add_argument("--p-min", type=float, default=1e-3, help="a first-token row fails when its p-value is below "
                   "this (an exact sampler fails a row with this probability; rerun with another --seed)")
    g.add_argument("--tolerance", type=float, default=None, help="max recompute error |got - want| / max(1, |want|) "
                   f"and alpha-equation residual (default by dtype: {TOLERANCE})")
    g.add_argument("--no-chat-template", action="store_true", default=False,
                   help="use the prompts as plain text (default: the tokenizer's chat template)")
    g.add_argument("--json", default=None, help="also write the table and the details to this JSON file")
    del groups
    return p


def _options(ns: argparse.Namespace) -> dict:
    from ..pipeline.config import GenerateConfig, check_modes, check_sampling, mixture_config

    defaults = {f: GenerateConfig.__dataclass_fields__[f].default for f in FLAG_FIELDS}
    v = {**defaults, **{k: getattr(ns, k) for k in FLAG_FIELDS if hasattr(ns, k)}}
    for name in ("model_theta", "model_t"):
        if not v[name]:
            raise ValueError(f"--{name.replace('_', '-')} is required")
    mixture = mixture_config(v["alpha_method"], v["alpha"], v["alpha_min"], v["alpha_max"], v["support_top_k"],
                             v["support_top_p"], v["force_teacher"])
    sampling = dict(temperature=v["temperature"], top_k=v["top_k"], top_p=v["top_p"], min_p=v["min_p"], seed=v["seed"],
                    speculative=v["speculative"])
    check_sampling(**sampling)  # names the flag and the value
    sampling["draft"] = v["draft"]
    for name, low in (("draws", 1), ("samples", 1), ("max_new_tokens", 1)):
        if getattr(ns, name) < low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(ns, name)}")
    if not 0 < ns.p_min < 1:
        raise ValueError(f"--p-min must lie in (0, 1), got {ns.p_min}")
    if ns.tolerance is not None and not ns.tolerance > 0:
        raise ValueError(f"--tolerance must be > 0, got {ns.tolerance}")
    check_modes(backend=v["backend"], speculative=v["speculative"], cross_tokenizer=v["cross_tokenizer"])
    return dict(model_theta=v["model_theta"], model_t=v["model_t"], backend=v["backend"], mixture=mixture,
                sampling=sampling, prompts=tuple(ns.prompts or PROMPTS), prompts_t=tuple(ns.prompts_t or ()),
                draws=ns.draws, samples=ns.samples,
                max_new_tokens=ns.max_new_tokens, p_min=ns.p_min, tolerance=ns.tolerance,
                chat_template=not ns.no_chat_template, device=v["device"], dtype=v["dtype"], threads=v["threads"],
                batch_size=v["batch_size"], cross_tokenizer=bool(v["cross_tokenizer"]))


def run(ns: argparse.Namespace) -> int:
    """Exit code: 0 every row passes, 1 a row fails, 2 bad input (one line on stderr), 3 too few
    draws for a valid first-token test (and no row fails)."""
    try:
        opts = _options(ns)
        from ..loading import quiet_libraries
        from .runner import check  # loads torch: only once the flags are known good

        quiet_libraries()
        report = check(**opts, log=lambda msg: print(msg, file=sys.stderr))
    except (ValueError, OSError) as e:
        print(f"qstar check: error: {e}", file=sys.stderr)
        return 2
    c = report.config
    print(f"qstar check: {c['model_theta']} | {c['model_t']} | backend {c['backend']} | {c['device']} {c['dtype']} "
          f"| {c['alpha_method']} | support {c['support'] or 'off'} | force_teacher {c['force_teacher'] or 'off'}"
          + (f" | speculative {c['speculative']} (draft {c['draft']})" if c.get("speculative") else ""))
    print(report.table())
    if ns.json:
        Path(ns.json).write_text(json.dumps(dict(config=report.config, passed=report.passed,
                                                 draws_needed=report.needed, exit_code=report.exit_code,
                                                 rows=[asdict(r) for r in report.rows]), indent=1, default=str))
    return report.exit_code
