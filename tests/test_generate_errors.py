"""`qstar generate` as a new user meets it (issue 13): a mistake costs one line and no wait, a
failed run does not block the corrected one, resumes add nothing twice, and a finished run is
not reloaded. Models that must not load are replaced by a loader that fails the test."""
import ast
import io
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import engine.pipeline.run as run_mod
from engine.cli import main
from engine.pipeline import progress, store
from engine.pipeline.config import GenerateConfig
from test_pipeline import ROWS, lines, run, write_jsonl

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_models(monkeypatch):
    """Fail if anything tries to load the model pair."""
    def refuse(cfg):
        raise AssertionError("the models were loaded")
    monkeypatch.setattr(run_mod, "load_pair", refuse)


def one_line_error(err: str, code: int, *needles: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    errors = [x for x in err.splitlines() if "error" in x]
    assert len(errors) == 1, err
    for n in needles:
        assert n in errors[0], err


# item 2: a failed run leaves nothing that refuses the corrected rerun

@pytest.mark.parametrize("case", ["prompt_field", "template", "model_path", "split"])
def test_failed_run_leaves_no_manifest_and_the_rerun_works(pair_dirs, tmp_path, capsys, case):
    ds = write_jsonl(tmp_path / "d.jsonl", ROWS[:2])
    out = tmp_path / "o.jsonl"
    good, theta = [], pair_dirs[0]
    if case == "prompt_field":
        bad, good = ["--prompt-field", "nosuch"], ["--prompt-field", "problem"]
    elif case == "template":
        bad, good = ["--t-template", "{problem} {nosuch}"], ["--t-template", "{problem} {solution}"]
    elif case == "model_path":
        bad = []
    else:
        import datasets

        ds = tmp_path / "hf"
        datasets.DatasetDict(train=datasets.Dataset.from_list(ROWS[:2])).save_to_disk(str(ds))
        bad, good = ["--split", "tets"], ["--split", "train"]
    code = run((str(tmp_path / "no-model") if case == "model_path" else theta, pair_dirs[1]), ds, out, *bad,
               "--max-new-tokens", 2)
    assert code == 2 and "Traceback" not in capsys.readouterr().err
    assert not (tmp_path / "o.manifest.json").exists() and not out.exists()
    assert run(pair_dirs, ds, out, *good, "--max-new-tokens", 2) == 0, capsys.readouterr().err
    assert len(lines(out)) == 2 and (tmp_path / "o.manifest.json").exists()


def test_a_stale_manifest_without_records_does_not_block(pair_dirs, tmp_path, capsys, no_models):
    """Older versions wrote the manifest before failing: with no record beside it, it guards nothing."""
    ds = write_jsonl(tmp_path / "d.jsonl", ROWS[:2])
    p = store.paths(str(tmp_path / "o.jsonl"))
    store.write_manifest(p, {"temperature": 0.3})
    code = run(pair_dirs, ds, p["output"], "--prompt-field", "nosuch")
    one_line_error(capsys.readouterr().err, code, "--prompt-field 'nosuch' is not a column")  # not "different config"


# item 4: \n and \t in templates, never in the values put into them

def test_template_escapes_apply_to_the_template_only(pair_dirs, tmp_path):
    rows = [{"problem": "is x = y?", "solution": r"no: x \neq y\tbecause"}]
    out = tmp_path / "o.jsonl"
    tpl = r"{problem}\n\nReference solution:\t{solution} \\n"
    assert run(pair_dirs, write_jsonl(tmp_path / "d.jsonl", rows), out, "--t-template", tpl, "--max-new-tokens", 1) == 0
    (rec,) = lines(out)
    assert rec["prompt_t"] == "is x = y?\n\nReference solution:\t" + r"no: x \neq y\tbecause \n"
    assert json.loads((tmp_path / "o.manifest.json").read_text())["config"]["t_template"] == \
        "{problem}\n\nReference solution:\t{solution} \\n"


def test_an_old_run_with_backslash_n_templates_is_not_resumed_with_newlines(pair_dirs, tmp_path, capsys, no_models):
    ds = write_jsonl(tmp_path / "d.jsonl", ROWS[:2])
    tpl = r"{problem}\n\nReference solution: {solution}"
    p = store.paths(str(tmp_path / "o.jsonl"))
    argv = dict(model_theta=pair_dirs[0], model_t=pair_dirs[1], dataset=str(ds), output=str(p["output"]),
                t_template=tpl, max_new_tokens=6)
    old = GenerateConfig(**argv).hashed() | {"t_template": tpl}  # what the old code hashed: the raw string
    store.write_manifest(p, old)
    write_jsonl(p["output"], [{"sample_idx": 0, "n": 0}])
    code = run(pair_dirs, ds, p["output"], "--t-template", tpl)
    one_line_error(capsys.readouterr().err, code, "different config", "t_template", r"\\n\\nReference", r"\n\nReference")
    plain = GenerateConfig(**(argv | {"t_template": "{problem} {solution}"})).hashed()  # no escape: same hash
    assert plain["t_template"] == "{problem} {solution}"


# item 5: the skipped file lists each skipped row once, however often the run is resumed

def test_skipped_file_has_no_duplicates_after_resumes(pair_dirs, tmp_path, capsys, monkeypatch):
    rows = [ROWS[0], {"problem": "  "}, {"problem": "the quick brown fox " * 40}, ROWS[1]]
    ds, out = write_jsonl(tmp_path / "d.jsonl", rows), tmp_path / "o.jsonl"
    assert run(pair_dirs, ds, out, "--num-samples", 3) == 0
    assert run(pair_dirs, ds, out) == 0  # resumes: row 3 is new
    monkeypatch.setattr(run_mod, "load_pair", lambda cfg: pytest.fail("the models were loaded"))
    assert run(pair_dirs, ds, out) == 0  # nothing to do
    skipped = lines(tmp_path / "o.skipped.jsonl")
    assert sorted(s["sample_idx"] for s in skipped) == [1, 2], skipped
    assert "skipped 2 (empty prompt: 1, too long: 1)" in capsys.readouterr().err.splitlines()[-3]


# item 6: a column of mixed types goes to parquet as strings

def test_parquet_with_a_mixed_type_column(pair_dirs, tmp_path, capsys):
    import pyarrow.parquet as pq

    rows = [dict(ROWS[0], answer=42), dict(ROWS[1], answer="Paris")]
    out = tmp_path / "o.jsonl"
    assert run(pair_dirs, write_jsonl(tmp_path / "d.jsonl", rows), out, "--format", "parquet", "--max-new-tokens", 2) == 0
    err = capsys.readouterr().err
    warnings = [x for x in err.splitlines() if "warning" in x]
    assert len(warnings) == 1 and "original_answer" in warnings[0] and "strings" in warnings[0], err
    t = pq.read_table(tmp_path / "o.parquet")
    assert sorted(t.column("original_answer").to_pylist()) == ["42", "Paris"]
    assert t.column("sample_idx").to_pylist() == [r["sample_idx"] for r in lines(out)]  # others keep their type
    assert f"parquet: {tmp_path / 'o.parquet'}" in err and "done 2 samples" in err


# item 8: a local path that is not there fails at once; the Hub is not asked

@pytest.mark.parametrize("name", ["data/train.jsonl", "./mydata", "{tmp}/a/b", "~/nosuch-qstar-dir/x"])
def test_missing_local_dataset_fails_at_once(pair_dirs, tmp_path, capsys, no_models, monkeypatch, name):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the Hub was asked"))
    monkeypatch.chdir(tmp_path)
    name = name.format(tmp=tmp_path)
    t0 = time.perf_counter()
    code = run(pair_dirs, name, tmp_path / "o.jsonl")
    one_line_error(capsys.readouterr().err, code, repr(name), "no such file or directory")
    assert time.perf_counter() - t0 < 1.0


def test_hub_lookup_honours_offline_mode(pair_dirs, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    env.pop("HF_DATASETS_OFFLINE", None)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "engine.cli", "generate", "--model-theta", pair_dirs[0], "--model-t",
                        pair_dirs[1], "--dataset", "nosuch-owner/nosuch-dataset", "--output", str(tmp_path / "o.jsonl")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    one_line_error(p.stderr, p.returncode, "'nosuch-owner/nosuch-dataset'", "HF_HUB_OFFLINE")
    assert time.perf_counter() - t0 < 20  # not ~25 s of retries (the import itself takes a few)


# item 9: template placeholders and --id-field against the columns, before any model loads

@pytest.mark.parametrize("args,needle", [
    (["--t-template", "{problem} {nosuch}"], "--t-template: {nosuch} is not a column; columns: answer, id, problem"),
    (["--theta-template", "Q: {question}"], "--theta-template: {question} is not a column"),
    (["--theta-template", "{problem.x[0]} {nosuch[1]}"], "{nosuch} is not a column"),
    (["--t-template", "{problem"], "--t-template '{problem' is not a valid format string"),
    (["--t-template", "{} {problem}"], "every placeholder must name a column"),
    (["--id-field", "uuid"], "--id-field 'uuid' is not a column; columns: answer, id, problem"),
])
def test_template_and_id_field_must_be_columns(pair_dirs, tmp_path, capsys, no_models, args, needle):
    ds = write_jsonl(tmp_path / "d.jsonl", ROWS[:3])
    code = run(pair_dirs, ds, tmp_path / "o.jsonl", *args)
    one_line_error(capsys.readouterr().err, code, needle)
    assert not any(tmp_path.glob("o.*"))


# item 10: every sampling flag checked before anything loads, by name

@pytest.mark.parametrize("args,needle", [
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    (["--n", "0"], "--n must be >= 1, got 0"),
    (["--temperature", "-1"], "--temperature must be >= 0 (0 = greedy), got -1"),
    (["--temperature", "nan"], "--temperature must be a finite number, got nan"),
    (["--top-p", "0"], "--top-p must lie in (0, 1] (1 = off), got 0"),
    (["--top-p", "1.5"], "--top-p must lie in (0, 1] (1 = off), got 1.5"),
    (["--top-k", "-1"], "--top-k must be >= 0 (0 = off), got -1"),
    (["--min-p", "2"], "--min-p must lie in [0, 1] (0 = off), got 2"),
    (["--stop", ""], "--stop must be a non-empty string, got ''"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
])
def test_sampling_flags_are_checked_before_loading(pair_dirs, tmp_path, capsys, no_models, args, needle):
    ds = write_jsonl(tmp_path / "d.jsonl", ROWS[:1])
    code = run(pair_dirs, ds, tmp_path / "o.jsonl", *args)
    one_line_error(capsys.readouterr().err, code, needle)
    assert "SamplingParams" not in capsys.readouterr().err and not any(tmp_path.glob("o.*"))


def test_config_file_value_of_the_wrong_type_names_the_flag(pair_dirs, tmp_path, capsys, no_models):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"max_new_tokens": "many"}))
    code = main(["generate", "--config", str(cfg), "--model-theta", pair_dirs[0], "--model-t", pair_dirs[1],
                 "--dataset", str(write_jsonl(tmp_path / "d.jsonl", ROWS[:1])), "--output", str(tmp_path / "o.jsonl")])
    one_line_error(capsys.readouterr().err, code, "--max-new-tokens must be an integer, got 'many'")


def test_greedy_says_truncation_flags_are_moot(pair_dirs, tmp_path, capsys):
    ds = write_jsonl(tmp_path / "d.jsonl", ROWS[:1])
    assert run(pair_dirs, ds, tmp_path / "o.jsonl", "--temperature", 0, "--top-p", 0.9, "--top-k", 5,
               "--max-new-tokens", 1) == 0
    notes = [x for x in capsys.readouterr().err.splitlines() if "note" in x]
    assert notes == ["[qstar] note: --temperature 0 is greedy (the most likely token of q): --top-p, --top-k are moot"]
    assert GenerateConfig(model_theta="a", model_t="b", dataset="d", output="o", temperature=0).notes() == []


# item 11: a line before the models load; no \r into a log

def test_loading_line_and_plain_progress_when_not_a_tty(pair_dirs, tmp_path, capsys):
    argv = ["generate", "--model-theta", pair_dirs[0], "--model-t", pair_dirs[1], "--max-new-tokens", "2",
            "--dataset", str(write_jsonl(tmp_path / "d.jsonl", ROWS[:3])), "--output", str(tmp_path / "o.jsonl")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "\r" not in err
    out = err.splitlines()
    loading = next(i for i, x in enumerate(out) if x.startswith("[qstar] loading models"))
    assert pair_dirs[0] in out[loading] and out[loading + 1].startswith("[qstar] models loaded in ")
    assert sum(x.startswith("[qstar] 3/3 samples") for x in out) == 1, err  # the last figures, once


def test_progress_redraws_in_place_on_a_terminal(pair_dirs, tmp_path):
    import pty

    master, slave = pty.openpty()
    argv = [sys.executable, "-m", "engine.cli", "generate", "--model-theta", pair_dirs[0], "--model-t", pair_dirs[1],
            "--dataset", str(write_jsonl(tmp_path / "d.jsonl", ROWS[:2])), "--output", str(tmp_path / "o.jsonl"),
            "--max-new-tokens", "2"]
    p = subprocess.Popen(argv, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                         stderr=slave)
    os.close(slave)
    got = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        got += chunk
    os.close(master)
    assert p.wait(timeout=120) == 0, got
    assert b"\r[qstar] 2/2 samples" in got and b"[qstar] loading models" in got  # redrawn in place


class FakeStream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_progress_redraws_on_a_tty_and_prints_lines_into_a_log(monkeypatch, tty):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    stats = progress.Stats()
    stream = FakeStream(tty)
    pr = progress.Progress(10, False, stats, stream=stream)
    for i in range(10):  # one sample every 5 s
        clock[0] += 5.0
        stats.done += 1
        pr.update()
    pr.update(force=True)
    text = stream.getvalue()
    if tty:
        assert text.count("\r") == 11 and text.endswith("10/10 samples" + text.split("10/10 samples")[-1])
        assert text.count("\n") == 1
    else:
        assert "\r" not in text
        shown = [x.split()[1] for x in text.splitlines()]
        assert shown == ["1/10", "7/10", "10/10"]  # at once, every LOG_EVERY = 30 s, then the end once


def test_progress_final_line_not_repeated_in_a_log(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    stats = progress.Stats(done=3)
    stream = FakeStream(False)
    pr = progress.Progress(3, False, stats, stream=stream)
    pr.update()
    pr.update(force=True)
    assert len(stream.getvalue().splitlines()) == 1


# item 12: --output a directory; file modes; the summary's parquet; a finished run is not reloaded

def test_output_naming_a_directory_is_refused(pair_dirs, tmp_path, capsys, no_models):
    (tmp_path / "runs").mkdir()
    code = run(pair_dirs, write_jsonl(tmp_path / "d.jsonl", ROWS[:1]), tmp_path / "runs")
    one_line_error(capsys.readouterr().err, code, f"--output {tmp_path / 'runs'} is a directory",
                   str(tmp_path / "runs" / "out.jsonl"))
    assert not (tmp_path / "runs.jsonl").exists()


def test_every_output_file_respects_the_umask(pair_dirs, tmp_path):
    rows = ROWS[:2] + [{"problem": " "}]
    ds, out = write_jsonl(tmp_path / "d.jsonl", rows), tmp_path / "o.jsonl"
    old = os.umask(0o022)
    try:
        assert run(pair_dirs, ds, out, "--num-samples", 1, "--max-new-tokens", 2) == 0
        assert run(pair_dirs, ds, out, "--max-new-tokens", 2, "--format", "parquet") == 0  # resume: diagnostics rewritten
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in tmp_path.glob("o.*")}
    assert set(modes) == {"o.jsonl", "o.diagnostics.jsonl", "o.manifest.json", "o.skipped.jsonl", "o.parquet",
                          "o.summary.json"}
    assert set(modes.values()) == {0o644}, {k: oct(v) for k, v in modes.items()}
    assert not list(tmp_path.glob(".o.*")), "a temp file was left behind"


def test_resuming_a_finished_run_loads_no_model(pair_dirs, tmp_path, capsys, monkeypatch):
    rows = ROWS[:2] + [{"problem": "the quick brown fox " * 40}]  # one row skipped as too long
    ds, out = write_jsonl(tmp_path / "d.jsonl", rows), tmp_path / "o.jsonl"
    assert run(pair_dirs, ds, out, "--max-new-tokens", 2) == 0
    before = out.read_text()
    capsys.readouterr()
    monkeypatch.setattr(run_mod, "load_pair", lambda cfg: pytest.fail("the models were loaded"))
    assert run(pair_dirs, ds, out, "--max-new-tokens", 2, "--format", "parquet") == 0
    err = capsys.readouterr().err
    assert "nothing to do: 2 samples already in" in err and "too long: 1" in err and "parquet:" in err
    assert out.read_text() == before and (tmp_path / "o.parquet").exists()


# item 13: distributed/ never imports run.py (one way: run -> distributed)

def test_distributed_does_not_import_run():
    for path in (ROOT / "engine" / "pipeline" / "distributed").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                assert target not in ("..run", "engine.pipeline.run"), f"{path.name} imports {target}"
                assert not (target == ".." and any(a.name == "run" for a in node.names)), path.name
