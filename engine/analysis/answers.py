"""Verifiable rewards: a response's final numeric answer, compared with the record's reference.

The number rule (docs/analysis.md, "Answers"), first match wins:
  1. the last `\\boxed{...}` (LaTeX; `\\frac{a}{b}` inside it reads as a/b);
  2. the last GSM8K marker `#### X`;
  3. the last "answer is X" / "answer: X" / "final answer = X" where X comes right after the
     marker (spaces, `*`, `$`, `(` between them are fine: "The answer is twelve, 4 + 8 = 12"
     falls through to rule 4);
  4. the last number anywhere in the response.
A number may carry a sign (`-`, `−`), thousands commas (`1,234`), a decimal part, a leading
`$`, a trailing `%` or unit word (dropped), or be a fraction `a/b`. The reference goes through
the same rule, so a GSM8K solution ending in `#### 72` and a bare `72` both read as 72.
Correct means |answer − reference| ≤ 1e-6·max(1, |reference|); no number at all is wrong.

Other tasks plug in a hook, `--reward-hook module:function` (or `path/to/file.py:function`):
`function(response: str, reference) -> bool | float in [0, 1]`.
Not for: the importance-sampling estimates (importance.py), reading files (cli.py).
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import importance

ANSWER_FIELDS = ("answer", "original_answer")  # auto-detected reference columns, in this order
TOLERANCE = 1e-6
LEAD = " \t*_($\"'"  # what may sit between a marker and its number (markdown bold, a $, a quote)

_NUM = r"[-−]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s?/\s?\d+(?:\.\d+)?)?|[-−]?\.\d+"
NUMBER = re.compile(rf"(?<![\w.])(?:{_NUM})")
FRAC = re.compile(r"\\[dt]?frac\s*\{\s*([^{}]+?)\s*\}\s*\{\s*([^{}]+?)\s*\}")
GSM_MARKER = re.compile(r"####\s*")
ANSWER_MARKER = re.compile(r"answer\s*(?:is|was|=|:)\s*(?:is\s*)?:?", re.I)


@dataclass(frozen=True)
class Extracted:
    value: float | None  # None: no number found
    rule: str            # boxed | gsm_marker | answer_marker | last_number | none
    text: str | None     # the matched characters, for the report


def parse_number(text: str) -> float | None:
    """'−1,234.5' -> -1234.5, '$18' -> 18, '3/4' -> 0.75; None when it is not a number."""
    s = text.replace("−", "-").replace("$", "").replace(",", "").replace(" ", "")
    try:
        if "/" in s:
            num, den = s.split("/")
            return float(num) / float(den) if float(den) else None
        return float(s)
    except ValueError:
        return None


def _first_number(text: str) -> tuple[float, str] | None:
    text = FRAC.sub(lambda m: f"{m.group(1)}/{m.group(2)}", text)
    for m in NUMBER.finditer(text):
        v = parse_number(m.group(0))
        if v is not None:
            return v, m.group(0).strip()
    return None


def _leading_number(text: str) -> tuple[float, str] | None:
    """The number that starts `text` (after LEAD characters; a `$` may follow a sign), else None."""
    m = NUMBER.match(text.lstrip(LEAD))
    v = parse_number(m.group(0)) if m else None
    return (v, m.group(0).strip()) if v is not None else None


def _last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...}, braces balanced (\\boxed{\\frac{1}{2}} keeps its inner braces)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return text[i:]  # unclosed (a response cut at max tokens): what there is


def extract_answer(text: str | None) -> Extracted:
    """The final numeric answer of a response by the rule in the module docstring."""
    text = text or ""
    boxed = _last_boxed(text)
    if boxed is not None and (hit := _first_number(boxed)):
        return Extracted(hit[0], "boxed", hit[1])
    for rule, marker in (("gsm_marker", GSM_MARKER), ("answer_marker", ANSWER_MARKER)):
        for m in reversed(list(marker.finditer(text))):
            if hit := _leading_number(text[m.end():]):
                return Extracted(hit[0], rule, hit[1])
    last = None
    for m in NUMBER.finditer(FRAC.sub(lambda m: f"{m.group(1)}/{m.group(2)}", text)):
        if (v := parse_number(m.group(0))) is not None:
            last = (v, m.group(0).strip())
    return Extracted(last[0], "last_number", last[1]) if last else Extracted(None, "none", None)


def is_correct(answer: float | None, reference: float | None) -> bool:
    if answer is None or reference is None or not math.isfinite(answer):
        return False
    return abs(answer - reference) <= TOLERANCE * max(1.0, abs(reference))


def number_reward(response: str, reference) -> float:
    """The default grader: 1.0 when the response's final number equals the reference's, else 0.0."""
    ref = reference if isinstance(reference, (int, float)) else extract_answer(str(reference)).value
    return float(is_correct(extract_answer(response).value, ref))


def load_hook(spec: str) -> Callable:
    """'pkg.module:function' or 'path/to/file.py:function' -> the function."""
    mod_name, sep, fn_name = spec.rpartition(":")
    if not sep or not mod_name or not fn_name:
        raise ValueError(f"--reward-hook {spec!r}: expected 'module:function' or 'path/to/file.py:function'")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name).expanduser()
            if not path.is_file():
                raise ValueError(f"--reward-hook {spec!r}: no such file {path}")
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except ImportError as e:
        raise ValueError(f"--reward-hook {spec!r}: cannot import {mod_name} ({e}); check the module path") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"--reward-hook {spec!r}: {mod_name} has no function {fn_name}")
    return fn


def reward_of(grader: Callable, response: str, reference, where: str) -> float:
    """A grader's value as a float in [0, 1]; anything else is an error naming the record."""
    r = grader(response, reference)
    if isinstance(r, bool) or (isinstance(r, (int, float)) and 0 <= r <= 1):
        return float(r)
    raise ValueError(f"the reward hook returned {r!r} for {where}: it must return a bool or a number in [0, 1]")


def answer_field(records: list[dict], requested: str | None) -> str | None:
    """The reference column: --answer-field when given (it must exist), else the first of
    ANSWER_FIELDS that every record has; None when there is none (no answer step)."""
    if requested:
        missing = sum(requested not in r for r in records)
        if missing:
            have = sorted({k for r in records[:5] for k in r if k.startswith("original_") or k == "answer"})
            raise ValueError(f"--answer-field {requested}: {missing} of {len(records)} records lack it "
                             f"(reference-like fields present: {have or 'none'})")
        return requested
    return next((f for f in ANSWER_FIELDS if records and all(r.get(f) is not None for r in records)), None)


def response_text(rec: dict) -> str:
    msgs = rec.get("messages") or []
    last = msgs[-1] if msgs and isinstance(msgs[-1], dict) else {}
    return str(last.get("content") or "") if last.get("role") == "assistant" else ""


def _reference_value(reference) -> float | None:
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        return float(reference)
    return extract_answer(str(reference)).value


def answer_step(records: list[dict], field: str, hook: str | None = None,
                min_ess: float = importance.MIN_ESS) -> tuple[dict, dict]:
    """(summary, per-sample) of grading every record against `field`, with the IS estimates of
    pi_theta's accuracy from the records' `seq_logw_theta`. per-sample: 'idx/n' -> answer, reward."""
    grader = load_hook(hook) if hook else None
    rewards, per, no_answer, bad_ref = [], {}, 0, 0
    for rec in records:
        key, text, ref = f"{rec.get('sample_idx')}/{rec.get('n')}", response_text(rec), rec.get(field)
        if grader is not None:
            r, shown = reward_of(grader, text, ref, f"sample {key}"), None
        else:
            got, ref_v = extract_answer(text), _reference_value(ref)
            r, shown = float(is_correct(got.value, ref_v)), got.text
            no_answer += got.value is None
            bad_ref += ref_v is None
        rewards.append(r)
        per[key] = {"answer": shown, "reference": ref, "reward": r}
    has_logw = all("seq_logw_theta" in rec for rec in records)
    est = importance.estimates([rec.get("seq_logw_theta") for rec in records] if has_logw else [], rewards, min_ess)
    if not has_logw:  # an old records file: no sequence weights, so no estimate of pi_theta
        est.update(theta_accuracy_is=importance.NO_ESTIMATE, theta_accuracy_snis=importance.NO_ESTIMATE,
                   seq_ess=None, seq_ess_norm=None, ess_warning="the records have no seq_logw_theta: no IS estimate")
    notes = [f"{bad_ref} references have no number the rule can read"] if bad_ref else []
    return {"field": field, "grader": f"hook {hook}" if hook else "number rule", "correct": float(sum(rewards)),
            "no_answer": no_answer if grader is None else None, "notes": notes, **est}, per
