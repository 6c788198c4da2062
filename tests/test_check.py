"""`qstar check`: passes on the tiny pairs for every method with the controls on, fails (exit 1,
the failing row named) when the sampler is deliberately biased, refuses bad input (exit 2)."""
import json

import pytest
import torch

from engine.cli import main
from qstar_kernels import METHODS

CONTROLS = ["--support-top-k", "60", "--support-top-p", "0.97", "--force-teacher", "first,special",
            "--alpha-min", "0.1", "--alpha-max", "0.9"]


@pytest.fixture(scope="module")
def boosted_t(pair_dirs, tmp_path_factory):
    """pi_t that often puts its argmax on <|im_start|> (a special token that does not end a sample)."""
    import tiny

    tok = tiny.tokenizer()
    m = tiny.model(seed=2)
    sid = tok.convert_tokens_to_ids("<|im_start|>")
    with torch.no_grad():
        m.lm_head.weight[sid] = m.lm_head.weight.mean(0) + 0.02  # a logit near the top in most states
    d = tmp_path_factory.mktemp("boosted") / "t"
    m.save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def _run(pair_dirs, *extra, model_t=None, tmp_path=None):
    out = tmp_path / "check.json"
    rc = main(["check", "--model-theta", pair_dirs[0], "--model-t", model_t or pair_dirs[1], "--draws", "600",
               "--samples", "2", "--max-new-tokens", "12", "--threads", "1", "--json", str(out), *extra])
    return rc, json.loads(out.read_text()) if out.exists() else None


@pytest.mark.parametrize("method", METHODS)
def test_check_passes_every_method_with_controls(pair_dirs, tmp_path, method, capsys):
    rc, rep = _run(pair_dirs, "--alpha-method", method, *CONTROLS, "--temperature", "0.9", "--top-p", "0.95",
                   tmp_path=tmp_path)
    text = capsys.readouterr().out
    assert rc == 0, text
    assert rep["passed"] and "RESULT: PASS" in text
    names = [r["name"] for r in rep["rows"]]
    assert sum(n.startswith("first token") for n in names) == 3
    assert any(n.startswith("recompute logp_behavior") for n in names)
    forced = next(r for r in rep["rows"] if r["name"].startswith("forced tokens have alpha = 0"))
    assert forced["detail"]["forced"] >= 6, "every sample's first token is forced"


def test_check_plain_and_special_forcing(pair_dirs, boosted_t, tmp_path, capsys):
    rc, rep = _run(pair_dirs, "--force-teacher", "special", model_t=boosted_t, tmp_path=tmp_path)
    assert rc == 0, capsys.readouterr().out
    forced = next(r for r in rep["rows"] if r["name"].startswith("forced tokens have alpha = 0"))
    assert forced["detail"]["forced"] > 0, "pi_t's argmax was never special: the test pair is too weak"


def test_check_fails_on_a_biased_sampler(pair_dirs, tmp_path, monkeypatch, capsys):
    import engine.core as core

    real = core.mix_step

    def biased(*args, **kw):  # samples at a lower temperature than it says it does
        kw["temperature"] = 0.6
        return real(*args, **kw)

    monkeypatch.setattr(core, "mix_step", biased)
    rc, rep = _run(pair_dirs, tmp_path=tmp_path)
    text = capsys.readouterr().out
    assert rc == 1, text
    failed = [r["name"] for r in rep["rows"] if not r["ok"]]
    assert any(n.startswith("first token, prompt") for n in failed), failed
    assert any(n == "recompute logp_behavior" for n in failed), failed
    assert "RESULT: FAIL" in text and "failed: first token, prompt" in text


def test_check_fails_when_recorded_values_are_wrong(pair_dirs, tmp_path, monkeypatch, capsys):
    import engine.core as core

    real = core.mix_step

    def off(*args, **kw):
        st = real(*args, **kw)
        st.alpha = st.alpha + 0.01  # the token is right, the record is not
        return st

    monkeypatch.setattr(core, "mix_step", off)
    rc, rep = _run(pair_dirs, tmp_path=tmp_path)
    failed = [r["name"] for r in rep["rows"] if not r["ok"]]
    assert rc == 1 and any(n.startswith("recompute alpha") for n in failed), failed
    assert "alpha equation (kl_symmetry)" in failed, failed
    assert not any(n.startswith("first token") for n in failed)


@pytest.mark.parametrize("args,msg", [
    (["--draws", "0"], "--draws must be >= 1"),
    (["--support-top-p", "0"], "--support-top-p must lie in (0, 1]"),
    (["--force-teacher", "last"], "force_teacher takes a comma-separated subset"),
    (["--p-min", "2"], "--p-min must lie in (0, 1)"),
    (["--top-p", "0"], "top_p must lie in (0, 1]"),
])
def test_check_bad_input_exit_2(pair_dirs, tmp_path, args, msg, capsys):
    rc = main(["check", "--model-theta", pair_dirs[0], "--model-t", pair_dirs[1], *args])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err, err


def test_check_missing_model_exit_2(capsys):
    assert main(["check", "--model-t", "x"]) == 2
    assert "--model-theta is required" in capsys.readouterr().err


def test_check_per_side_prompts(pair_dirs, tmp_path, capsys):
    rc, rep = _run(pair_dirs, "--prompt", "what is two plus two?", "--prompt-t",
                   "what is two plus two? reference solution: four.", tmp_path=tmp_path)
    assert rc == 0, capsys.readouterr().out
    assert sum(r["name"].startswith("first token") for r in rep["rows"]) == 1
    rc = main(["check", "--model-theta", pair_dirs[0], "--model-t", pair_dirs[1], "--prompt", "a", "--prompt", "b",
               "--prompt-t", "c"])
    assert rc == 2 and "--prompt-t given 1 times but --prompt 2 times" in capsys.readouterr().err


def test_chi_square_false_alarm_rate_with_a_thin_tail():
    """Exact multinomial draws from a distribution whose tail expects ~0.05 counts in all: the
    pooled test must fail about p_min of the time, not more (a thin pooled cell inflates it)."""
    from engine.check import chi_square

    g = torch.Generator().manual_seed(0)
    probs = torch.cat([torch.full((20,), 0.05 - 2.5e-6 / 2), torch.full((100,), 2.5e-7)]).double()
    probs /= probs.sum()
    n, trials, p_min = 2000, 3000, 0.01
    fails = 0
    for _ in range(trials):
        counts = torch.bincount(torch.multinomial(probs, n, replacement=True, generator=g), minlength=120).double()
        fails += chi_square(counts, probs, n)[2] <= p_min
    assert fails / trials < 2 * p_min, fails / trials
