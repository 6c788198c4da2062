"""Dataset rows in, per-side prompts out.

Sources: a .jsonl/.json/.parquet/.csv file, a local dataset dir (save_to_disk or data files), or a
hub dataset. Prompt fields are auto-detected (messages, prompt, question, problem,
instruction(+input), query) unless --prompt-field, templates or an adapter say otherwise.
Not for: tokenising (run.py) or writing records (records.py).
"""
from __future__ import annotations

import csv
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

PROMPT_FIELDS = ("messages", "prompt", "question", "problem", "instruction", "query")
ID_FIELDS = ("id", "sample_id", "uid")


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


def load_rows(dataset: str, split: str = "train", subset: str | None = None,
              num_samples: int | None = None) -> list[dict]:
    p = Path(dataset).expanduser()
    if p.is_file():
        rows = _read_file(p)
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
        raise DataError(f"cannot load dataset {dataset!r} ({where}): {type(e).__name__}: {e}") from e
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


def _template(tpl: str, row: dict) -> str:
    try:
        text = tpl.format_map(row)
    except KeyError as e:
        raise RowError(f"missing field {e.args[0]!r} for the template") from None
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
