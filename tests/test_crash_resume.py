"""Crash safety for real: `qstar generate` subprocesses SIGKILLed at random moments, then resumed
to the end; and Ctrl-C (SIGINT) finishing the samples in hand and exiting 130."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_pipeline import ROWS, write_jsonl

# they spawn processes (and a Ray instance): under `pytest -n 2` (make test) one worker runs them in turn
pytestmark = pytest.mark.xdist_group("processes")

ROOT = Path(__file__).resolve().parents[1]


def cmd(pair_dirs, ds, out, tokens=120):
    return [sys.executable, "-m", "engine.cli", "generate", "--model-theta", pair_dirs[0], "--model-t", pair_dirs[1],
            "--dataset", str(ds), "--output", str(out), "--n", "2", "--max-new-tokens", str(tokens), "--ignore-eos",
            "--batch-size", "2", "--threads", "1", "--quiet", "--save-token-stats"]


def start(args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_files(out: Path, complete: bool, tokens=120):
    keys = []
    for line in out.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):  # only a torn last line may be incomplete; resume cuts it
            assert not complete
            continue
        r = json.loads(line)
        keys.append((r["sample_idx"], r["n"]))
        assert len(r["token_ids"]) == r["num_tokens"] == tokens
    assert len(keys) == len(set(keys)), "a key was written twice"
    if complete:
        assert sorted(keys) == [(i, j) for i in range(10) for j in range(2)]
        diag = [json.loads(x) for x in out.with_suffix(".diagnostics.jsonl").read_text().splitlines()]
        assert sorted((d["sample_idx"], d["n"]) for d in diag) == sorted(keys)
    return keys


def test_sigkill_at_random_moments_then_resume(pair_dirs, tmp_path):
    rows = [dict(r, problem=f"{r['problem']} (variant {k})", id=f"{r['id']}-{k}") for k in range(2) for r in ROWS]
    ds = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "o.jsonl"
    rng = random.Random(7)
    seen = 0
    for _ in range(4):
        p = start(cmd(pair_dirs, ds, out))
        deadline = time.time() + 60
        while time.time() < deadline and p.poll() is None:  # kill once it is writing records
            if out.exists() and out.stat().st_size > 0:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        p.send_signal(signal.SIGKILL)
        p.wait()
        seen = len(check_files(out, complete=False))
    assert 0 < seen < 20, "the kills should land mid-run"
    p = start(cmd(pair_dirs, ds, out))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    check_files(out, complete=True)


def test_sigint_finishes_samples_in_hand_and_prints_resume(pair_dirs, tmp_path):
    ds = write_jsonl(tmp_path / "d.jsonl", ROWS + [dict(r, id=r["id"] + "b") for r in ROWS])
    out = tmp_path / "o.jsonl"
    p = start(cmd(pair_dirs, ds, out))
    deadline = time.time() + 60
    while time.time() < deadline and not (out.exists() and out.stat().st_size > 0):
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "interrupted; resume with:" in err and "--output" in err
    keys = check_files(out, complete=False)
    assert 0 < len(keys) < 20 and out.read_text().endswith("\n")  # whole lines only
    p = start(cmd(pair_dirs, ds, out))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    check_files(out, complete=True)


def test_second_sigint_stops_at_once_and_loses_nothing(pair_dirs, tmp_path):
    """Two Ctrl-Cs: no traceback, exit 130, only whole lines on disk (records flushed and closed),
    every record with its diagnostics, and the resume finishes the run."""
    ds = write_jsonl(tmp_path / "d.jsonl", ROWS)
    out = tmp_path / "o.jsonl"
    p = start(cmd(pair_dirs, ds, out, tokens=60))
    deadline = time.time() + 60
    while time.time() < deadline and not (out.exists() and out.stat().st_size > 0):
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "interrupted; resume with:" in err
    keys = check_files(out, complete=False, tokens=60)
    assert 0 < len(keys) < 10 and out.read_text().endswith("\n")
    diag = [json.loads(x) for x in out.with_suffix(".diagnostics.jsonl").read_text().splitlines()]
    assert set(keys) <= {(d["sample_idx"], d["n"]) for d in diag}
    p = start(cmd(pair_dirs, ds, out, tokens=60))
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert sorted(check_files(out, complete=False, tokens=60)) == [(i, j) for i in range(5) for j in range(2)]
