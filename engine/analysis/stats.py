"""Statistics of one run's diagnostics lines: distributions, the seed's condition checks, and
sequence-level importance-weight diagnostics. Pure: lists of dicts in, plain dicts out.

`alpha` is the weight on pi_theta (q ∝ pi_theta^a · pi_t^(1−a)). A null in a line is a
non-finite value (records.py writes inf/nan as null); every function here counts nulls
instead of dropping them silently.
Not for: reading files or printing (cli.py), drawing (plots.py), HTML (report.py).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# (summary key, per-token array, per-sample mean field); length exists only per sample
FIELDS = (("alpha", "alpha", "alpha_mean"), ("ess_ratio", "ess_ratio", "ess_ratio_mean"),
          ("kl_theta", "kl_theta", "kl_theta_mean"), ("kl_t", "kl_t", "kl_t_mean"),
          ("entropy_theta", "entropy_theta", "entropy_theta_mean"), ("entropy_t", "entropy_t", "entropy_t_mean"),
          ("length", None, "num_tokens"))
TOKEN_KEYS = ("alpha", "ess_ratio", "kl_theta", "kl_t")  # what the token-level checks need
# which check a method satisfies by solving for it (clamped tokens aside)
BY_CONSTRUCTION = {"kl_symmetry": "kl_gap", "ess_balance": "ess_ratio"}


@dataclass(frozen=True)
class Thresholds:
    """The seed's conditions for a good mixture point (defaults from the seed document)."""

    ess_low: float = 0.8     # ESS_theta / ESS_t at least this ...
    ess_high: float = 1.2    # ... and at most this
    kl_tol: float = 0.05     # |KL(q‖pi_theta) − KL(q‖pi_t)| strictly below this
    alpha_low: float = 0.2   # alpha (weight on pi_theta) at least this ...
    alpha_high: float = 0.8  # ... and at most this

    def __post_init__(self):
        if not (self.ess_low <= self.ess_high and self.alpha_low <= self.alpha_high and self.kl_tol > 0):
            raise ValueError(f"bad thresholds {self}: need low <= high for each band and kl_tol > 0")

    def rules(self) -> dict[str, str]:
        return {"ess_ratio": f"ESS ratio in [{self.ess_low:g}, {self.ess_high:g}]",
                "kl_gap": f"|KL(q‖π_θ) − KL(q‖π_t)| < {self.kl_tol:g}",
                "alpha": f"alpha in [{self.alpha_low:g}, {self.alpha_high:g}]",
                "all": "all three at once"}


def as_array(values) -> np.ndarray:
    """float64 array with null -> nan (a null was a non-finite value)."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def describe(values) -> dict:
    """count, null count, mean, std, min, quantiles, max of the finite values (None when none)."""
    x = as_array(values)
    ok = x[np.isfinite(x)]
    out = {"count": int(x.size), "null": int(x.size - ok.size)}
    if ok.size == 0:
        return out | {k: None for k in ("mean", "std", "min", *(_qname(q) for q in QUANTILES), "max")}
    qs = np.quantile(ok, QUANTILES)
    return out | {"mean": float(ok.mean()), "std": float(ok.std()), "min": float(ok.min()),
                  **{_qname(q): float(v) for q, v in zip(QUANTILES, qs)}, "max": float(ok.max())}


def _qname(q: float) -> str:
    return "median" if q == 0.5 else f"q{round(q * 100):02d}"


def has_token_arrays(line: dict) -> bool:
    return all(isinstance(line.get(k), list) for k in TOKEN_KEYS)


def token_level(lines: list[dict]) -> bool:
    """Every line carries per-token arrays: statistics then use tokens, not per-sample means."""
    return bool(lines) and all(has_token_arrays(d) for d in lines)


def level_values(lines: list[dict], key: str, token: bool) -> np.ndarray:
    """Per-token values of `key` (token level) or its per-sample means `<key>_mean`."""
    return token_values(lines, key) if token else sample_values(lines, key + "_mean")


def token_values(lines: list[dict], key: str) -> np.ndarray:
    """One array key concatenated over the lines that have it (null -> nan)."""
    parts = [as_array(d[key]) for d in lines if isinstance(d.get(key), list)]
    return np.concatenate(parts) if parts else np.zeros(0)


def sample_values(lines: list[dict], key: str) -> np.ndarray:
    return as_array([d.get(key) for d in lines])


def distributions(lines: list[dict]) -> dict:
    """{'sample': {field: describe}, 'token': {field: describe} or None}."""
    sample = {name: describe(sample_values(lines, mean_key)) for name, _, mean_key in FIELDS}
    token = None
    if token_level(lines):
        token = {name: describe(token_values(lines, arr)) for name, arr, _ in FIELDS if arr}
    return {"sample": sample, "token": token}


def check_rates(alpha, ess_ratio, kl_theta, kl_t, th: Thresholds) -> dict:
    """Pass rates of the seed's conditions over aligned arrays; nan (null) counts as a fail."""
    with np.errstate(invalid="ignore"):
        passes = {"ess_ratio": (ess_ratio >= th.ess_low) & (ess_ratio <= th.ess_high),
                  "kl_gap": np.abs(kl_theta - kl_t) < th.kl_tol,
                  "alpha": (alpha >= th.alpha_low) & (alpha <= th.alpha_high)}
    passes["all"] = passes["ess_ratio"] & passes["kl_gap"] & passes["alpha"]
    nulls = {"ess_ratio": ~np.isfinite(ess_ratio), "kl_gap": ~np.isfinite(kl_theta - kl_t),
             "alpha": ~np.isfinite(alpha)}
    nulls["all"] = nulls["ess_ratio"] | nulls["kl_gap"] | nulls["alpha"]
    n = int(alpha.size)
    return {k: {"pass_rate": float(p.mean()) if n else None, "passed": int(p.sum()), "n": n,
                "null": int(nulls[k].sum())} for k, p in passes.items()}


def checks(lines: list[dict], th: Thresholds) -> dict:
    """The condition checks at token level when every line has per-token arrays, else per sample
    (on the per-sample means: a mean of per-token ratios / KLs, a weaker test)."""
    token = token_level(lines)
    rates = check_rates(*[level_values(lines, k, token) for k in TOKEN_KEYS], th)
    rules = th.rules()
    for k, r in rates.items():
        r["rule"] = rules[k]
    return {"level": "token" if token else "sample", **rates}


def log_norm_ess(logw) -> float | None:
    """Normalised ESS of weights w = exp(logw): (Σw)² / (n·Σw²) ∈ [1/n, 1], in log space.

    log ESS/n = 2·LSE(logw) − LSE(2·logw) − log n; shifting every logw by a constant changes
    nothing, so sequence log-weights of −10⁴ are fine. A null/-inf logw is a zero weight (a
    sampled token the model gives no mass); None when every weight is zero or there is none.
    """
    lw = as_array(logw)
    lw = np.where(np.isnan(lw), -np.inf, lw)
    if lw.size == 0 or not np.isfinite(lw).any():
        return None
    if np.isposinf(lw).any():  # one infinite weight takes all the mass
        return float(1.0 / lw.size)
    m = lw.max()
    lse1 = m + math.log(np.exp(lw - m).sum())
    lse2 = 2 * m + math.log(np.exp(2 * (lw - m)).sum())
    return float(math.exp(2 * lse1 - lse2 - math.log(lw.size)))


def seq_weights(lines: list[dict]) -> dict:
    """Distribution of the sequence log-weights Σ(logp_x − logp_behavior) and the normalised ESS."""
    out = {}
    for side in ("theta", "t"):
        lw = sample_values(lines, f"seq_logw_{side}")
        per_token = lw / np.maximum(sample_values(lines, "num_tokens"), 1)
        out[side] = {"logw": describe(lw), "logw_per_token": describe(per_token), "ess_norm": log_norm_ess(lw)}
    return out


def method_of(lines: list[dict]) -> tuple[str, dict]:
    counts = Counter(str(d.get("alpha_method", "unknown")) for d in lines)
    method = next(iter(counts)) if len(counts) == 1 else ("mixed" if counts else "unknown")
    return method, dict(counts)


@dataclass
class RunSummary:
    """Everything analyze reports about one run (summary.json holds asdict of each)."""

    name: str
    path: str
    alpha_method: str            # the method of every line, or 'mixed'
    alpha_methods: dict          # method -> number of samples
    n_samples: int
    n_tokens: int
    finish_reasons: dict
    clamped_frac_mean: float | None  # share of tokens whose alpha a clamp decided
    distributions: dict
    checks: dict
    by_construction: list        # checks this run's method satisfies by solving for them
    seq_weights: dict
    notes: list
    sampler: str = ""            # e.g. "pi_theta alone (alpha = 1)": what drew the samples
    answers: dict | None = None  # the answer step (answers.answer_step), when records carry references
    speed: dict | None = None    # <stem>.summary.json of qstar generate (tokens/s ...), when present

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(name: str, path: str, lines: list[dict], th: Thresholds = Thresholds()) -> RunSummary:
    method, counts = method_of(lines)
    ch = checks(lines, th)
    built = sorted({BY_CONSTRUCTION[m] for m in counts if m in BY_CONSTRUCTION})
    clamped = describe(sample_values(lines, "clamped_frac"))["mean"]
    notes = [f"{BY_CONSTRUCTION_NOTE[c]}" for c in built]
    if built and clamped:
        notes.append(f"{clamped:.1%} of tokens had alpha set by --alpha-min/--alpha-max: there the solved "
                     "condition need not hold")
    forced = describe(sample_values(lines, "forced_frac"))["mean"]
    if built and forced:
        notes.append(f"{forced:.1%} of tokens were forced to pi_t (--force-teacher): alpha = 0 there, so the "
                     "solved condition need not hold")
    if ch["level"] == "sample":
        notes.append("checks use per-sample means (no per-token arrays): rerun generate with "
                     "--save-token-stats for token-level checks")
    lengths = sample_values(lines, "num_tokens")
    return RunSummary(
        name=name, path=path, alpha_method=method, alpha_methods=counts, n_samples=len(lines),
        n_tokens=int(np.nansum(lengths)), finish_reasons=dict(Counter(str(d.get("finish_reason")) for d in lines)),
        clamped_frac_mean=clamped, distributions=distributions(lines), checks=ch, by_construction=built,
        seq_weights=seq_weights(lines), notes=notes, sampler=sampler_label(method, lines))


def sampler_label(method: str, lines: list[dict]) -> str:
    """What drew the samples, in words: a fixed alpha of 1 or 0 is one model alone."""
    if method != "fixed":
        return method
    alphas = {d.get("alpha_mean") for d in lines}
    if len(alphas) != 1 or None in alphas:
        return "fixed"
    a = alphas.pop()
    return {1.0: "pi_theta alone (alpha = 1)", 0.0: "pi_t alone (alpha = 0)"}.get(
        a, f"fixed, alpha = {a:g}")


BY_CONSTRUCTION_NOTE = {
    "kl_gap": "kl_symmetry solves KL(q‖π_θ) = KL(q‖π_t) per token, so it passes the KL check by "
              "construction; its ESS check is the informative one",
    "ess_ratio": "ess_balance solves ESS_θ = ESS_t per token, so it passes the ESS check by construction "
                 "(the two methods pick different points); its KL check is the informative one",
}


def comparison(runs: list[RunSummary]) -> list[dict]:
    """One row per run: the numbers to put side by side when several methods were run."""
    rows = []
    for r in runs:
        lvl = r.distributions["token"] or r.distributions["sample"]
        rows.append({"name": r.name, "alpha_method": r.alpha_method, "level": r.checks["level"],
                     "n_samples": r.n_samples, "alpha_mean": lvl["alpha"]["mean"],
                     "kl_theta_mean": lvl["kl_theta"]["mean"], "kl_t_mean": lvl["kl_t"]["mean"],
                     "ess_ratio_median": lvl["ess_ratio"]["median"],
                     **{f"pass_{k}": r.checks[k]["pass_rate"] for k in ("ess_ratio", "kl_gap", "alpha", "all")},
                     "by_construction": r.by_construction,
                     "seq_ess_theta": r.seq_weights["theta"]["ess_norm"], "seq_ess_t": r.seq_weights["t"]["ess_norm"],
                     "sampler": r.sampler, **answer_columns(r.answers),
                     "tokens_per_s": (r.speed or {}).get("tokens_per_s")})
    return rows


def answer_columns(a: dict | None) -> dict:
    """The answer step's numbers as flat comparison columns (None when the run has no answers)."""
    a = a or {}
    is_, sn = a.get("theta_accuracy_is") or {}, a.get("theta_accuracy_snis") or {}
    return {"n_graded": a.get("n"), "accuracy": a.get("accuracy"), "accuracy_ci": a.get("accuracy_ci"),
            "theta_accuracy_is": is_.get("value"), "theta_accuracy_is_ci": is_.get("ci"),
            "theta_accuracy_snis": sn.get("value"), "theta_accuracy_snis_ci": sn.get("ci"),
            "seq_ess": a.get("seq_ess"), "ess_warning": a.get("ess_warning")}
