"""Run `qstar generate`: dataset -> prompts -> engine -> records, with progress and SIGINT.

Order matters for a user: everything cheap is checked before the models load (dataset, prompt
field, output dir, resume config), so mistakes fail in seconds.
Not for: the decode loop (engine.core) or record layout (records.py).
"""
from __future__ import annotations

import math
import shlex
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from ..config import SamplingParams
from ..core import Request
from ..prompts import PromptError, render
from . import data, records, store
from .config import GenerateConfig


class RunError(RuntimeError):
    """Stops the run with a message and a non-zero exit (never a traceback)."""


@dataclass
class Stats:
    done_before: int = 0
    done: int = 0
    tokens: int = 0
    alpha_sum: float = 0.0
    alpha_n: int = 0
    skipped: Counter = field(default_factory=Counter)
    t0: float = field(default_factory=time.perf_counter)
    last_print: float = 0.0

    def skip(self, log, reason: str, count: int, **where) -> None:
        """Count `count` samples skipped for `reason` and list them in the skipped file."""
        self.skipped[_reason(reason)] += count
        log.write(dict(**where, reason=reason))


class Progress:
    """One stderr line: samples, samples/s, tokens/s, ETA, running mean alpha."""

    def __init__(self, total: int, quiet: bool, stats: Stats):
        self.total, self.quiet, self.s = total, quiet, stats

    def line(self) -> str:
        s, el = self.s, max(time.perf_counter() - self.s.t0, 1e-9)
        rate = s.done / el
        eta = (self.total - s.done) / rate if rate > 0 else float("nan")
        alpha = s.alpha_sum / s.alpha_n if s.alpha_n else float("nan")
        eta_s = f"{int(eta // 60)}m{int(eta % 60):02d}s" if math.isfinite(eta) else "?"
        return (f"[qstar] {s.done}/{self.total} samples  {rate:.2f} samples/s  {s.tokens / el:.1f} tok/s  "
                f"ETA {eta_s}  alpha {alpha:.3f}")

    def update(self, force: bool = False) -> None:
        now = time.perf_counter()
        if self.quiet or (not force and now - self.s.last_print < 1.0):
            return
        self.s.last_print = now
        print("\r" + self.line(), end="\n" if force else "", file=sys.stderr, flush=True)


def _rows_to_work(cfg: GenerateConfig, done: set, skipped_log) -> tuple[list, Stats]:
    rows = data.load_rows(cfg.dataset, cfg.split, cfg.subset, cfg.num_samples)
    if not rows:
        raise RunError(f"dataset {cfg.dataset!r} has no rows")
    adapter = data.load_adapter(cfg.adapter) if cfg.adapter else None
    columns = sorted({k for r in rows[:1000] for k in r})
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
            stats.skip(skipped_log, str(e), len(todo), sample_idx=idx)
            continue
        originals = data.original_columns(row, {field_name} if field_name else set())
        work.append((idx, prompts, originals, todo))
    return work, stats


def _reason(msg: str) -> str:
    for key in ("empty prompt", "missing field", "too long", "no user turn", "adapter", "error"):
        if key in msg:
            return key
    return "other"


def _tokenize(tok, limits: tuple[int, int], cfg: GenerateConfig, work, stats: Stats,
              skipped_log) -> tuple[list[Request], dict]:
    """Requests for every sample to make, and (sample_idx, n) -> (prompts, original columns).
    limits: (max positions of model_theta, of model_t)."""
    meta = {}
    ct_theta = not (cfg.no_chat_template or cfg.no_chat_template_theta)
    ct_t = not (cfg.no_chat_template or cfg.no_chat_template_t)
    reqs = []
    for idx, prompts, originals, todo in work:
        try:
            ids_theta = render(tok, prompts.theta, chat_template=ct_theta, system_prompt=cfg.system_prompt)
            ids_t = render(tok, prompts.t, chat_template=ct_t, system_prompt=cfg.system_prompt)
            ids_theta = _fit(ids_theta, limits[0], "model_theta", idx, cfg)
            ids_t = _fit(ids_t, limits[1], "model_t", idx, cfg)
        except (PromptError, data.RowError) as e:
            stats.skip(skipped_log, str(e), len(todo), sample_idx=idx)
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


def load_pair(cfg: GenerateConfig):
    """Both models and the engine as the run's options say (also what each Ray replica loads)."""
    from ..api import create_optimal_sampling_model

    m = cfg.mixture()
    return create_optimal_sampling_model(cfg.model_theta, cfg.model_t, alpha_method=m.alpha_method,
                                         alpha=m.alpha, alpha_min=m.alpha_min, alpha_max=m.alpha_max,
                                         support=m.support, force_teacher=m.force_teacher, device=cfg.device, dtype=cfg.dtype, max_batch_size=cfg.batch_size,
                                         threads=cfg.threads, backend=cfg.backend)


def _engine(cfg: GenerateConfig):
    """(engine with .run, tokenizer, (max positions theta, t)): the pair here, or replicas on Ray
    (then this process loads only the tokenizer; the replicas report the context lengths)."""
    if cfg.ray:
        from .distributed import RayEngine

        eng = RayEngine(cfg)
        return eng, eng.tokenizer, eng.max_pos
    qm = load_pair(cfg)
    return qm.engine, qm.tokenizer, (qm.pair.max_pos_theta, qm.pair.max_pos_t)


def run_generate(cfg: GenerateConfig) -> int:
    """Exit code: 0 done, 130 interrupted (resumable)."""
    if cfg.backend == "vllm":  # refuse per-side prompts before anything loads
        from ..backends.vllm.adapter import check_generate_config

        check_generate_config(cfg)
    p, done = store.prepare(cfg, cfg.hashed())
    skipped_log = store.Appender(p["skipped"])
    work, stats = _rows_to_work(cfg, done, skipped_log)
    engine, tok, limits = _engine(cfg)
    reqs, meta = _tokenize(tok, limits, cfg, work, stats, skipped_log)
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                            top_p=cfg.top_p, min_p=cfg.min_p, seed=cfg.seed, n=cfg.n,
                            ignore_eos=cfg.ignore_eos, stop=cfg.stop)
    out, diag = store.Appender(p["output"]), store.Appender(p["diagnostics"] if cfg.save_diagnostics else None)
    progress = Progress(len(reqs), cfg.quiet, stats)
    interrupted = []

    def on_sigint(signum, frame):
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(True)
        print("\n[qstar] interrupted: finishing the samples in hand (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    def finished(o):
        idx = o.prompt_index
        prompts, originals = meta[(idx, o.sample_index)]
        if o.finish_reason == "error":
            stats.skip(skipped_log, o.error or "error", 1, sample_idx=idx, n=o.sample_index)
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
    finally:
        signal.signal(signal.SIGINT, old)
        for f in (out, diag, skipped_log):
            f.close()
    progress.update(force=True)
    if cfg.format == "parquet" and not interrupted:
        store.write_parquet(p["output"], p["parquet"])
    _summary(cfg, p, stats, len(reqs), interrupted)
    return 130 if interrupted else 0


def _summary(cfg, p, stats: Stats, planned: int, interrupted) -> None:
    el = max(time.perf_counter() - stats.t0, 1e-9)
    alpha = stats.alpha_sum / stats.alpha_n if stats.alpha_n else float("nan")
    skipped = ", ".join(f"{k}: {v}" for k, v in sorted(stats.skipped.items())) or "none"
    lines = [f"[qstar] done {stats.done} samples this run ({stats.done_before} before), "
             f"skipped {sum(stats.skipped.values())} ({skipped})",
             f"[qstar] {stats.tokens} tokens in {el:.1f} s = {stats.tokens / el:.1f} tok/s; mean alpha {alpha:.4f}",
             f"[qstar] records: {p['output']}" + (f"  diagnostics: {p['diagnostics']}" if cfg.save_diagnostics else "")]
    if stats.skipped:
        lines.append(f"[qstar] skipped rows and reasons: {p['skipped']}")
    if interrupted:
        argv = [a for a in sys.argv if a != "--overwrite"]
        lines.append("[qstar] interrupted; resume with: " + " ".join(shlex.quote(a) for a in argv))
    print("\n".join(lines), file=sys.stderr, flush=True)
