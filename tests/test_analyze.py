"""`qstar analyze` on hand-written diagnostics lines with known answers, and on bad input."""
import json
import math

import numpy as np
import pytest

from engine.analysis import stats
from engine.cli import main


def diag(i, **kw):
    """A diagnostics line as records.py writes it, with neutral values unless overridden."""
    d = dict(sample_idx=i, n=0, sample_id=i, alpha_method="fixed", num_tokens=10, finish_reason="stop",
             alpha_mean=0.5, alpha_std=0.0, kl_theta_mean=1.0, kl_t_mean=1.0, ess_ratio_mean=1.0,
             ess_theta_mean=0.5, ess_t_mean=0.5, entropy_theta_mean=2.0, entropy_t_mean=2.0, clamped_frac=0.0,
             seq_logw_theta=0.0, seq_logw_t=0.0)
    d.update(kw)
    return d


def write(path, rows, tail=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return path


def analyze(capsys, *args):
    code = main(["analyze", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def summary(out_dir):
    return json.loads((out_dir / "summary.json").read_text())


def test_sample_level_pass_rates_and_distributions(tmp_path, capsys):
    alphas = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]  # 7 of 9 in [0.2, 0.8], both ends inclusive
    ess = [0.5, 0.8, 1.0, 1.2, 1.3, None, 1.1, 0.9, 2.0]     # 5 in [0.8, 1.2]; the null (inf) fails
    gaps = [0.0, 0.01, 0.049, 0.051, 0.2, 0.0, 0.0, -0.04, -0.06]  # |gap| < 0.05: 6
    rows = [diag(i, alpha_mean=a, ess_ratio_mean=e, kl_theta_mean=1.0 + g, num_tokens=i + 1)
            for i, (a, e, g) in enumerate(zip(alphas, ess, gaps))]
    f = write(tmp_path / "fixed.diagnostics.jsonl", rows)
    code, out, err = analyze(capsys, f, "--output-dir", tmp_path / "out")
    assert code == 0, err
    run = summary(tmp_path / "out")["runs"][0]
    c = run["checks"]
    assert c["level"] == "sample" and run["alpha_method"] == "fixed" and run["n_samples"] == 9
    assert c["alpha"]["pass_rate"] == pytest.approx(7 / 9) and c["alpha"]["passed"] == 7
    assert c["ess_ratio"]["pass_rate"] == pytest.approx(5 / 9) and c["ess_ratio"]["null"] == 1
    assert c["kl_gap"]["pass_rate"] == pytest.approx(6 / 9)
    # all three: rows 1 (a .2, e .8, g .01), 2 (.3, 1.0, .049), 6 (.7, 1.1, 0) and 7 (.8, .9, -.04)
    assert c["all"]["passed"] == 4
    a = run["distributions"]["sample"]["alpha"]
    assert a["mean"] == pytest.approx(0.5) and a["median"] == pytest.approx(0.5) and a["min"] == 0.1
    assert a["std"] == pytest.approx(np.std(alphas)) and a["q25"] == pytest.approx(0.3)
    length = run["distributions"]["sample"]["length"]
    assert length["mean"] == 5 and run["n_tokens"] == 45
    assert run["distributions"]["token"] is None and run["by_construction"] == []
    assert "rerun generate with --save-token-stats" in out and "checks use per-sample means" in out
    assert "77.8%" in out and "alpha_vs_position skipped" in out
    assert json.loads(out.strip().splitlines()[-1])["runs"][0]["pass_alpha"] == pytest.approx(7 / 9)
    for png in ("alpha_hist", "kl_scatter", "ess_ratio_hist", "seq_logw_hist", "method_comparison"):
        assert (tmp_path / "out" / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "out" / "alpha_vs_position.png").exists()


def test_token_level_checks_are_used_when_arrays_exist(tmp_path, capsys):
    def tok(i, alpha, ratio, kl_theta, kl_t):
        return diag(i, alpha_method="entropy", num_tokens=len(alpha), alpha_mean=float(np.mean(alpha)),
                    token_ids=list(range(len(alpha))), alpha=alpha, ess_ratio=ratio, kl_theta=kl_theta, kl_t=kl_t,
                    entropy_theta=[1.0] * len(alpha), entropy_t=[1.0] * len(alpha))

    rows = [tok(0, [0.1, 0.5, 0.9], [1.0, 1.0, 5.0], [1.0, 1.0, None], [1.0, 1.2, 1.0]),
            tok(1, [0.3, 0.7], [0.79, 1.2], [0.5, 0.5], [0.5, 0.52])]
    f = write(tmp_path / "ent.diagnostics.jsonl", rows)
    code, out, err = analyze(capsys, f, "--output-dir", tmp_path / "out")
    assert code == 0, err
    run = summary(tmp_path / "out")["runs"][0]
    c = run["checks"]
    assert c["level"] == "token" and c["alpha"]["n"] == 5
    assert c["alpha"]["pass_rate"] == pytest.approx(3 / 5)  # per-sample means (0.5, 0.5) would say 100%
    assert c["ess_ratio"]["pass_rate"] == pytest.approx(3 / 5)
    assert c["kl_gap"]["pass_rate"] == pytest.approx(3 / 5) and c["kl_gap"]["null"] == 1
    assert run["distributions"]["token"]["kl_theta"]["null"] == 1
    assert run["distributions"]["token"]["alpha"]["mean"] == pytest.approx(0.5)
    assert "check (token level)" in out and (tmp_path / "out" / "alpha_vs_position.png").exists()


@pytest.mark.parametrize("logw,expected", [
    ([0.0, 0.0, 0.0, 0.0], 1.0),
    ([0.0, None, None, None], 0.25),                                # null = a zero weight
    ([math.log(w) for w in (1, 2, 3, 4)], 100 / (4 * 30)),          # (Σw)²/(n·Σw²)
    ([1000 + math.log(w) for w in (1, 2, 3, 4)], 100 / (4 * 30)),   # exp would overflow
    ([-1e4 + math.log(w) for w in (1, 2, 3, 4)], 100 / (4 * 30)),   # exp would underflow
    ([0.0, -800.0], 0.5),
])
def test_normalised_sequence_ess_is_computed_in_log_space(logw, expected):
    assert stats.log_norm_ess(logw) == pytest.approx(expected, rel=1e-9)  # inputs near 1e4 carry ~1e-12 abs error


def test_normalised_sequence_ess_edge_cases():
    assert stats.log_norm_ess([]) is None and stats.log_norm_ess([None, None]) is None
    assert stats.log_norm_ess([5.0]) == pytest.approx(1.0)


def test_sequence_weights_in_summary(tmp_path, capsys):
    rows = [diag(i, seq_logw_theta=-500 + math.log(w), seq_logw_t=float(-i)) for i, w in enumerate((1, 2, 3, 4))]
    code, out, err = analyze(capsys, write(tmp_path / "r.diagnostics.jsonl", rows), "--output-dir", tmp_path / "o")
    assert code == 0, err
    w = summary(tmp_path / "o")["runs"][0]["seq_weights"]
    assert w["theta"]["ess_norm"] == pytest.approx(100 / 120)
    expected_t = sum(math.exp(-i) for i in range(4)) ** 2 / (4 * sum(math.exp(-2 * i) for i in range(4)))
    assert w["t"]["ess_norm"] == pytest.approx(expected_t)
    assert w["theta"]["logw"]["max"] == pytest.approx(-500 + math.log(4))
    assert "0.8333" in out


def test_comparison_marks_checks_passed_by_construction(tmp_path, capsys):
    files = []
    for method in ("fixed", "entropy", "kl_symmetry", "ess_balance"):
        rows = [diag(i, alpha_method=method, alpha_mean=0.5) for i in range(4)]
        files.append(write(tmp_path / f"{method}.diagnostics.jsonl", rows))
    code, out, err = analyze(capsys, *files, "--output-dir", tmp_path / "cmp")
    assert code == 0, err
    result = summary(tmp_path / "cmp")
    built = {r["name"]: r["by_construction"] for r in result["comparison"]}
    assert built == {"fixed": [], "entropy": [], "kl_symmetry": ["kl_gap"], "ess_balance": ["ess_ratio"]}
    notes = {r["name"]: " ".join(r["notes"]) for r in result["runs"]}
    assert "passes the KL check by construction" in notes["kl_symmetry"]
    assert "passes the ESS check by construction" in notes["ess_balance"]
    assert "== comparison" in out and "100.0%*" in out and "by construction (kl_symmetry)" in out
    assert (tmp_path / "cmp" / "method_comparison.png").exists()


def test_mixed_methods_and_clamps_are_reported(tmp_path, capsys):
    rows = [diag(0, alpha_method="kl_symmetry", clamped_frac=0.25), diag(1, alpha_method="fixed")]
    code, out, err = analyze(capsys, write(tmp_path / "m.diagnostics.jsonl", rows), "-o", tmp_path / "o")
    run = summary(tmp_path / "o")["runs"][0]
    assert code == 0 and run["alpha_method"] == "mixed" and run["alpha_methods"] == {"kl_symmetry": 1, "fixed": 1}
    assert run["clamped_frac_mean"] == pytest.approx(0.125) and "--alpha-min/--alpha-max" in out


def test_same_stem_in_two_folders_gets_distinct_names(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fa = write(tmp_path / "a" / "out.diagnostics.jsonl", [diag(0)])
    fb = write(tmp_path / "b" / "out.diagnostics.jsonl", [diag(0)])
    code, out, err = analyze(capsys, fa, fb, "--output-dir", tmp_path / "o", "--no-plots")
    assert code == 0, err
    assert [r["name"] for r in summary(tmp_path / "o")["runs"]] == ["a/out", "b/out"]
    assert not list((tmp_path / "o").glob("*.png"))


def test_default_output_dir_and_custom_thresholds(tmp_path, capsys):
    f = write(tmp_path / "run.diagnostics.jsonl", [diag(0, alpha_mean=0.9), diag(1, alpha_mean=0.5)])
    code, out, err = analyze(capsys, f, "--alpha-band", "0.4", "0.95", "--no-plots")
    assert code == 0, err
    result = summary(tmp_path / "run.analysis")
    assert result["runs"][0]["checks"]["alpha"]["pass_rate"] == 1.0 and result["thresholds"]["alpha_high"] == 0.95


def test_torn_last_line_is_skipped_with_a_warning(tmp_path, capsys):
    f = write(tmp_path / "r.diagnostics.jsonl", [diag(0), diag(1)], tail='{"sample_idx": 2, "n": 0, "alph')
    code, out, err = analyze(capsys, f, "--output-dir", tmp_path / "o", "--no-plots")
    assert code == 0 and "warning" in err and "last line 3 is incomplete" in err and "Traceback" not in err
    assert summary(tmp_path / "o")["runs"][0]["n_samples"] == 2


@pytest.mark.parametrize("case,needle", [
    ("missing", "no such file"),
    ("empty", "is empty"),
    ("only_torn", "no complete lines"),
    ("not_qstar", "is not a qstar diagnostics file"),
    ("corrupt_middle", "line 2 is not valid JSON"),
    ("not_object", "line 1 is not a JSON object"),
    ("directory", "is not a file"),
    ("bad_band", "bad thresholds"),
])
def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys, case, needle):
    f = tmp_path / "x.diagnostics.jsonl"
    extra = []
    if case == "empty":
        f.write_text("\n")
    elif case == "only_torn":
        f.write_text('{"sample_idx": 0, "alpha_me')
    elif case == "not_qstar":
        write(f, [{"hello": 1}])
    elif case == "corrupt_middle":
        f.write_text(json.dumps(diag(0)) + "\n{oops\n" + json.dumps(diag(1)) + "\n")
    elif case == "not_object":
        f.write_text("[1, 2]\n")
    elif case == "directory":
        f.mkdir()
    elif case == "bad_band":
        write(f, [diag(0)])
        extra = ["--ess-band", "1.2", "0.8"]
    code, out, err = analyze(capsys, f, "--output-dir", tmp_path / "o", *extra)
    assert code == 2
    assert needle in err and "Traceback" not in err and "qstar analyze: error:" in err


def test_unwritable_output_dir(tmp_path, capsys):
    f = write(tmp_path / "r.diagnostics.jsonl", [diag(0)])
    (tmp_path / "blocker").write_text("x")
    code, out, err = analyze(capsys, f, "--output-dir", tmp_path / "blocker" / "sub")
    assert code == 2 and "cannot create output directory" in err and "--output-dir" in err


def test_every_analysis_flag_is_documented():
    from pathlib import Path

    from engine.cli import parser

    sub = next(a for a in parser()._actions if a.dest == "command")
    doc = (Path(__file__).resolve().parents[1] / "docs" / "analysis.md").read_text()
    for cmd in ("analyze", "report"):
        flags = {s for a in sub.choices[cmd]._actions for s in a.option_strings if s.startswith("--")} - {"--help"}
        missing = sorted(f for f in flags if f"`{f}" not in doc)
        assert not missing, f"{cmd} flags missing from docs/analysis.md: {missing}"


def test_forced_tokens_are_noted():
    lines = [diag(0, alpha_method="kl_symmetry", forced_frac=0.1), diag(1, alpha_method="kl_symmetry", forced_frac=0.0)]
    notes = stats.summarize("run", "run.jsonl", lines).notes
    assert any("5.0% of tokens were forced to pi_t" in n for n in notes), notes
    assert not any("forced" in n for n in stats.summarize("run", "run.jsonl", [diag(0, alpha_method="kl_symmetry")]).notes)


# ---- the answer step: records with reference answers, IS estimates of pi_theta's accuracy ----

LOGW = {"pi_theta": lambda i: 0.0, "q": lambda i: -3 + 0.7 * (i % 5), "pi_t": lambda i: -20.0 - i}
ALPHA = {"pi_theta": 1.0, "q": 0.6, "pi_t": 0.0}


def answer_run(tmp_path, name, right, n=12, field="original_answer"):
    """A run's records + diagnostics: sample i answers 42 (right) when right(i), else 41."""
    recs, diags = [], []
    for i in range(n):
        d = diag(i, alpha_method="kl_symmetry" if name == "q" else "fixed", alpha_mean=ALPHA[name],
                 seq_logw_theta=LOGW[name](i))
        text = f"3 + 4 = 7, so the answer is {42 if right(i) else 41}." if i != 1 else "I do not know."
        recs.append({"messages": [{"role": "user", "content": "q?"}, {"role": "assistant", "content": text}],
                     field: "Some work.\n#### 42", **{k: v for k, v in d.items() if k != "alpha_method"}})
        diags.append(d)
    write(tmp_path / f"{name}.jsonl", recs)
    return write(tmp_path / f"{name}.diagnostics.jsonl", diags)


def test_answer_step_and_importance_estimates(tmp_path, capsys):
    from engine.analysis import importance

    files = [answer_run(tmp_path, "q", lambda i: i % 3 == 0), answer_run(tmp_path, "pi_theta", lambda i: i % 6 == 0)]
    files.append(tmp_path / "pi_t.jsonl")  # a records file works as input too
    answer_run(tmp_path, "pi_t", lambda i: i % 2 == 0)
    (tmp_path / "q.summary.json").write_text(json.dumps({"samples": 12, "tokens": 240, "seconds": 2.0,
                                                         "tokens_per_s": 120.0, "alpha_mean": 0.6,
                                                         "interrupted": False}))
    code, out, err = analyze(capsys, *files, "--output-dir", tmp_path / "o")
    assert code == 0, err
    rows = {r["name"]: r for r in summary(tmp_path / "o")["comparison"]}
    rewards = {"q": [float(i % 3 == 0) for i in range(12)], "pi_t": [float(i % 2 == 0) for i in range(12)]}
    for name, r in rewards.items():
        r[1] = 0.0  # sample 1 has no number
        want = importance.estimates([LOGW[name](i) for i in range(12)], r)
        got = rows[name]
        assert got["accuracy"] == pytest.approx(sum(r) / 12) and got["n_graded"] == 12
        assert got["theta_accuracy_is"] == pytest.approx(want["theta_accuracy_is"]["value"])
        assert got["theta_accuracy_snis"] == pytest.approx(want["theta_accuracy_snis"]["value"])
        assert got["seq_ess"] == pytest.approx(want["seq_ess"])
    theta = rows["pi_theta"]
    assert theta["sampler"] == "pi_theta alone (alpha = 1)" and rows["pi_t"]["sampler"] == "pi_t alone (alpha = 0)"
    assert theta["accuracy"] == theta["theta_accuracy_is"] == theta["theta_accuracy_snis"] == pytest.approx(2 / 12)
    assert theta["seq_ess"] == pytest.approx(12) and theta["ess_warning"] is None
    assert rows["q"]["tokens_per_s"] == 120.0 and rows["pi_t"]["tokens_per_s"] is None
    run = summary(tmp_path / "o")["runs"][0]["answers"]
    assert run["field"] == "original_answer" and run["no_answer"] == 1 and run["correct"] == 4
    assert "== answers by sampler" in out and "say next to nothing about π_θ" in out
    assert "tokens/s: 120.0" in out and "tokens/s: - (no <stem>.summary.json" in out
    assert (tmp_path / "o" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_answer_field_and_reward_hook_flags(tmp_path, capsys):
    f = answer_run(tmp_path, "q", lambda i: True, field="gold")
    code, out, err = analyze(capsys, f, "-o", tmp_path / "o", "--no-plots")
    assert code == 0 and summary(tmp_path / "o")["runs"][0]["answers"] is None  # no answer/original_answer
    code, out, err = analyze(capsys, f, "-o", tmp_path / "o", "--no-plots", "--answer-field", "gold")
    assert code == 0 and summary(tmp_path / "o")["runs"][0]["answers"]["accuracy"] == pytest.approx(11 / 12)
    code, out, err = analyze(capsys, f, "-o", tmp_path / "o", "--answer-field", "nope")
    assert code == 2 and "--answer-field nope: 12 of 12 records lack it" in err
    hook = tmp_path / "grade.py"
    hook.write_text("def always(response, reference):\n    return True\n")
    code, out, err = analyze(capsys, f, "-o", tmp_path / "o", "--no-plots", "--answer-field", "gold",
                             "--reward-hook", f"{hook}:always")
    a = summary(tmp_path / "o")["runs"][0]["answers"]
    assert code == 0 and a["accuracy"] == 1.0 and a["grader"].startswith("hook ") and a["no_answer"] is None
    (tmp_path / "q.jsonl").unlink()
    code, out, err = analyze(capsys, f, "-o", tmp_path / "o", "--answer-field", "gold")
    assert code == 2 and "no records file" in err
