"""`qstar check`: passes on the tiny pairs for every method with the controls on, fails (exit 1,
the failing row named) when the sampler is deliberately biased, refuses bad input (exit 2)."""
import json
import math

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
    import engine.stepper as core  # where the decode step calls qstar_kernels.step

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
    import engine.stepper as core  # where the decode step calls qstar_kernels.step

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
    (["--top-p", "0"], "--top-p must lie in (0, 1] (1 = off), got 0.0"),
    (["--temperature", "-1"], "--temperature must be >= 0 (0 = greedy), got -1.0"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
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


V_SIM = 49152


def _shape(name: str) -> torch.Tensor:
    """Three first-token shapes: one token with ~96% of the mass; a flat tail (logits N(0, 3^2):
    ~50 cells expect >= 5 of 2,000 draws, thousands expect 0.05-5); Zipf (p ~ 1/rank^1.1)."""
    g = torch.Generator().manual_seed(7)
    if name == "sharp":
        lg = torch.randn(V_SIM, generator=g, dtype=torch.float64) * 2
        lg[3] += 14
    elif name == "flat":
        lg = torch.randn(V_SIM, generator=g, dtype=torch.float64) * 3
    else:
        lg = -1.1 * torch.log(torch.arange(1, V_SIM + 1, dtype=torch.float64))
    return lg


def _draws(probs: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """Exact draws (inverse CDF), counted per cell."""
    cdf = torch.cumsum(probs, 0)
    u = torch.rand(n, generator=g, dtype=torch.float64) * float(cdf[-1])
    idx = torch.searchsorted(cdf, u, right=True).clamp_max(probs.numel() - 1)
    return torch.bincount(idx, minlength=probs.numel()).double()


@pytest.mark.parametrize("shape", ["sharp", "flat", "zipf"])
def test_chi_square_false_alarm_rate(shape):
    """Exact draws: the test rejects at p < 0.01 about 1% of the time on every shape (the old
    pooling, which left thousands of thin cells unpooled, rejected 40% on the flat tail)."""
    from engine.check import chi_square

    probs = torch.softmax(_shape(shape), 0)
    g = torch.Generator().manual_seed(1)
    trials, n = 240, 2000
    ps = [chi_square(_draws(probs, n, g), probs, n) for _ in range(trials)]
    assert all(c.valid for c in ps)
    rate = sum(c.p < 0.01 for c in ps) / trials
    assert 0 <= rate <= 0.025, (shape, rate, ps[0].dof)
    assert sum(c.p < 0.5 for c in ps) / trials > 0.35, "p-values pile up near 1: the test is too lenient"


def test_chi_square_detects_a_slightly_wrong_temperature():
    """A sampler at T = 0.9 instead of 1 on the flat-tailed row, 5,000 draws: detected (p below
    the default --p-min 1e-3) in at least 19 of 20 seeds."""
    from engine.check import chi_square

    lg = _shape("flat")
    probs, wrong = torch.softmax(lg, 0), torch.softmax(lg / 0.9, 0)
    detected = sum(chi_square(_draws(wrong, 5000, torch.Generator().manual_seed(s)), probs, 5000).p < 1e-3
                   for s in range(20))
    assert detected >= 19, detected


def test_chi_square_says_how_many_draws_it_needs():
    from engine.check import chi_square, draws_needed

    probs = torch.softmax(_shape("sharp"), 0)
    need = draws_needed(probs)
    assert need > 10  # the top token takes ~96%: the rest needs ~5 / 0.04 draws
    g = torch.Generator().manual_seed(0)
    short, enough = chi_square(_draws(probs, need - 1, g), probs, need - 1), chi_square(_draws(probs, need, g), probs, need)
    assert not short.valid and short.needed == need and math.isnan(short.p)
    assert enough.valid and enough.dof >= 1
    assert draws_needed(torch.tensor([0.0, 1.0, 0.0])) == 0  # one possible token: nothing to bin
    assert draws_needed(torch.full((64,), 1 / 64, dtype=torch.float64)) == 10  # two bins of 5


def test_check_too_few_draws_has_its_own_result_and_exit_code(pair_dirs, tmp_path, capsys):
    out = tmp_path / "check.json"
    rc = main(["check", "--model-theta", pair_dirs[0], "--model-t", pair_dirs[1], "--draws", "3", "--samples", "1",
               "--max-new-tokens", "4", "--threads", "1", "--json", str(out)])
    text = capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert rc == 3, text
    assert "RESULT: not enough draws:" in text and "PASS" not in text.splitlines()[-1]
    need = rep["draws_needed"]
    assert need > 3 and f"not enough draws: {need} needed" in text
    assert rep["exit_code"] == 3 and not rep["passed"]
