"""`qstar generate --ray` on one local Ray instance (2 CPUs, shared by the module) with the tiny pair:
the records of a one-process run, a killed replica replaced, a SIGKILLed driver resumed; the
clear errors; and the pieces (chunking, the wire format) on their own."""
import json
import random
import signal
import socket
import sys
import threading
import time
import warnings

import pytest

from engine.cli import main
from engine.core import Request
from engine.outputs import RECORD_FIELDS, SampleOutput
from test_crash_resume import start
from test_pipeline import ROWS, write_jsonl

# they spawn processes (and a Ray instance): under `pytest -n 2` (make test) one worker runs them in turn
pytestmark = pytest.mark.xdist_group("processes")

try:
    import ray
except ImportError:
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="pip install 'qstar[ray]'")
KEYS = [(i, j) for i in range(10) for j in range(2)]


def args(pair_dirs, ds, out, *extra):
    return ["generate", "--model-theta", pair_dirs[0], "--model-t", pair_dirs[1], "--dataset", str(ds),
            "--output", str(out), "--n", "2", "--max-new-tokens", "120", "--ignore-eos", "--batch-size", "2",
            "--threads", "1", "--save-token-stats", "--quiet", *map(str, extra)]


def records(out):
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    keys = [(r["sample_idx"], r["n"]) for r in rows]
    assert len(keys) == len(set(keys)), "a key was written twice"
    return {k: r for k, r in zip(keys, rows)}


def assert_same(got: dict, want: dict):
    """Same keys and tokens; floats equal up to batch-composition noise (~1e-7)."""
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        g = got[k]
        assert g["token_ids"] == w["token_ids"] and g["messages"] == w["messages"], k
        for f, v in w.items():
            if isinstance(v, float):
                assert g[f] == pytest.approx(v, rel=1e-5, abs=1e-5), (k, f)
            elif isinstance(v, list) and v and isinstance(v[0], (float, type(None))):
                assert g[f] == pytest.approx(v, rel=1e-5, abs=1e-5, nan_ok=True), (k, f)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rows = [dict(r, problem=f"{r['problem']} (variant {k})", id=f"{r['id']}-{k}") for k in range(2) for r in ROWS]
    rows.append({"problem": "the quick brown fox " * 80, "id": "too-long"})  # skipped, as in one process
    return write_jsonl(tmp_path_factory.mktemp("data") / "d.jsonl", rows)


@pytest.fixture(scope="module")
def reference(pair_dirs, dataset, tmp_path_factory):
    """The one-process run every Ray run must equal."""
    out = tmp_path_factory.mktemp("ref") / "ref.jsonl"
    assert main(args(pair_dirs, dataset, out)) == 0
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local Ray instance for the module; its GCS address lets subprocess drivers join it."""
    if ray is None:
        pytest.skip("pip install 'qstar[ray]'")
    with warnings.catch_warnings():  # Ray's FutureWarning about GPU env vars
        warnings.simplefilter("ignore", FutureWarning)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING",
                 _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@needs_ray
def test_two_replicas_write_the_records_of_a_one_process_run(pair_dirs, dataset, reference, cluster, tmp_path):
    out = tmp_path / "o.jsonl"
    assert main(args(pair_dirs, dataset, out, "--ray", "local", "--num-workers", 2, "--chunk-size", 2)) == 0
    assert_same(records(out), records(reference))
    diag = [json.loads(x) for x in (tmp_path / "o.diagnostics.jsonl").read_text().splitlines()]
    assert sorted((d["sample_idx"], d["n"]) for d in diag) == KEYS
    skipped = lambda p: p.with_suffix(".skipped.jsonl").read_text()  # noqa: E731
    assert skipped(out) == skipped(reference) and "too long" in skipped(out)
    config = lambda p: {k: v for k, v in json.loads(p.read_text())["config"].items() if k != "output"}  # noqa: E731
    assert config(tmp_path / "o.manifest.json") == config(reference.with_suffix(".manifest.json"))  # same resume key
    deadline = time.time() + 10  # ray.kill is asynchronous
    while ray.util.list_named_actors(all_namespaces=True) and time.time() < deadline:
        time.sleep(0.1)
    assert not ray.util.list_named_actors(all_namespaces=True), "the run's replicas must be gone"


def kill_one_replica_once_writing(out, killed: list):
    deadline = time.time() + 120
    while time.time() < deadline and not (out.exists() and out.stat().st_size > 0):
        time.sleep(0.01)
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "qstar-replica" in a["name"]]
    if names:
        actor = next(a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"] == names[0])
        ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))
        killed.append(names[0])


@needs_ray
def test_a_killed_replica_is_replaced_and_every_key_is_written_once(pair_dirs, dataset, reference, cluster,
                                                                     tmp_path, capsys):
    out, killed = tmp_path / "o.jsonl", []
    killer = threading.Thread(target=kill_one_replica_once_writing, args=(out, killed))
    killer.start()
    code = main([a for a in args(pair_dirs, dataset, out, "--ray", cluster, "--num-workers", 2, "--chunk-size", 2)
                 if a != "--quiet"])
    killer.join()
    err = capsys.readouterr().err
    assert code == 0, err
    assert killed and f"{killed[0]} died" in err and "(1 replaced)" in err
    assert_same(records(out), records(reference))


@needs_ray
def test_sigkilled_driver_resumes_with_ray(pair_dirs, dataset, reference, cluster, tmp_path):
    out = tmp_path / "o.jsonl"
    p = start([sys.executable, "-m", "engine.cli",
               *args(pair_dirs, dataset, out, "--ray", cluster, "--num-workers", 2, "--chunk-size", 2)])
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None and not (out.exists() and out.stat().st_size > 0):
        time.sleep(0.02)
    time.sleep(random.Random(3).uniform(0.0, 0.3))
    p.send_signal(signal.SIGKILL)
    p.wait()
    partial = out.read_text()
    if not partial.endswith("\n"):  # a torn last line is what resume cuts off
        partial = partial[:partial.rfind("\n") + 1]
    seen = [json.loads(x) for x in partial.splitlines()]
    assert 0 < len(seen) < len(KEYS), "the kill should land mid-run"
    assert len({(r["sample_idx"], r["n"]) for r in seen}) == len(seen)
    assert main(args(pair_dirs, dataset, out, "--ray", cluster, "--num-workers", 2, "--chunk-size", 2)) == 0
    assert_same(records(out), records(reference))


def test_chunks_keep_rows_whole_and_renumber():
    from engine.pipeline.distributed.driver import chunks

    reqs = [Request(index=k, group=g, ids_theta=[1], ids_t=[1], key=k, prompt_index=g, sample_index=j)
            for k, (g, j) in enumerate((g, j) for g in range(5) for j in range(3))]
    cs = chunks(reqs, 4)
    assert [len(c) for c in cs] == [6, 6, 3]
    assert all([r.index for r in c] == list(range(len(c))) for c in cs)
    assert [(r.prompt_index, r.sample_index) for c in cs for r in c] == [(g, j) for g in range(5) for j in range(3)]


def test_wire_round_trip_is_exact():
    from engine.pipeline.distributed import wire

    rng = random.Random(0)
    outs = []
    for i in range(3):
        T = [5, 0, 3][i]
        o = SampleOutput(prompt_index=i, sample_index=1, key=-7 + i, text=f"t{i}", token_ids=list(range(T)),
                         finish_reason="error" if T == 0 else "stop", error="bad" if T == 0 else None)
        for f in RECORD_FIELDS:  # float32 values, as the engine makes them (drafted included)
            setattr(o, f, [float(wire.np.float32(rng.gauss(0, 3))) for _ in range(T)])
        o.kl_t[:1] = [float("inf")] if T else []
        outs.append(o)
    back = wire.unpack(wire.pack([outs[0], None, outs[1], outs[2]]))
    assert back[1] is None and [b for b in back if b] == outs


def test_without_ray_the_error_names_the_extra(pair_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    ds = write_jsonl(tmp_path / "d.jsonl", ROWS[:1])
    assert main(args(pair_dirs, ds, tmp_path / "o.jsonl", "--ray", "local")) == 2
    err = capsys.readouterr().err
    assert "pip install 'qstar[ray]'" in err and err.strip().count("\n") == 0 and "Traceback" not in err


def test_ray_flags_without_ray_are_refused(pair_dirs, tmp_path, capsys):
    ds = write_jsonl(tmp_path / "d.jsonl", ROWS[:1])
    assert main(args(pair_dirs, ds, tmp_path / "o.jsonl", "--num-workers", 2)) == 2
    assert "--num-workers only with --ray: add --ray local" in capsys.readouterr().err


@needs_ray
def test_unreachable_address_and_too_few_gpus_fail_in_one_line(pair_dirs, tmp_path, capsys, cluster):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ds = write_jsonl(tmp_path / "d.jsonl", ROWS[:1])
    cases = [(["--ray", f"127.0.0.1:{port}"], f"Ray cluster at 127.0.0.1:{port} is unreachable"),
             (["--ray", "local", "--num-workers", 2, "--gpus-per-worker", 1],
              "needs 2 GPUs but the Ray cluster (local) has 0"),
             (["--ray", "local", "--num-workers", 3], "need 3 CPUs but the Ray cluster (local) has 2")]
    for extra, needle in cases:
        t0 = time.time()
        assert main(args(pair_dirs, ds, tmp_path / "o.jsonl", *extra)) == 2
        err = capsys.readouterr().err
        assert needle in err and err.strip().count("\n") == 0 and "Traceback" not in err, err
        assert time.time() - t0 < 15


@needs_ray
def test_cross_tokenizer_replicas_write_the_records_of_a_one_process_run(cluster, tmp_path):
    """--cross-tokenizer on Ray: the driver renders pi_t's prompts with pi_t's own tokenizer and
    the replicas re-tokenize for the teacher exactly as one process does."""
    from test_cross_tokenizer import lm, toks

    dirs = []
    for name, side, seed in (("tiny", "theta", 1), ("smol", "t", 2)):
        lm(name, seed).save_pretrained(tmp_path / side)
        toks(name).save_pretrained(tmp_path / side)
        dirs.append(str(tmp_path / side))
    ds = write_jsonl(tmp_path / "d.jsonl", ROWS[:3])
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    extra = ["--cross-tokenizer", "--max-new-tokens", "24"]
    assert main(args(dirs, ds, one, *extra)) == 0
    assert main(args(dirs, ds, two, *extra, "--ray", "local", "--num-workers", 2, "--chunk-size", 2)) == 0
    assert_same(records(two), records(one))
    assert all(r["carry_direct"] is not None for r in records(two).values())
