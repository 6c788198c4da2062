"""Dataset rows in, per-side prompts out.

Sources: a .jsonl/.json/.parquet/.csv file, a local dataset dir (save_to_disk or data files), or a
hub dataset. A name that looks like a local path (a data-file suffix, a leading / . ~, or more
than one separator) and does not exist fails at once, without asking the Hub. Prompt fields are
auto-detected (messages, prompt, question, problem, instruction(+input), query) unless
--prompt-field, templates or an adapter say otherwise. Templates and --id-field are checked
against the columns before any model loads; a row that lacks a column is skipped and reported.
In a template string (never in the field values put into it) \\n, \\t and \\\\ are a newline,
a tab and one backslash, so a shell-quoted '{problem}\\n\\n{solution}' means what it says.
Not for: tokenising (run.py) or writing records (records.py).
"""
from __future__ import annotations

import csv
import importlib
import json
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path

PROMPT_FIELDS = ("messages", "prompt", "question", "problem", "instruction", "query")
ID_FIELDS = ("id", "sample_id", "uid")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".tsv", ".txt", ".arrow", ".gz", ".zst")
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
_ESCAPE = re.compile(r"\\([\\nt])")


class DataError(ValueError):
    """A dataset problem that stops the run (bad path, no prompt field): the message says what to do."""


class RowError(ValueError):
    """One row that cannot be used: reported and skipped."""


def _read_file(p: Path) -> list[dict]:
    suffix = p.suffix.lower()
    if suffix == ".jsonl":
        rows = []
        with open(p, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{p}:{i}: not valid JSON ({e.msg})") from e
        return rows
    if suffix == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            lists = [v for v in data.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise DataError(f"{p}: a .json dataset must be a list of rows or hold exactly one list")
            data = lists[0]
        return data
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(p).to_pylist()
    if suffix == ".csv":
        with open(p, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    raise DataError(f"{p}: unsupported file type {suffix!r}; use .jsonl, .json, .parquet or .csv")


def looks_local(dataset: str) -> bool:
    """A path, not a hub name (hub names are `name` or `owner/name`, with no data-file suffix)."""
    d = dataset.replace("\\", "/")
    return (d.lower().endswith(FILE_SUFFIXES) or d.startswith(("/", ".", "~")) or d.count("/") > 1
            or (len(d) > 1 and d[1] == ":"))


def offline() -> str | None:
    """The variable that puts the Hub offline, if one is set (then only cached datasets load)."""
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return var
    return None


def load_rows(dataset: str, split: str = "train", subset: str | None = None,
              num_samples: int | None = None) -> list[dict]:
    p = Path(dataset).expanduser()
    if p.is_file():
        rows = _read_file(p)
    elif not p.exists() and looks_local(dataset):
        raise DataError(f"cannot load dataset {dataset!r}: no such file or directory (a local path, so the Hub "
                        "was not asked)")
    else:
        rows = _load_hf(dataset, p, split, subset)
    if not all(isinstance(r, dict) for r in rows[:100]):
        raise DataError(f"{dataset}: rows must be objects (dicts of fields)")
    return rows[:num_samples] if num_samples else rows


def _load_hf(dataset: str, p: Path, split: str, subset: str | None) -> list[dict]:
    import datasets

    try:
        if p.is_dir() and any((p / f).exists() for f in ("dataset_dict.json", "state.json")):
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{dataset}: no split {split!r}; splits: {', '.join(ds)}")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(str(p) if p.is_dir() else dataset, name=subset, split=split)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; all mean "cannot load"
        where = "local dir" if p.is_dir() else "not a local file or dir; as a hub dataset"
        if not p.is_dir() and offline():
            where += f", offline ({offline()} is set: only datasets in the local cache load)"
        first = (str(e).strip().splitlines() or [""])[0]
        raise DataError(f"cannot load dataset {dataset!r} ({where}): {type(e).__name__}: {first}") from None
    return [dict(r) for r in ds]


@dataclass
class Prompts:
    theta: object         # str or messages
    t: object
    sample_id: object


def detect_field(columns: list[str], prompt_field: str | None) -> str:
    if prompt_field:
        if prompt_field not in columns:
            raise DataError(f"--prompt-field {prompt_field!r} is not a column; columns: {', '.join(columns)}")
        return prompt_field
    for f in PROMPT_FIELDS:
        if f in columns:
            return f
    raise DataError(f"no prompt field found among the columns ({', '.join(columns)}); name it with "
                    f"--prompt-field, or build prompts with --theta-template / --adapter module:function")


def _field_prompt(row: dict, field: str):
    value = row.get(field)
    if field == "instruction" and row.get("input"):
        value = f"{value}\n\n{row['input']}"
    if isinstance(value, list):  # messages: drop trailing assistant turns (the answer to be sampled)
        msgs = [m for m in value if isinstance(m, dict)]
        while msgs and msgs[-1].get("role") == "assistant":
            msgs.pop()
        if not msgs:
            raise RowError(f"field {field!r} holds no user turn")
        return msgs
    if value is None or not str(value).strip():
        raise RowError(f"empty prompt in field {field!r}")
    return str(value)


def unescape(tpl: str | None) -> str | None:
    r"""\n -> newline, \t -> tab, \\ -> one backslash, in a template string; anything else is kept."""
    if not tpl:
        return tpl
    return _ESCAPE.sub(lambda m: {"n": "\n", "t": "\t"}.get(m[1], "\\"), tpl)


def template_fields(tpl: str, flag: str) -> list[str]:
    """The columns a template reads ('{a.b[0]}' reads a); DataError for a malformed one."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(tpl) if name is not None]
    except ValueError as e:
        raise DataError(f"{flag} {tpl!r} is not a valid format string ({e}); "
                        "write a literal brace as {{ or }}") from None
    out = []
    for name in names:
        base = re.split(r"[.\[]", name, maxsplit=1)[0]
        if not base or base.isdigit():
            raise DataError(f"{flag} {tpl!r}: every placeholder must name a column, e.g. {{problem}}; "
                            f"got {{{name}}}")
        out.append(base)
    return out


def check_columns(columns: list[str], cfg) -> None:
    """Templates and --id-field against the dataset's columns: one line, before any model loads."""
    for flag, tpl in (("--theta-template", cfg.theta_template), ("--t-template", cfg.t_template)):
        if tpl and not cfg.adapter:
            for name in template_fields(unescape(tpl), flag):
                if name not in columns:
                    raise DataError(f"{flag}: {{{name}}} is not a column; columns: {', '.join(columns)}")
    if cfg.id_field and cfg.id_field not in columns:
        raise DataError(f"--id-field {cfg.id_field!r} is not a column; columns: {', '.join(columns)}")


def _template(tpl: str, row: dict) -> str:
    try:
        text = unescape(tpl).format_map(row)
    except KeyError as e:
        raise RowError(f"missing field {e.args[0]!r} for the template") from None
    except (IndexError, AttributeError, TypeError, ValueError) as e:  # '{a[0]}' on a row where a is not a list
        raise RowError(f"the template cannot be filled from this row ({type(e).__name__}: {e})") from None
    if not text.strip():
        raise RowError("the template renders an empty prompt")
    return text


def load_adapter(spec: str):
    mod, _, fn = spec.partition(":")
    if not mod or not fn:
        raise DataError(f"--adapter must look like 'module:function', got {spec!r}")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise DataError(f"cannot import adapter {spec!r}: {e}") from e


def row_id(row: dict, idx: int, id_field: str | None):
    if id_field:
        if id_field not in row:
            raise RowError(f"missing id field {id_field!r}")
        return row[id_field]
    for f in ID_FIELDS:
        if f in row and row[f] is not None and not isinstance(row[f], (list, dict)):
            return row[f]
    return idx


def make_prompts(row: dict, idx: int, cfg, field: str | None, adapter=None) -> Prompts:
    """Both sides' prompts for one row (RowError when the row cannot be used)."""
    sid = row_id(row, idx, cfg.id_field)
    if adapter is not None:
        out = adapter(row)
        if isinstance(out, dict):
            p_theta, p_t = out.get("prompt_theta"), out.get("prompt_t", out.get("prompt_theta"))
        else:
            p_theta = p_t = out
        if not p_theta:
            raise RowError("the adapter returned no prompt")
        return Prompts(p_theta, p_t, sid)
    p_theta = _template(cfg.theta_template, row) if cfg.theta_template else _field_prompt(row, field)
    p_t = _template(cfg.t_template, row) if cfg.t_template else p_theta
    return Prompts(p_theta, p_t, sid)


def original_columns(row: dict, skip: set[str]) -> dict:
    """original_<field> for every plain column (JSON-serialisable), except the prompt itself."""
    out = {}
    for k, v in row.items():
        if k in skip:
            continue
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[f"original_{k}"] = v
    return out
