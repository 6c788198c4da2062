"""Command-line mistakes and interruptions outside the pipeline (issue 13): a malformed --config
names its file and line in one line (exit 2); Ctrl-C while models load, or a second Ctrl-C,
prints one line and exits 130, never a KeyboardInterrupt traceback."""
import json

import pytest

import engine.api
from engine.cli import main


def _gen(tmp_path, *extra):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "what is one plus one?"}) + "\n")
    return ["generate", "--dataset", str(data), "--output", str(tmp_path / "out.jsonl"), "--max-new-tokens", "2",
            *extra]


@pytest.mark.parametrize("name,text,needles", [
    ("bad.yaml", "model_theta: a\n  model_t: [b\n", ["bad.yaml:", "line 2", "not valid YAML"]),
    ("bad.yml", "a: b: c\n", ["bad.yml:", "line 1", "not valid YAML"]),
    ("bad.json", '{"model_theta": "a",\n "model_t": }\n', ["bad.json:", "line 2", "not valid JSON"]),
    ("list.yaml", "- a\n- b\n", ["list.yaml", "expected a mapping"]),
    ("keys.json", '{"modle_theta": "a"}', ["keys.json", "unknown keys ['modle_theta']"]),
])
def test_malformed_config_is_one_line_naming_the_file(tmp_path, capsys, name, text, needles):
    cfg = tmp_path / name
    cfg.write_text(text)
    rc = main(_gen(tmp_path, "--config", str(cfg)))
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qstar generate: error: --config "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], err


def test_ctrl_c_while_models_load_is_one_line_exit_130(pair_dirs, tmp_path, monkeypatch, capsys):
    def interrupted(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.api, "create_optimal_sampling_model", interrupted)
    rc = main(_gen(tmp_path, "--model-theta", pair_dirs[0], "--model-t", pair_dirs[1]))
    err = capsys.readouterr().err
    assert rc == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1] == ("[qstar] generate interrupted; records written so far are kept: "
                                            "rerun the same command to resume")
    rc = main(["check", "--model-theta", pair_dirs[0], "--model-t", pair_dirs[1]])
    err = capsys.readouterr().err
    assert rc == 130 and err.strip().splitlines()[-1] == "[qstar] check interrupted", err


def test_second_ctrl_c_during_the_run_is_one_line_exit_130(pair_dirs, tmp_path, monkeypatch, capsys):
    import engine.core

    def stop_now(self, *a, **kw):  # what the second Ctrl-C raises inside the decode loop
        raise KeyboardInterrupt

    monkeypatch.setattr(engine.core.Engine, "run", stop_now)
    rc = main(_gen(tmp_path, "--model-theta", pair_dirs[0], "--model-t", pair_dirs[1], "--threads", "1"))
    err = capsys.readouterr().err
    assert rc == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "interrupted" in err.strip().splitlines()[-1]
