"""The output files and resume: the JSONL output is the checkpoint.

Lines are appended whole and flushed; on restart a torn last line is cut off, done
(sample_idx, n) keys are skipped, and diagnostics lines whose record never landed are dropped
(diagnostics are written before their record, so a record always has its diagnostics). The
manifest <stem>.manifest.json (written atomically) holds the config hash; a changed config is
refused with the differing keys listed.
Not for: what a line holds (records.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path


class ResumeError(ValueError):
    """The output exists but cannot be resumed with this config: the message says what to do."""


def paths(output: str) -> dict[str, Path]:
    out = Path(output).expanduser()
    stem = out.with_suffix("") if out.suffix in (".jsonl", ".parquet", ".json") else out
    jsonl = out if out.suffix == ".jsonl" else stem.with_suffix(".jsonl")
    return dict(output=jsonl, diagnostics=Path(f"{stem}.diagnostics.jsonl"),
                manifest=Path(f"{stem}.manifest.json"), skipped=Path(f"{stem}.skipped.jsonl"),
                parquet=stem.with_suffix(".parquet"))


def config_hash(hashed: dict) -> str:
    return hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def repair(path: Path) -> list[dict]:
    """Valid lines of a JSONL file; a torn last line (crash mid-write) is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    good_end, rows = 0, []
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
        good_end += len(line)
    if good_end != len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return rows


def check_writable(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=".qstar-probe-", delete=True)
        probe.close()
    except OSError as e:
        raise ResumeError(f"output directory {parent} is not writable ({e.strerror}); choose another --output") from e


def prepare(cfg, hashed: dict) -> tuple[dict[str, Path], set[tuple[int, int]]]:
    """Set up the files for this run; return the paths and the (sample_idx, n) keys already done."""
    p = paths(cfg.output)
    check_writable(p["output"])
    if cfg.overwrite:
        for f in p.values():
            f.unlink(missing_ok=True)
    h = config_hash(hashed)
    if p["output"].exists() or p["manifest"].exists():
        if not p["manifest"].exists():
            raise ResumeError(f"{p['output']} exists but has no {p['manifest'].name}: it is not a qstar run. "
                              "Use --overwrite to replace it, or another --output")
        old = json.loads(p["manifest"].read_text())
        if old.get("config_hash") != h:
            diff = sorted(k for k in set(old.get("config", {})) | set(hashed)
                          if old.get("config", {}).get(k) != hashed.get(k))
            shown = "; ".join(f"{k}: {old.get('config', {}).get(k)!r} -> {hashed.get(k)!r}" for k in diff)
            raise ResumeError(f"{p['output']} was made with a different config ({shown}). "
                              "Use the same settings to resume, --overwrite to start over, or another --output")
    done = {(r["sample_idx"], r["n"]) for r in repair(p["output"]) if "sample_idx" in r and "n" in r}
    if p["diagnostics"].exists():
        keep = [r for r in repair(p["diagnostics"]) if (r.get("sample_idx"), r.get("n")) in done]
        write_atomic(p["diagnostics"], "".join(json.dumps(r) + "\n" for r in keep))
    manifest = dict(config_hash=h, config=hashed, updated=time.strftime("%Y-%m-%dT%H:%M:%S"),
                    qstar_version="0.1.0")
    write_atomic(p["manifest"], json.dumps(manifest, indent=1, default=str))
    return p, done


class Appender:
    """Whole-line appends, flushed per line (a SIGKILL loses at most the line being written)."""

    def __init__(self, path: Path | None):
        self.path, self.f = path, None  # opened on the first line: no empty files

    def write(self, obj: dict) -> None:
        if self.path is None:
            return
        if self.f is None:
            self.f = open(self.path, "a", encoding="utf-8")
        self.f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.f.flush()

    def close(self) -> None:
        if self.f:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()


def write_parquet(jsonl: Path, dest: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = repair(jsonl)
    table = pa.Table.from_pylist([{k: (json.dumps(v) if isinstance(v, (dict, list)) and k == "prompt_t" else v)
                                   for k, v in r.items()} for r in rows])
    tmp = dest.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, dest)
