"""`qstar check --backend vllm`: passes on the tiny vLLM pair with the mixture controls on, and
refuses per-side prompts (--prompt-t) with exit 2 and a one-line reason.

The passing run is its own process, as from a shell (as test_vllm_pipeline): `check` builds its
own vLLM engine, and a second engine in the test process would tear down the session's one. The
refusal runs in-process on the session's engine (`engine_a`, handed to `check` in place of a new
one), so it costs no engine start of its own.
"""
import json
import subprocess
import sys
from pathlib import Path

from engine.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONTROLS = ("--support-top-k", "30", "--support-top-p", "0.95", "--force-teacher", "first,special")


def test_check_passes_with_controls(pair_a, tmp_path):
    out = tmp_path / "check.json"
    argv = ["check", "--model-theta", pair_a[0], "--model-t", pair_a[1], "--backend", "vllm",
            "--alpha-method", "kl_symmetry", *CONTROLS, "--temperature", "0.9", "--top-p", "0.95",
            "--draws", "400", "--samples", "2", "--max-new-tokens", "12", "--json", str(out)]
    p = subprocess.run([sys.executable, "-c", "import sys; from engine.cli import main; sys.exit(main(sys.argv[1:]))",
                        *argv], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr[-4000:]
    assert "RESULT: PASS" in p.stdout and "backend vllm" in p.stdout, p.stdout
    rep = json.loads(out.read_text())
    c = rep["config"]
    assert rep["passed"] and c["backend"] == "vllm"
    assert (c["alpha_method"], c["support"], c["force_teacher"], c["temperature"], c["top_p"]) == \
        ("kl_symmetry", "t_top_k:30,t_top_p:0.95", "first,special", 0.9, 0.95), c
    bad = [r for r in rep["rows"] if not r["ok"]]
    assert not bad, bad
    names = [r["name"] for r in rep["rows"]]
    assert sum(n.startswith("first token, prompt") for n in names) == 3, names
    assert not any(n == "generation errors" for n in names)
    for k in ("alpha", "logq", "logp_behavior", "kl_theta", "ess_t", "entropy_q"):
        assert f"recompute {k}" in names, names
    assert "alpha equation (kl_symmetry)" in names
    forced = next(r for r in rep["rows"] if r["name"].startswith("forced tokens have alpha = 0"))
    assert forced["detail"]["forced"] >= 6, "every sample's first token is forced"


def test_check_refuses_per_side_prompts(pair_a, engine_a, monkeypatch, capsys):
    import engine.api
    import engine.check

    made = []  # check() must refuse before it builds an engine

    def session_engine(model_theta, model_t, **kw):  # the session's engine, not a second one in-process
        assert kw.get("backend") == "vllm" and (model_theta, model_t) == tuple(pair_a), kw
        made.append(kw)
        return engine_a

    monkeypatch.setattr(engine.api, "create_optimal_sampling_model", session_engine)
    monkeypatch.setattr(engine.check, "create_optimal_sampling_model", session_engine, raising=False)
    rc = main(["check", "--model-theta", pair_a[0], "--model-t", pair_a[1], "--backend", "vllm",
               "--prompt", "what is two plus two?", "--prompt-t", "what is two plus two? reference solution: four.",
               "--draws", "20", "--samples", "1", "--max-new-tokens", "2"])
    cap = capsys.readouterr()
    assert rc == 2, cap.out + cap.err
    err = cap.err.strip().splitlines()[-1]
    assert err.startswith("qstar check: error:") and "per-side prompts" in err and "--backend hf" in err, cap.err
    assert "Traceback" not in cap.err and "RESULT" not in cap.out
    assert not made, "the refusal came after an engine was built"
