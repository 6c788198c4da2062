"""`qstar generate --backend vllm` writes the same records as the hf backend.

Each run is its own process, as from a shell: an in-process vLLM engine owns process-wide
distributed state, so a second engine in the test process would tear down the session's one.
"""
import json
import math
import subprocess
import sys

ROWS = [{"problem": f"what is {i} plus {i}?", "answer": str(2 * i), "id": f"q{i}"} for i in range(4)]
STRICT = ("alpha", "alpha_mean", "alpha_std", "logq", "logp_behavior", "clamped_frac", "forced_frac", "num_tokens")
# the mixture controls ride along (they change nothing in how records are written)
CONTROLS = ("--support-top-k", "30", "--support-top-p", "0.95", "--force-teacher", "first,special")


def _run(pair, ds, out, *extra):
    argv = ["generate", "--model-theta", pair[0], "--model-t", pair[1], "--dataset", str(ds),
            "--output", str(out), "--max-new-tokens", "8", "--n", "2", "--quiet", "--save-token-stats", *extra]
    p = subprocess.run([sys.executable, "-c", "import sys; from engine.cli import main; sys.exit(main(sys.argv[1:]))",
                        *argv], capture_output=True, text=True, timeout=600)
    _run.stderr = p.stderr
    return p.returncode


def _lines(path):
    return {(r["sample_idx"], r["n"]): r for r in map(json.loads, open(path))}


def _same(key, a, b):
    """Same JSON type and structure; floats within the hf/vllm tolerance (test_vllm_exact)."""
    if isinstance(b, float) and isinstance(a, (float, int)) and not isinstance(a, bool):
        tol = 1e-4 if key in STRICT else 2e-4 * (1 + abs(b)) * 16  # sums over <= 8 tokens x 2 terms
        return math.isclose(a, b, abs_tol=tol)
    if type(a) is not type(b):
        return False
    if isinstance(b, list):
        return len(a) == len(b) and all(_same(key, x, y) for x, y in zip(a, b))
    if isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(k, a[k], b[k]) for k in b)
    return a == b


def test_records_and_diagnostics_match_hf(pair_a, tmp_path):
    ds = tmp_path / "d.jsonl"
    ds.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert _run(pair_a, ds, tmp_path / "hf.jsonl", *CONTROLS) == 0
    assert _run(pair_a, ds, tmp_path / "vllm.jsonl", "--backend", "vllm", *CONTROLS) == 0
    for suffix in (".jsonl", ".diagnostics.jsonl"):
        hf, vl = _lines(tmp_path / f"hf{suffix}"), _lines(tmp_path / f"vllm{suffix}")
        assert hf.keys() == vl.keys() and len(hf) == len(ROWS) * 2
        for k in hf:
            assert vl[k].keys() == hf[k].keys()
            bad = [f for f in hf[k] if not _same(f, vl[k][f], hf[k][f])]
            assert not bad, (k, bad, {f: (vl[k][f], hf[k][f]) for f in bad})
            assert vl[k]["forced"][0] == 1 and vl[k]["alpha"][0] == 0.0  # --force-teacher first
    assert _run(pair_a, ds, tmp_path / "vllm.jsonl", "--backend", "vllm", *CONTROLS) == 0  # resume: nothing left


def test_per_side_prompts_are_refused_before_loading(pair_a, tmp_path):
    ds = tmp_path / "d.jsonl"
    ds.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    rc = _run(pair_a, ds, tmp_path / "o.jsonl", "--backend", "vllm", "--t-template", "{problem} answer: {answer}")
    assert rc == 2
    assert "per-side prompts" in _run.stderr and "Traceback" not in _run.stderr
