"""`qstar generate` end to end on tiny model pairs saved to disk, over every input shape."""
import csv
import json

import pytest

import tiny
from engine.cli import main

ROWS = [{"problem": f"what is {i} plus {i}?", "answer": str(2 * i), "solution": f"{i} + {i} = {2 * i}",
         "id": f"q{i}"} for i in range(5)]


def run(pair_dirs, dataset, output, *extra):
    argv = ["generate", "--model-theta", pair_dirs[0], "--model_t", pair_dirs[1], "--dataset", str(dataset),
            "--output", str(output), "--max-new-tokens", "6", "--quiet", *map(str, extra)]
    return main(argv)


def lines(path):
    return [json.loads(x) for x in open(path)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("shape", ["messages", "prompt", "question", "problem", "instruction", "query"])
def test_field_autodetection(pair_dirs, tmp_path, shape):
    if shape == "messages":
        rows = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"hi {i}"},
                              {"role": "assistant", "content": "old answer"}]} for i in range(3)]
    elif shape == "instruction":
        rows = [{"instruction": f"add {i}", "input": "and one"} for i in range(3)]
    else:
        rows = [{shape: f"what is {i}?", "extra": i} for i in range(3)]
    out = tmp_path / "o.jsonl"
    assert run(pair_dirs, write_jsonl(tmp_path / "d.jsonl", rows), out) == 0
    recs = sorted(lines(out), key=lambda r: r["sample_idx"])
    assert [r["sample_idx"] for r in recs] == [0, 1, 2]
    first = recs[0]["messages"]
    assert first[-1]["role"] == "assistant" and first[-2]["role"] == "user"
    if shape == "messages":
        assert first[0] == {"role": "system", "content": "be brief"} and "old answer" not in json.dumps(first[:-1])
    if shape == "instruction":
        assert first[-2]["content"] == "add 0\n\nand one"
    if shape not in ("messages", "instruction"):
        assert recs[1]["original_extra"] == 1 and first[-2]["content"] == "what is 0?"


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "csv", "hf_dir"])
def test_file_kinds_deepscaler_rows_and_per_side_templates(pair_dirs, tmp_path, kind):
    if kind == "jsonl":
        ds = write_jsonl(tmp_path / "d.jsonl", ROWS)
    elif kind == "json":
        ds = tmp_path / "d.json"
        ds.write_text(json.dumps({"data": ROWS}))
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        ds = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS), ds)
    elif kind == "csv":
        ds = tmp_path / "d.csv"
        with open(ds, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(ROWS[0]))
            w.writeheader()
            w.writerows(ROWS)
    else:
        import datasets

        ds = tmp_path / "hf"
        datasets.Dataset.from_list(ROWS).save_to_disk(str(ds))
    out = tmp_path / "o.jsonl"
    code = run(pair_dirs, ds, out, "--t-template", "{problem}\n\nReference solution: {solution}", "--n", 2,
               "--num-samples", 4, "--save-token-stats")
    assert code == 0
    recs = lines(out)
    assert sorted((r["sample_idx"], r["n"]) for r in recs) == [(i, j) for i in range(4) for j in range(2)]
    r = next(r for r in recs if r["sample_idx"] == 2)
    assert r["sample_id"] == "q2" and r["original_answer"] == "4" and r["messages"][0]["content"] == "what is 2 plus 2?"
    assert r["prompt_t"] == "what is 2 plus 2?\n\nReference solution: 2 + 2 = 4"
    assert len(r["token_ids"]) == len(r["alpha"]) == len(r["logp_behavior"]) == r["num_tokens"]
    diag = lines(tmp_path / "o.diagnostics.jsonl")
    assert len(diag) == 8 and all("seq_logw_theta" in d and len(d["alpha"]) == d["num_tokens"] for d in diag)
    d = next(d for d in diag if (d["sample_idx"], d["n"]) == (r["sample_idx"], r["n"]))
    assert d["seq_logw_theta"] == pytest.approx(sum(a - b for a, b in zip(r["logp_theta"], r["logp_behavior"])), abs=1e-5)


def test_adapter_and_config_file(pair_dirs, tmp_path, monkeypatch):
    (tmp_path / "myadapter.py").write_text(
        "def build(row):\n    return {'prompt_theta': 'Q: ' + row['problem'], 'prompt_t': 'Q: ' + row['problem'] + ' A: ' + row['answer']}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"model_theta: {pair_dirs[0]}\nmodel-t: {pair_dirs[1]}\nn: 3\ntemperature: 0.5\nalpha_method: fixed\n")
    out = tmp_path / "o.jsonl"
    code = main(["generate", "--config", str(cfg), "--dataset", str(write_jsonl(tmp_path / "d.jsonl", ROWS[:2])),
                 "--output", str(out), "--adapter", "myadapter:build", "--n", "1", "--max-new-tokens", "4", "--quiet"])
    assert code == 0
    recs = lines(out)
    assert len(recs) == 2 and recs[0]["prompt_t"].endswith("A: 0")  # --n 1 overrode the file's n: 3
    manifest = json.loads((tmp_path / "o.manifest.json").read_text())
    assert manifest["config"]["temperature"] == 0.5 and manifest["config"]["alpha_method"] == "fixed"


def test_resume_skips_done_refuses_changes_and_overwrite_restarts(pair_dirs, tmp_path, capsys):
    ds = write_jsonl(tmp_path / "d.jsonl", ROWS)
    out = tmp_path / "o.jsonl"
    assert run(pair_dirs, ds, out, "--num-samples", 3) == 0
    first = lines(out)
    assert run(pair_dirs, ds, out, "--num-samples", 5, "--batch-size", 3) == 0  # more rows, other batch: resume
    recs = lines(out)
    assert len(recs) == 5 and recs[:3] == first
    assert run(pair_dirs, ds, out) == 0 and len(lines(out)) == 5  # nothing left to do
    capsys.readouterr()
    assert run(pair_dirs, ds, out, "--temperature", 0.7) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "temperature: 1.0 -> 0.7" in err and "--overwrite" in err
    assert run(pair_dirs, ds, out, "--temperature", 0.7, "--overwrite", "--num-samples", 2) == 0
    assert len(lines(out)) == 2


def test_resumed_samples_equal_uninterrupted_ones(pair_dirs, tmp_path):
    ds = write_jsonl(tmp_path / "d.jsonl", ROWS)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert run(pair_dirs, ds, a, "--n", 2) == 0
    assert run(pair_dirs, ds, b, "--n", 2, "--num-samples", 2) == 0
    assert run(pair_dirs, ds, b, "--n", 2, "--batch-size", 1) == 0
    key = lambda r: (r["sample_idx"], r["n"])  # noqa: E731
    for x, y in zip(sorted(lines(a), key=key), sorted(lines(b), key=key), strict=True):
        assert x["messages"] == y["messages"] and x["sample_id"] == y["sample_id"]  # same tokens
        for k, v in x.items():  # batch composition moves float sums by ~1e-7, nothing more
            if isinstance(v, float):
                assert y[k] == pytest.approx(v, rel=1e-5, abs=1e-5), k


def test_torn_last_line_is_repaired(pair_dirs, tmp_path):
    ds = write_jsonl(tmp_path / "d.jsonl", ROWS)
    out = tmp_path / "o.jsonl"
    assert run(pair_dirs, ds, out, "--num-samples", 2) == 0
    with open(out, "a") as f:
        f.write('{"messages": [{"role": "user", "cont')
    with open(tmp_path / "o.diagnostics.jsonl", "a") as f:
        f.write('{"sample_idx": 4, "n": 0, "alpha_mean": 0.5}\n{"sample_i')
    assert run(pair_dirs, ds, out) == 0
    recs, diag = lines(out), lines(tmp_path / "o.diagnostics.jsonl")
    assert sorted(r["sample_idx"] for r in recs) == [0, 1, 2, 3, 4]
    assert sorted(d["sample_idx"] for d in diag) == [0, 1, 2, 3, 4]


def test_parquet_format(pair_dirs, tmp_path):
    import pyarrow.parquet as pq

    out = tmp_path / "o.jsonl"
    assert run(pair_dirs, write_jsonl(tmp_path / "d.jsonl", ROWS), out, "--format", "parquet") == 0
    t = pq.read_table(tmp_path / "o.parquet")
    assert t.num_rows == 5 and "messages" in t.column_names


def test_bad_rows_are_skipped_and_counted(pair_dirs, tmp_path, capsys):
    rows = ROWS[:2] + [{"problem": "   "}, {"problem": "the quick brown fox " * 40}, {"answer": "no problem field"}]
    out = tmp_path / "o.jsonl"
    assert run(pair_dirs, write_jsonl(tmp_path / "d.jsonl", rows), out) == 0
    err = capsys.readouterr().err
    assert "done 2 samples" in err and "skipped 3" in err and "empty prompt: 2" in err and "too long: 1" in err
    skipped = lines(tmp_path / "o.skipped.jsonl")
    assert sorted(s["sample_idx"] for s in skipped) == [2, 3, 4]
    assert run(pair_dirs, write_jsonl(tmp_path / "e.jsonl", rows[3:4]), tmp_path / "e.out.jsonl",
               "--on-long-prompt", "error") == 2
    assert "prompt too long" in capsys.readouterr().err
    assert run(pair_dirs, write_jsonl(tmp_path / "e.jsonl", rows[3:4]), tmp_path / "t.jsonl",
               "--on-long-prompt", "truncate-left") == 0
    assert len(lines(tmp_path / "t.jsonl")) == 1


@pytest.mark.parametrize("case,needle", [
    ("missing_file", "cannot load dataset"),
    ("no_field", "no prompt field found among the columns (answer, text); name it with --prompt-field"),
    ("bad_field", "--prompt-field 'nope' is not a column"),
    ("model_path", "could not load model"),
    ("tokenizers", "tokenizers of model_theta"),
    ("unwritable", "is not writable"),
    ("not_a_run", "is not a qstar run"),
    ("bad_choice", "invalid choice"),
])
def test_bad_input_exits_with_a_clear_message(pair_dirs, tmp_path, capsys, case, needle):
    ds = write_jsonl(tmp_path / "d.jsonl", ROWS[:1])
    out = tmp_path / "o.jsonl"
    args = []
    theta, t = pair_dirs
    if case == "missing_file":
        ds = tmp_path / "nope.jsonl"
    elif case == "no_field":
        ds = write_jsonl(tmp_path / "x.jsonl", [{"text": "a", "answer": "b"}])
    elif case == "bad_field":
        args = ["--prompt-field", "nope"]
    elif case == "model_path":
        theta = str(tmp_path / "no-model")
    elif case == "tokenizers":
        other = tmp_path / "other"
        tiny.model(seed=3).save_pretrained(other)
        tiny.tokenizer(vocab_size=300, extra="zebra").save_pretrained(other)
        t = str(other)
    elif case == "unwritable":
        blocker = tmp_path / "file"
        blocker.write_text("x")
        out = blocker / "sub" / "o.jsonl"
    elif case == "not_a_run":
        out.write_text("hello\n")
    elif case == "bad_choice":
        args = ["--alpha-method", "bisection"]
    if case == "bad_choice":
        with pytest.raises(SystemExit) as e:
            run((theta, t), ds, out, *args)
        code = e.value.code
    else:
        code = run((theta, t), ds, out, *args)
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["generate", "check"])
def test_every_generate_flag_is_documented(command):
    from pathlib import Path

    from engine.cli import parser

    sub = next(a for a in parser()._actions if a.dest == "command")
    flags = {s for a in sub.choices[command]._actions for s in a.option_strings if s.startswith("--")}
    guide = (Path(__file__).resolve().parents[1] / "docs" / "guide.md").read_text()
    kebab = {f for f in flags if "_" not in f and f != "--help"}
    missing = sorted(f for f in kebab if f"`{f}`" not in guide and f"`{f} " not in guide)
    assert not missing, f"flags missing from docs/guide.md: {missing}"


def test_controls_reach_records_manifest_and_resume_guard(pair_dirs, tmp_path, capsys):
    ds = write_jsonl(tmp_path / "d.jsonl", ROWS[:2])
    out = tmp_path / "o.jsonl"
    ctl = ["--support-top-k", 40, "--support-top-p", 0.9, "--force-teacher", "first", "--save-token-stats"]
    assert run(pair_dirs, ds, out, *ctl) == 0
    for r in lines(out):
        assert r["forced"][0] == 1 and r["alpha"][0] == 0.0 and set(r["forced"]) <= {0, 1}
        assert len(r["clamped"]) == len(r["alpha"]) and r["forced_frac"] > 0
    manifest = json.loads((tmp_path / "o.manifest.json").read_text())
    cfg = manifest["config"]
    assert (cfg["support_top_k"], cfg["support_top_p"], cfg["force_teacher"]) == (40, 0.9, "first")
    capsys.readouterr()
    assert run(pair_dirs, ds, out, *ctl[:4], "--save-token-stats") == 2
    err = capsys.readouterr().err
    assert "force_teacher: 'first' -> None" in err
    assert run(pair_dirs, ds, out, "--force-teacher", "bogus") == 2
    assert "--force-teacher takes a comma-separated subset" in capsys.readouterr().err


def test_controls_in_generate_help(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--support-top-k", "--support-top-p", "--force-teacher"):
        assert flag in out
    assert "first,special" in out and "nucleus" in out


def test_run_summary_file_records_the_speed(pair_dirs, tmp_path):
    """<stem>.summary.json: this session's samples, tokens and tokens/s (analyze compares runs by
    it); a resume with nothing to do keeps it, --overwrite replaces it."""
    ds = write_jsonl(tmp_path / "d.jsonl", ROWS[:3])
    out = tmp_path / "r.jsonl"
    assert run(pair_dirs, ds, out, "--max-new-tokens", "4") == 0
    s = json.loads((tmp_path / "r.summary.json").read_text())
    assert s["samples"] == 3 and s["samples_before"] == 0 and not s["interrupted"]
    assert s["tokens"] == sum(r["num_tokens"] for r in lines(out)) > 0
    assert s["seconds"] > 0 and abs(s["tokens_per_s"] - s["tokens"] / s["seconds"]) < 1e-2 * s["tokens_per_s"] + 1e-3
    assert 0 <= s["alpha_mean"] <= 1 and "device" in s and "threads" in s
    before = (tmp_path / "r.summary.json").read_text()
    assert run(pair_dirs, ds, out, "--max-new-tokens", "4") == 0  # nothing to do
    assert (tmp_path / "r.summary.json").read_text() == before
    assert run(pair_dirs, ds, out, "--max-new-tokens", "4", "--overwrite", "--num-samples", "1") == 0
    assert json.loads((tmp_path / "r.summary.json").read_text())["samples"] == 1
