"""`qstar check`'s defaults and its PASS/FAIL table (no torch: the CLI reads these first).

Not for: computing the checks (runner.py, stats.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

PROMPTS = ("What is 7 times 8? Answer with a number.",
           "Write one sentence about the sea.",
           "List three prime numbers.")
TOLERANCE = {"float32": 1e-3, "float16": 5e-2, "bfloat16": 1e-1}
FLAG_FIELDS = ("model_theta", "model_t", "alpha_method", "alpha", "alpha_min", "alpha_max", "support_top_k",
               "support_top_p", "force_teacher", "temperature", "top_k", "top_p", "min_p", "seed", "speculative", "draft",
               "batch_size", "device", "dtype", "threads", "backend", "cross_tokenizer")


@dataclass
class Row:
    name: str
    value: str
    limit: str
    ok: bool
    detail: dict = field(default_factory=dict)
    needed: int = 0  # > 0: too few draws for a valid test; this many are needed (the row is not judged)

    @property
    def result(self) -> str:
        return "FAIL" if not self.ok else f"NEED {self.needed} DRAWS" if self.needed else "PASS"


@dataclass
class Report:
    config: dict
    rows: list[Row] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(r.ok and not r.needed for r in self.rows)

    @property
    def needed(self) -> int:
        """Draws per prompt that make every first-token test valid (0: they all are)."""
        return max([r.needed for r in self.rows] + [0])

    @property
    def exit_code(self) -> int:
        """0 every row passes, 1 a row fails, 3 no row fails but a test had too few draws."""
        if any(not r.ok for r in self.rows) or not self.rows:
            return 1
        return 3 if self.needed else 0

    def table(self) -> str:
        w = max(len(r.name) for r in self.rows) if self.rows else 10
        v = max([len(r.value) for r in self.rows] + [5])
        lines = [f"{'check':<{w}}  {'value':<{v}}  {'limit':<12}  result"]
        lines += [f"{r.name:<{w}}  {r.value:<{v}}  {r.limit:<12}  {r.result}" for r in self.rows]
        failed = [r.name for r in self.rows if not r.ok]
        if failed:
            lines.append(f"RESULT: FAIL ({len(self.rows) - len(failed)}/{len(self.rows)} rows pass; failed: "
                         f"{', '.join(failed)})")
        elif self.needed:
            lines.append(f"RESULT: not enough draws: {self.needed} needed (rerun with --draws {self.needed}; "
                         "no row failed)")
        else:
            lines.append(f"RESULT: PASS ({len(self.rows)}/{len(self.rows)} rows pass)")
        return "\n".join(lines)
