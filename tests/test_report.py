"""`qstar report` on a real tiny run: a self-contained HTML file that headless Chromium renders
with no console errors, showing the sample count and coloured tokens; bad input exits 2."""
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from engine.cli import main

ROWS = [{"problem": f"what is {i} plus {i}?", "id": f"q{i}"} for i in range(3)]
ROWS[1]["problem"] = "tricky </script><b>&amp; prompt"  # must not break out of the page's script tag
INSTALL_LOCK = Path(tempfile.gettempdir()) / "qstar-chromium-install.lock"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _find_chromium():
    return next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)


def _install_chromium():
    """apt-get install chromium once, under a file lock (parallel sessions wait, then reuse it)."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is missing and cannot be installed here (needs root and apt-get): "
                    "`apt-get install -y chromium` to run the report rendering tests")
    with open(INSTALL_LOCK, "w") as lock:
        deadline = time.monotonic() + 900
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.skip(f"timed out waiting for another chromium install ({INSTALL_LOCK})")
                time.sleep(2)
        if _find_chromium():  # another session installed it while we waited
            return
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            try:
                r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            except subprocess.TimeoutExpired:
                pytest.skip(f"`{' '.join(cmd)}` took over 600 s: chromium could not be installed")
            if r.returncode:
                pytest.skip(f"could not install chromium: `{' '.join(cmd)}` exited {r.returncode}: "
                            f"{r.stderr.strip()[-300:]}")


@pytest.fixture(scope="session")
def chromium():
    if not _find_chromium():
        _install_chromium()
    exe = _find_chromium()
    if not exe:
        pytest.skip("chromium is still not on PATH after installing it")
    return exe


def chrome(exe, workdir: Path, *args):
    profile = tempfile.mkdtemp(dir=workdir, prefix="chrome-profile-")  # a fresh profile per run
    return subprocess.run([exe, *CHROME_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


def generate(pair_dirs, root: Path, name: str, *extra) -> Path:
    ds = root / "d.jsonl"
    ds.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = root / f"{name}.jsonl"
    code = main(["generate", "--model-theta", pair_dirs[0], "--model-t", pair_dirs[1], "--dataset", str(ds),
                 "--output", str(out), "--max-new-tokens", "8", "--n", "2", "--quiet", *extra])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def run_with_tokens(pair_dirs, tmp_path_factory):
    return generate(pair_dirs, tmp_path_factory.mktemp("run"), "kl", "--save-token-stats")


def page_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="qstar-data">(.*?)</script>', html, re.S)
    return json.loads(m.group(1))


def test_report_renders_in_chromium(run_with_tokens, chromium, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert main(["report", str(run_with_tokens), "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert json.loads(stdout.strip().splitlines()[-1])["n_samples"] == 6
    html = out.read_text()
    # self-contained: nothing fetched from anywhere, plots inline
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html) and "<link" not in html
    assert html.count("data:image/png;base64,") == 6
    data = page_data(html)
    assert data["total"] == 6 and all(s["tokens"] and len(s["tokens"]) == len(s["token_ids"]) for s in data["samples"])
    assert any("</script>" in m["content"] for s in data["samples"] for m in s["prompt"])  # survived escaping

    dom = chrome(chromium, tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "rror" in line)]
    assert not console, console
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    assert 'data-rendered="1"' in body and 'data-sample-count="6"' in body and "data-error" not in body
    assert re.search(r'id="sample-count">6<', dom.stdout)
    assert int(re.search(r'data-colored-tokens="(\d+)"', body).group(1)) >= 1
    assert re.search(r'class="tok colored"[^>]*style="background: rgb', dom.stdout)

    shot = tmp_path / "report.png"
    r = chrome(chromium, tmp_path, "--hide-scrollbars", "--window-size=1200,1600", f"--screenshot={shot}", out.as_uri())
    assert r.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", r.stderr[-2000:]
    from PIL import Image

    assert Image.open(shot).size == (1200, 1600)
    with capsys.disabled():
        print(f"\nreport screenshot: {shot}")


def test_records_without_token_arrays_show_plain_text_and_a_hint(pair_dirs, chromium, tmp_path, capsys):
    run = generate(pair_dirs, tmp_path, "plain")
    (tmp_path / "plain.diagnostics.jsonl").unlink()  # the records' own summaries are used instead
    out = tmp_path / "plain.html"
    assert main(["report", str(run), "-o", str(out)]) == 0
    assert "no plain.diagnostics.jsonl" in capsys.readouterr().err
    html = out.read_text()
    assert "alpha vs position skipped" in html and "rerun generate with --save-token-stats" in html
    dom = chrome(chromium, tmp_path, "--dump-dom", out.as_uri()).stdout
    assert 'data-rendered="1"' in dom and '<span class="tok colored' not in dom
    assert "rerun qstar generate with --save-token-stats" in dom


def test_token_ids_shown_when_no_tokenizer_is_loadable(run_with_tokens, tmp_path, capsys):
    out = tmp_path / "ids.html"
    assert main(["report", str(run_with_tokens), "-o", str(out), "--tokenizer", str(tmp_path / "nowhere"),
                 "--max-samples", "2"]) == 0
    data = page_data(out.read_text())
    assert len(data["samples"]) == 2 and data["total"] == 6 and data["samples"][0]["tokens"] is None
    assert "not a local path" in data["tok_note"] and "Showing the first 2 of 6" in out.read_text()
    config = out.read_text().split('id="config"')[1].split("</section>")[0]
    for key in ("support_top_k", "support_top_p", "force_teacher", "alpha_min", "alpha_max"):
        assert key in config, f"{key} missing from the report's run config"


def test_token_texts_rebuild_the_decoded_string():
    import tiny
    from engine.analysis.report import token_texts

    tok = tiny.tokenizer()
    ids = tok("hello world, the quick brown fox: é ü 2 + 2")["input_ids"]
    assert "".join(token_texts(tok, ids)) == tok.decode(ids)


def test_analyze_on_a_real_kl_symmetry_run(run_with_tokens, tmp_path, capsys):
    diag = run_with_tokens.with_name("kl.diagnostics.jsonl")
    assert main(["analyze", str(diag), "--output-dir", str(tmp_path / "a")]) == 0
    run = json.loads((tmp_path / "a" / "summary.json").read_text())["runs"][0]
    assert run["alpha_method"] == "kl_symmetry" and run["checks"]["level"] == "token"
    assert run["checks"]["kl_gap"]["pass_rate"] == 1.0 and run["by_construction"] == ["kl_gap"]
    assert (tmp_path / "a" / "alpha_vs_position.png").exists()


def test_torn_last_record_is_skipped(run_with_tokens, tmp_path, capsys):
    torn = tmp_path / "torn.jsonl"
    torn.write_text(run_with_tokens.read_text() + '{"messages": [{"role": "user", "cont')
    assert main(["report", str(torn), "-o", str(tmp_path / "t.html")]) == 0
    out, err = capsys.readouterr()
    assert "last line 7 is incomplete" in err and json.loads(out.strip().splitlines()[-1])["n_samples"] == 6
    assert "No manifest" in (tmp_path / "t.html").read_text()


@pytest.mark.parametrize("case,needle", [
    ("missing", "no such file"),
    ("empty", "is empty"),
    ("diagnostics", "is a diagnostics file"),
    ("not_qstar", "is not a qstar records file"),
])
def test_bad_input_exits_2_with_a_clear_message(run_with_tokens, tmp_path, capsys, case, needle):
    f = tmp_path / "x.jsonl"
    if case == "empty":
        f.write_text("")
    elif case == "diagnostics":
        f = run_with_tokens.with_name("kl.diagnostics.jsonl")
    elif case == "not_qstar":
        f.write_text('{"a": 1}\n')
    code = main(["report", str(f), "-o", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "Traceback" not in err and "qstar report: error:" in err
    if case == "diagnostics":
        assert str(run_with_tokens) in err  # names the records file to give instead


def answer_runs(root: Path) -> list[Path]:
    """Three small runs whose records carry reference answers (no model needed): pi_theta alone,
    pi_t alone and a mixture, with sequence log-weights of each kind."""
    spec = {"q": (0.5, lambda i: -2 + 0.5 * (i % 4), lambda i: i % 3 == 0),
            "pi_theta": (1.0, lambda i: 0.0, lambda i: i == 0),
            "pi_t": (0.0, lambda i: -15.0 - i, lambda i: i % 2 == 0)}
    files = []
    for name, (alpha, logw, right) in spec.items():
        recs = [{"messages": [{"role": "user", "content": f"problem {i}"},
                              {"role": "assistant", "content": f"so the answer is {7 if right(i) else 8}"}],
                 "sample_idx": i, "n": 0, "sample_id": f"p{i}", "original_answer": "7", "num_tokens": 6,
                 "finish_reason": "stop", "alpha_mean": alpha, "kl_theta_mean": 0.1, "kl_t_mean": 0.1,
                 "ess_ratio_mean": 1.0, "seq_logw_theta": logw(i), "seq_logw_t": 0.0} for i in range(10)]
        f = root / f"{name}.jsonl"
        f.write_text("".join(json.dumps(r) + "\n" for r in recs))
        (root / f"{name}.diagnostics.jsonl").write_text("".join(
            json.dumps({k: v for k, v in r.items() if k not in ("messages", "original_answer")}
                       | {"alpha_method": "kl_symmetry" if name == "q" else "fixed"}) + "\n" for r in recs))
        files.append(f)
    return files


def test_comparison_of_several_runs_renders_table_and_chart(chromium, tmp_path, capsys):
    files = answer_runs(tmp_path)
    out = tmp_path / "cmp.html"
    assert main(["report", *map(str, files), "-o", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["runs"] == 3
    html = out.read_text()
    table = html.split("id='comparison-table'")[1].split("</table>")[0]
    assert "pi_theta alone (alpha = 1)" in table and "pi_t alone (alpha = 0)" in table and "0.3333 [" not in table
    assert "0.400 [" in table and "—" in table  # q's accuracy 4/10; tokens/s absent (no summary.json)
    assert "say next to nothing about π_θ" in html  # pi_t's sequence ESS is ~1
    assert "alt='accuracy by sampler'" in html and "answer 7 vs reference" not in html  # JS builds that line

    dom = chrome(chromium, tmp_path, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000",
                 "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout).group(0)
    assert 'data-comparison-rows="3"' in body and "data-error" not in body
    shown, loaded = map(int, re.search(r'data-images="(\d+)/(\d+)"', body).groups())
    assert shown == loaded >= 6, body  # every chart decoded, the accuracy chart among them
    assert re.search(r"answer 7 vs reference &quot;7&quot; ✓|answer 7 vs reference \"7\" ✓", dom.stdout)

    shot = tmp_path / "cmp.png"
    r = chrome(chromium, tmp_path, "--hide-scrollbars", "--window-size=1200,1400", f"--screenshot={shot}", out.as_uri())
    assert r.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", r.stderr[-2000:]
    with capsys.disabled():
        print(f"\ncomparison report screenshot: {shot}")
