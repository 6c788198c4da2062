"""What `qstar generate` tells the user while it runs: the counts (Stats) and the progress line.

On a terminal the line is redrawn in place (`\\r`) once a second; into a file or a pipe (a job's
log) it is a plain line every LOG_EVERY seconds, and the final figures are printed once.
Not for: the end-of-run summary (run.py) or what the records hold (records.py).
"""
from __future__ import annotations

import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

TTY_EVERY = 1.0    # seconds between redraws on a terminal
LOG_EVERY = 30.0   # seconds between lines when stderr is a file or a pipe: a log stays readable


def reason_key(msg: str) -> str:
    """The summary's bucket for a skip message."""
    for key in ("empty prompt", "missing field", "too long", "no user turn", "adapter", "error"):
        if key in msg:
            return key
    return "other"


@dataclass
class Stats:
    done_before: int = 0
    done: int = 0
    tokens: int = 0
    alpha_sum: float = 0.0
    alpha_n: int = 0
    skipped: Counter = field(default_factory=Counter)
    t0: float = field(default_factory=time.perf_counter)
    cuda_graphs: str | None = None      # "on (N graphs)" / "off (<reason>)"; None: not the hf engine
    cross_tokenizer: dict | None = None  # cross-tokenizer mode's facts (rule, teacher tokenizer, window)

    def skip(self, log, reason: str, count: int, stage: str, **where) -> None:
        """Count `count` samples skipped for `reason` and list them in the skipped file.
        stage: row (the dataset row), prompt (tokenising it) or sample (the engine)."""
        self.skipped[reason_key(reason)] += count
        log.write(dict(**where, reason=reason, stage=stage, count=count))


def is_tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream: treat as a log file
        return False


class Progress:
    """One stderr line: samples, samples/s, tokens/s, ETA, running mean alpha."""

    def __init__(self, total: int, quiet: bool, stats: Stats, stream=None):
        self.total, self.quiet, self.s = total, quiet, stats
        self.stream = stream or sys.stderr
        self.tty = is_tty(self.stream)
        self.last_print = float("-inf")  # the first sample is shown at once: a sign of life
        self.shown = None        # `done` when the line was last printed (None: never)
        self.open_line = False   # a `\r` line with no newline yet

    def line(self) -> str:
        s, el = self.s, max(time.perf_counter() - self.s.t0, 1e-9)
        rate = s.done / el
        eta = (self.total - s.done) / rate if rate > 0 else float("nan")
        alpha = s.alpha_sum / s.alpha_n if s.alpha_n else float("nan")
        eta_s = f"{int(eta // 60)}m{int(eta % 60):02d}s" if math.isfinite(eta) else "?"
        return (f"[qstar] {s.done}/{self.total} samples  {rate:.2f} samples/s  {s.tokens / el:.1f} tok/s  "
                f"ETA {eta_s}  alpha {alpha:.3f}")

    def update(self, force: bool = False) -> None:
        """force: the final figures (printed once, then the line is ended)."""
        now = time.perf_counter()
        every = TTY_EVERY if self.tty else LOG_EVERY
        if self.quiet or (not force and now - self.last_print < every):
            return
        if force and not self.tty and self.shown == self.s.done:
            return  # a log already holds these figures
        self.last_print, self.shown = now, self.s.done
        if self.tty:
            print("\r" + self.line(), end="\n" if force else "", file=self.stream, flush=True)
            self.open_line = not force
        else:
            print(self.line(), file=self.stream, flush=True)

    def say(self, msg: str) -> None:
        """A message of its own line (ends a `\\r` progress line first)."""
        if self.open_line:
            print(file=self.stream)
            self.open_line = False
        print(msg, file=self.stream, flush=True)
