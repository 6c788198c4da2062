"""The output files and resume: the JSONL output is the checkpoint.

Lines are appended whole and flushed; on restart a torn last line is cut off, done
(sample_idx, n) keys are skipped, and diagnostics lines whose record never landed are dropped
(diagnostics are written before their record, so a record always has its diagnostics). The
manifest <stem>.manifest.json (written atomically) holds the config hash; a changed config is
refused with the differing keys listed. The manifest is written just before the first record of
a run lands, so a run that fails earlier (a wrong field, model path or split) leaves nothing that
blocks the corrected rerun; a manifest with no records beside it guards nothing and is replaced.
The skipped file lists the rows the latest run skipped: each run writes it afresh.
Every file is created with the usual permissions (0666 less the umask), temp files included.
Not for: what a line holds (records.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
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
                parquet=stem.with_suffix(".parquet"), summary=Path(f"{stem}.summary.json"))


def config_hash(hashed: dict) -> str:
    return hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_atomic(path: Path, text: str) -> None:
    """Temp file + rename. Not tempfile.mkstemp: its 0600 would stick to the file the user reads."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def check_output(output: str, p: dict[str, Path]) -> None:
    """--output must name a file: a directory there would get <dir>.jsonl written beside it."""
    for path in (Path(output).expanduser(), p["output"]):
        if path.is_dir():
            raise ResumeError(f"--output {output} is a directory; name the records file, "
                              f"e.g. --output {Path(output) / 'out.jsonl'}")
    check_writable(p["output"])


def check_writable(path: Path) -> None:
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=".qstar-probe-", delete=True)
        probe.close()
    except OSError as e:
        raise ResumeError(f"output directory {parent} is not writable ({e.strerror}); choose another --output") from e


def prepare(cfg, hashed: dict) -> tuple[dict[str, Path], set[tuple[int, int]]]:
    """Check the files for this run (nothing is written but repairs); return the paths and the
    (sample_idx, n) keys already done. A changed config is refused only where records exist."""
    p = paths(cfg.output)
    check_output(cfg.output, p)
    if cfg.overwrite:
        for f in p.values():
            f.unlink(missing_ok=True)
    done = set()
    if p["output"].exists():
        if not p["manifest"].exists():
            raise ResumeError(f"{p['output']} exists but has no {p['manifest'].name}: it is not a qstar run. "
                              "Use --overwrite to replace it, or another --output")
        done = {(r["sample_idx"], r["n"]) for r in repair(p["output"]) if "sample_idx" in r and "n" in r}
        if done:  # records to protect (a torn first line is none)
            _check_manifest(p, hashed)
    if p["diagnostics"].exists():
        keep = [r for r in repair(p["diagnostics"]) if (r.get("sample_idx"), r.get("n")) in done]
        write_atomic(p["diagnostics"], "".join(json.dumps(r) + "\n" for r in keep))
    return p, done


def _check_manifest(p: dict[str, Path], hashed: dict) -> None:
    try:
        old = json.loads(p["manifest"].read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResumeError(f"{p['manifest']} is not valid JSON ({e}): use --overwrite to start over, "
                          "or another --output") from None
    if old.get("config_hash") != config_hash(hashed):
        was = old.get("config", {})
        diff = sorted(k for k in set(was) | set(hashed) if was.get(k) != hashed.get(k))
        shown = "; ".join(f"{k}: {was.get(k)!r} -> {hashed.get(k)!r}" for k in diff)
        raise ResumeError(f"{p['output']} was made with a different config ({shown}). "
                          "Use the same settings to resume, --overwrite to start over, or another --output")


def check_resolved(p: dict[str, Path], facts: dict) -> None:
    """Settings resolved only once the models are loaded (speculative's draft="auto" -> the side
    with fewer parameters): a resume must resolve them as the run it continues did."""
    if not p["manifest"].exists():
        return
    try:
        old = json.loads(p["manifest"].read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return  # prepare() has judged the manifest already
    diff = {k: (old[k], v) for k, v in facts.items() if k in old and old[k] != v}
    if diff:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise ResumeError(f"{p['output']} was made with a different resolved setting ({shown}): the models at "
                          "these paths changed size; pass --draft explicitly, --overwrite to start over, or "
                          "another --output")


def write_manifest(p: dict[str, Path], hashed: dict, extra: dict | None = None) -> None:
    """The resume guard; written (atomically) just before the run's first record lands.
    extra: execution facts outside the hash (e.g. cuda_graphs: "off (<reason>)")."""
    manifest = dict(config_hash=config_hash(hashed), config=hashed, updated=time.strftime("%Y-%m-%dT%H:%M:%S"),
                    qstar_version="0.1.0", **(extra or {}))
    write_atomic(p["manifest"], json.dumps(manifest, indent=1, default=str))


def take_skipped(p: dict[str, Path]) -> list[dict]:
    """The previous run's skipped-file lines; the file is removed (this run writes it afresh)."""
    rows = repair(p["skipped"])
    p["skipped"].unlink(missing_ok=True)
    return rows


class Appender:
    """Whole-line appends, flushed per line (a SIGKILL loses at most the line being written).
    before_open: called once before the file is first opened (the manifest before the records)."""

    def __init__(self, path: Path | None, before_open=None):
        self.path, self.f, self.before_open = path, None, before_open  # opened on the first line: no empty files
        self.lines = 0

    def write(self, obj: dict) -> None:
        if self.path is None:
            return
        if self.f is None:
            if self.before_open is not None:
                self.before_open()
            self.f = open(self.path, "a", encoding="utf-8")
        self.f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self.f.flush()
        self.lines += 1

    def close(self) -> None:
        if self.f:
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            self.f = None


def write_parquet(jsonl: Path, dest: Path) -> list[str]:
    """<stem>.parquet from the JSONL records. A column whose values mix types (a dataset's `answer`
    holding 42 and "Paris") is written as strings; returns the names of such columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{k: (json.dumps(v) if isinstance(v, (dict, list)) and k == "prompt_t" else v) for k, v in r.items()}
            for r in repair(jsonl)]
    names = list(dict.fromkeys(k for r in rows for k in r))
    columns, as_text = {}, []
    for k in names:
        values = [r.get(k) for r in rows]
        try:
            columns[k] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
            columns[k] = pa.array([_as_text(v) for v in values], type=pa.string())
            as_text.append(k)
    tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}.tmp")
    try:
        pq.write_table(pa.table(columns) if columns else pa.table({}), tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return as_text


def _as_text(v):
    if v is None or isinstance(v, str):
        return v
    return json.dumps(v, ensure_ascii=False)
