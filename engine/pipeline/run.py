"""Run `qstar generate`: dataset -> prompts -> engine -> records, with progress and SIGINT.

Order matters for a user: everything cheap is checked before the models load (flags, dataset,
prompt field, template placeholders, output path, resume config), so mistakes fail in seconds
and leave no file that blocks the corrected rerun; a resumed run with nothing left to do says so
without loading the models.
Not for: the decode loop (engine.core), loading the pair (pair.py) or record layout (records.py).
"""
from __future__ import annotations

import json
import shlex
import signal
import sys
import time

from ..config import SamplingParams
from ..prompts import PromptError, render
from . import data, records, store
from .config import GenerateConfig
from .errors import RunError
from .pair import load_pair
from .progress import Progress, Stats

__all__ = ["RunError", "run_generate"]  # cli.py catches run.RunError


def _rows_to_work(cfg: GenerateConfig, done: set, skipped_log) -> tuple[list, Stats]:
    rows = data.load_rows(cfg.dataset, cfg.split, cfg.subset, cfg.num_samples)
    if not rows:
        raise RunError(f"dataset {cfg.dataset!r} has no rows")
    adapter = data.load_adapter(cfg.adapter) if cfg.adapter else None
    columns = sorted({k for r in rows[:1000] for k in r})
    data.check_columns(columns, cfg)
    field_name = None if (adapter or cfg.theta_template) else data.detect_field(columns, cfg.prompt_field)
    stats = Stats(done_before=len(done))
    work = []
    for idx, row in enumerate(rows):
        todo = [j for j in range(cfg.n) if (idx, j) not in done]
        if not todo:
            continue
        try:
            prompts = data.make_prompts(row, idx, cfg, field_name, adapter)
        except data.RowError as e:
            stats.skip(skipped_log, str(e), len(todo), "row", sample_idx=idx)
            continue
        originals = data.original_columns(row, {field_name} if field_name else set())
        work.append((idx, prompts, originals, todo))
    return work, stats


def _tokenize(toks, limits: tuple[int, int], cfg: GenerateConfig, work, stats: Stats,
              skipped_log) -> tuple[list, dict]:
    """Requests for every sample to make, and (sample_idx, n) -> (prompts, original columns).
    toks: (tokenizer of model_theta, of model_t: the same one unless --cross-tokenizer);
    limits: (max positions of model_theta, of model_t)."""
    from ..core import Request  # torch: only once the models are loaded

    meta = {}
    ct_theta = not (cfg.no_chat_template or cfg.no_chat_template_theta)
    ct_t = not (cfg.no_chat_template or cfg.no_chat_template_t)
    reqs = []
    for idx, prompts, originals, todo in work:
        try:
            ids_theta = render(toks[0], prompts.theta, chat_template=ct_theta, system_prompt=cfg.system_prompt)
            ids_t = render(toks[1], prompts.t, chat_template=ct_t, system_prompt=cfg.system_prompt)
            ids_theta = _fit(ids_theta, limits[0], "model_theta", idx, cfg)
            ids_t = _fit(ids_t, limits[1], "model_t", idx, cfg)
        except (PromptError, data.RowError) as e:
            stats.skip(skipped_log, str(e), len(todo), "prompt", sample_idx=idx)
            continue
        for j in todo:
            r = Request(index=len(reqs), group=idx, ids_theta=ids_theta, ids_t=ids_t,
                        key=records.hash64(prompts.sample_id, j), prompt_index=idx, sample_index=j)
            meta[(idx, j)] = (prompts, originals)
            reqs.append(r)
    return reqs, meta


def _fit(ids: list[int], limit: int, side: str, idx: int, cfg: GenerateConfig) -> list[int]:
    if len(ids) < limit:
        return ids
    msg = f"prompt too long for {side}: {len(ids)} tokens, context {limit}"
    if cfg.on_long_prompt == "error":
        raise RunError(f"row {idx}: {msg} (--on-long-prompt skip or truncate-left to go on)")
    if cfg.on_long_prompt == "truncate-left":
        return ids[-max(1, limit - min(cfg.max_new_tokens, limit // 2)):]
    raise data.RowError(msg)


def _engine(cfg: GenerateConfig):
    """(engine with .run, (tokenizer theta, t), (max positions theta, t)): the pair here, or replicas on Ray
    (then this process loads only the tokenizer; the replicas report the context lengths)."""
    t0 = time.perf_counter()
    say = (lambda msg: None) if cfg.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(f"[qstar] loading models {cfg.model_theta} and {cfg.model_t} …")
    if cfg.ray:
        from .distributed import RayEngine  # needs Ray: imported only under --ray

        eng = RayEngine(cfg)
        got = eng, (eng.tokenizer, eng.tokenizer_t), eng.max_pos
    else:
        qm = load_pair(cfg)
        got = qm.engine, (qm.tokenizer, qm.pair.tokenizer_t or qm.tokenizer), (qm.pair.max_pos_theta, qm.pair.max_pos_t)
    say(f"[qstar] models loaded in {time.perf_counter() - t0:.1f} s")
    return got


def _unchanged(work, previous: list[dict]) -> list[dict] | None:
    """The previous run's prompt-stage skips (a prompt too long, say), when they cover every row
    left to do: under the same config the same rows would be skipped again, so there is nothing to
    sample and no model to load. None: the models must load."""
    by_row = {e.get("sample_idx"): e for e in previous if e.get("stage") == "prompt"}
    if all(idx in by_row for idx, *_ in work):
        return [by_row[idx] for idx, *_ in work]
    return None


def run_generate(cfg: GenerateConfig) -> int:
    """Exit code: 0 done, 130 interrupted (resumable), 2 the parquet file could not be written."""
    if cfg.backend == "vllm":  # refuse per-side prompts before anything loads
        from ..backends.vllm.adapter import check_generate_config

        check_generate_config(cfg)
    for note in cfg.notes():
        print(f"[qstar] note: {note}", file=sys.stderr, flush=True)
    p, done = store.prepare(cfg, cfg.hashed())
    previous = store.take_skipped(p)  # trusted only beside records made with this config (done)
    skipped_log = store.Appender(p["skipped"])
    try:
        work, stats = _rows_to_work(cfg, done, skipped_log)
        carried = _unchanged(work, previous if done else [])
        if carried is not None:  # nothing to sample, so no model to load
            for e in carried:
                stats.skip(skipped_log, e.get("reason", "other"), e.get("count", 1), "prompt",
                           sample_idx=e["sample_idx"])
            print(f"[qstar] nothing to do: {len(done)} samples already in {p['output']}, every other row "
                  "skipped (see the summary)" if stats.skipped else
                  f"[qstar] nothing to do: all {len(done)} samples are already in {p['output']}",
                  file=sys.stderr, flush=True)
            return _finish(cfg, p, stats, interrupted=[])
        engine, tok, limits = _engine(cfg)
        reqs, meta = _tokenize(tok, limits, cfg, work, stats, skipped_log)
        return _generate(cfg, p, engine, reqs, meta, stats, skipped_log)
    finally:
        skipped_log.close()


def _generate(cfg: GenerateConfig, p, engine, reqs, meta, stats: Stats, skipped_log) -> int:
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                            top_p=cfg.top_p, min_p=cfg.min_p, seed=cfg.seed, n=cfg.n,
                            ignore_eos=cfg.ignore_eos, stop=cfg.stop, speculative=cfg.speculative, draft=cfg.draft)
    hashed = cfg.hashed()
    cross = _cross_facts(engine)

    drafted = {}
    if cfg.speculative and hasattr(engine, "pair"):
        from ..speculative import resolve_draft

        drafted["draft_resolved"] = resolve_draft(engine.pair, cfg.draft)
        store.check_resolved(p, drafted)  # the hash holds draft as given; the side "auto" chose is guarded here

    def graphs() -> dict:  # execution facts for the manifest
        out = {"cuda_graphs": engine.cuda_graphs} if hasattr(engine, "cuda_graphs") else {}
        return dict(out, **drafted, **cross)

    out = store.Appender(p["output"], before_open=lambda: store.write_manifest(p, hashed, graphs()))
    diag = store.Appender(p["diagnostics"] if cfg.save_diagnostics else None)
    progress = Progress(len(reqs), cfg.quiet, stats)
    interrupted = []

    def on_sigint(signum, frame):
        if interrupted:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now (the files are closed below)
        interrupted.append(True)
        progress.say("[qstar] interrupted: finishing the samples in hand (Ctrl-C again to stop now)")

    def finished(o):
        idx = o.prompt_index
        prompts, originals = meta[(idx, o.sample_index)]
        if o.finish_reason == "error":
            stats.skip(skipped_log, o.error or "error", 1, "sample", sample_idx=idx, n=o.sample_index)
            return
        diag.write(records.diagnostics(o, sample_idx=idx, sample_id=prompts.sample_id,
                                       alpha_method=cfg.alpha_method, token_stats=cfg.save_token_stats))
        out.write(records.record(o, sample_idx=idx, sample_id=prompts.sample_id,
                                 prompt_theta=prompts.theta, prompt_t=prompts.t, originals=originals,
                                 system_prompt=cfg.system_prompt, token_stats=cfg.save_token_stats))
        stats.done += 1
        stats.tokens += len(o.token_ids)
        stats.alpha_sum += sum(o.alpha)
        stats.alpha_n += len(o.alpha)
        progress.update()

    old = signal.signal(signal.SIGINT, on_sigint)
    stats.t0 = time.perf_counter()  # rates count generation, not model loading
    try:
        engine.run(reqs, params, progress=finished, should_stop=lambda: bool(interrupted))
    except KeyboardInterrupt:
        interrupted.append(True)  # what was written stays: whole lines, closed below
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a third Ctrl-C must not cut the closing short
        try:
            for f in (out, diag, skipped_log):
                f.close()
        finally:
            signal.signal(signal.SIGINT, old)
    progress.update(force=True)
    stats.cuda_graphs = graphs().get("cuda_graphs")  # "on (N graphs)" / "off (<reason>)"; None: not the hf engine
    stats.cross_tokenizer = cross.get("cross_tokenizer")
    return _finish(cfg, p, stats, interrupted)


def _cross_facts(engine) -> dict:
    """--cross-tokenizer: the mapping rule, the teacher tokenizer's fingerprint and the window
    (manifest and summary; the rule's version and the flag are also in the config hash)."""
    cross = getattr(getattr(engine, "pair", None), "cross", None)
    return {"cross_tokenizer": cross.summary()} if cross is not None else {}


def _finish(cfg, p, stats: Stats, interrupted) -> int:
    """The parquet file (a finished run), then the summary; the exit code."""
    parquet, code = None, 130 if interrupted else 0
    if cfg.format == "parquet" and not interrupted:
        try:
            as_text = store.write_parquet(p["output"], p["parquet"])
            parquet = p["parquet"]
        except (OSError, ValueError, ImportError) as e:  # pyarrow errors are ValueErrors
            print(f"[qstar] error: {p['parquet']} not written ({type(e).__name__}: {e}); the records are in "
                  f"{p['output']}", file=sys.stderr, flush=True)
            code = 2
        else:
            if as_text:
                many = len(as_text) > 1
                print(f"[qstar] warning: column{'s' * many} {', '.join(as_text)} mix{'es' * (not many)} value "
                      f"types: written to {p['parquet'].name} as strings", file=sys.stderr, flush=True)
    _summary(cfg, p, stats, parquet, interrupted)
    return code


def _summary(cfg, p, stats: Stats, parquet, interrupted) -> None:
    el = max(time.perf_counter() - stats.t0, 1e-9)
    alpha = stats.alpha_sum / stats.alpha_n if stats.alpha_n else float("nan")
    skipped = ", ".join(f"{k}: {v}" for k, v in sorted(stats.skipped.items())) or "none"
    files = f"[qstar] records: {p['output']}" if p["output"].exists() else "[qstar] records: none written"
    if cfg.save_diagnostics and p["diagnostics"].exists():
        files += f"  diagnostics: {p['diagnostics']}"
    if parquet:
        files += f"  parquet: {parquet}"
    lines = [f"[qstar] done {stats.done} samples this run ({stats.done_before} before), "
             f"skipped {sum(stats.skipped.values())} ({skipped})"]
    if stats.done:  # no "mean alpha nan" when nothing was sampled
        lines.append(f"[qstar] {stats.tokens} tokens in {el:.1f} s = {stats.tokens / el:.1f} tok/s; "
                     f"mean alpha {alpha:.4f}")
    lines.append(files)
    if stats.cuda_graphs not in (None, "off (cpu)"):  # a GPU run says whether graphs ran
        lines.append(f"[qstar] cuda_graphs: {stats.cuda_graphs}")
    cross = stats.cross_tokenizer
    if cfg.cross_tokenizer:
        lines.append(f"[qstar] cross-tokenizer mode: {cross or 'on'} (samples record carry_direct, noncanonical)")
    if stats.skipped:
        lines.append(f"[qstar] skipped rows and reasons: {p['skipped']}")
    if interrupted:
        argv = [a for a in sys.argv if a != "--overwrite"]
        lines.append("[qstar] interrupted; resume with: " + " ".join(shlex.quote(a) for a in argv))
    print("\n".join(lines), file=sys.stderr, flush=True)
    if stats.done:  # a resume that samples nothing keeps the last session's figures
        store.write_atomic(p["summary"], json.dumps(dict(
            samples=stats.done, samples_before=stats.done_before, tokens=stats.tokens, seconds=round(el, 3),
            tokens_per_s=round(stats.tokens / el, 3), alpha_mean=alpha if stats.alpha_n else None, interrupted=bool(interrupted),
            skipped=dict(stats.skipped), backend=cfg.backend, device=cfg.device, dtype=cfg.dtype,
            threads=cfg.threads, batch_size=cfg.batch_size, cuda_graphs=stats.cuda_graphs,
            cross_tokenizer=(cross or True) if cfg.cross_tokenizer else None,
            finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z")),
            indent=1) + "\n")
