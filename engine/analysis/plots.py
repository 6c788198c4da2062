"""PNG plots of one or more runs (matplotlib, Agg backend: no display needed).

Each plot overlays every run given, so the same function draws one run (the report) or a
method comparison (analyze with several files). `alpha` is the weight on pi_theta.
Not for: computing statistics (stats.py) or where the PNG bytes go (cli.py writes files,
report.py embeds them).
"""
from __future__ import annotations

import io

import numpy as np

from . import stats

ESS_CLIP = 3.0          # ESS ratios above this are drawn in the last bin (the ratio is unbounded)
MAX_SCATTER = 20_000    # points per run in the KL scatter (an even subsample beyond)
PLOT_NAMES = ("alpha_hist", "alpha_vs_position", "kl_scatter", "ess_ratio_hist", "seq_logw_hist",
              "method_comparison", "accuracy")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)  # never a GUI backend: analyze runs on servers
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def _legend(ax) -> None:
    if ax.get_legend_handles_labels()[0]:  # a run with no finite values draws nothing to label
        ax.legend(fontsize=8)


def _level(token: bool) -> str:
    return "token" if token else "sample mean"


def _band_hist(runs, key: str, bins, band: tuple[float, float], xlabel: str, title: str,
               clip: float | None = None) -> bytes:
    """Step histograms of `key` per run (token level when it has arrays) over the check band."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, lines in runs:
        token = stats.token_level(lines)
        x = stats.level_values(lines, key, token)
        x = x[np.isfinite(x)]
        if not x.size:
            continue
        ax.hist(x if clip is None else np.clip(x, 0, clip), bins=bins, histtype="step", density=True, lw=1.5,
                label=f"{name} ({_level(token)})")
    ax.axvspan(*band, color="green", alpha=0.08, label="check band")
    ax.set(xlabel=xlabel, ylabel="density", title=title)
    _legend(ax)
    return _png(fig)


def alpha_hist(runs, th: stats.Thresholds) -> bytes:
    return _band_hist(runs, "alpha", np.linspace(0, 1, 41), (th.alpha_low, th.alpha_high),
                      "alpha (weight on π_θ)", "alpha")


def _has_alpha_arrays(lines) -> bool:
    return bool(lines) and all(isinstance(d.get("alpha"), list) for d in lines)


def alpha_vs_position(runs) -> bytes | None:
    """Mean alpha per response position with a 10–90% band; None when no run has arrays."""
    with_arrays = [(n, ls) for n, ls in runs if _has_alpha_arrays(ls)]
    if not with_arrays:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, lines in with_arrays:
        width = max(len(d["alpha"]) for d in lines)
        grid = np.full((len(lines), width), np.nan)
        for i, d in enumerate(lines):
            grid[i, :len(d["alpha"])] = stats.as_array(d["alpha"])
        seen = np.isfinite(grid).any(axis=0)
        pos = np.arange(width)[seen]
        g = grid[:, seen]
        line, = ax.plot(pos, np.nanmean(g, axis=0), label=name)
        ax.fill_between(pos, np.nanquantile(g, 0.1, axis=0), np.nanquantile(g, 0.9, axis=0),
                        color=line.get_color(), alpha=0.15)
    ax.set(xlabel="response position (token)", ylabel="alpha", title="alpha vs position (mean, 10–90%)")
    _legend(ax)
    return _png(fig)


def kl_scatter(runs) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    hi = 0.0
    for name, lines in runs:
        token = stats.token_level(lines)
        a, b = stats.level_values(lines, "kl_theta", token), stats.level_values(lines, "kl_t", token)
        ok = np.isfinite(a) & np.isfinite(b)
        a, b = a[ok], b[ok]
        if a.size > MAX_SCATTER:
            idx = np.linspace(0, a.size - 1, MAX_SCATTER).astype(int)
            a, b = a[idx], b[idx]
        ax.scatter(a, b, s=6, alpha=0.4, label=f"{name} ({_level(token)})")
        hi = max(hi, float(a.max(initial=0)), float(b.max(initial=0)))
    ax.plot([0, hi], [0, hi], "k--", lw=0.8, label="KL(q‖π_θ) = KL(q‖π_t)")
    ax.set(xlabel="KL(q‖π_θ)", ylabel="KL(q‖π_t)", title="KL to each model")
    _legend(ax)
    return _png(fig)


def ess_ratio_hist(runs, th: stats.Thresholds) -> bytes:
    return _band_hist(runs, "ess_ratio", np.linspace(0, ESS_CLIP, 61), (th.ess_low, th.ess_high),
                      f"ESS_θ / ESS_t (values > {ESS_CLIP:g} drawn at {ESS_CLIP:g})", "ESS ratio", clip=ESS_CLIP)


def seq_logw_hist(runs) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, lines in runs:
        x = stats.sample_values(lines, "seq_logw_theta")
        if np.isfinite(x).any():
            ax.hist(x[np.isfinite(x)], bins=30, histtype="step", lw=1.5, label=name)
    ax.set(xlabel="Σ (logp_theta − logp_behavior) per sample", ylabel="samples",
           title="sequence log importance weights (π_θ / behaviour)")
    _legend(ax)
    return _png(fig)


def method_comparison(summaries: list[stats.RunSummary]) -> bytes:
    """Grouped bars: each check's pass rate per run, hatched where the method passes it by construction."""
    plt = _plt()
    keys = ("ess_ratio", "kl_gap", "alpha", "all")
    fig, ax = plt.subplots(figsize=(max(6.4, 1.6 * len(summaries) + 3), 4))
    width = 0.8 / max(len(summaries), 1)
    x = np.arange(len(keys))
    for i, s in enumerate(summaries):
        rates = [s.checks[k]["pass_rate"] or 0.0 for k in keys]
        bars = ax.bar(x + i * width, rates, width, label=f"{s.name} ({s.alpha_method})")
        for k, bar in zip(keys, bars):
            if k in s.by_construction:
                bar.set_hatch("//")
    ax.set_xticks(x + width * (len(summaries) - 1) / 2, ["ESS ratio", "KL gap", "alpha band", "all three"])
    ax.set(ylim=(0, 1.05), ylabel="pass rate", title="condition checks by run (hatched: holds by construction)")
    _legend(ax)
    return _png(fig)


def _bar(ax, x, value, ci, width, color, label, hatch=None):
    """One bar (value clipped to the axis, the true value written on it) with its 95 % interval."""
    if value is None:
        ax.text(x, 0.02, "n/a", ha="center", fontsize=7, rotation=90)
        return
    shown = min(value, 1.0)
    ax.bar(x, shown, width, color=color, label=label, hatch=hatch, edgecolor="black" if hatch else None, lw=0.5)
    if ci:
        ax.errorbar(x, shown, yerr=[[max(shown - ci[0], 0)], [max(ci[1] - shown, 0)]], fmt="none", ecolor="black",
                    capsize=3, lw=1)
    ax.text(x, shown + 0.01, f"{value:.2f}", ha="center", va="bottom", fontsize=7)


def accuracy_chart(rows: list[dict]) -> bytes | None:
    """Per run: accuracy of its own samples, and pi_theta's accuracy estimated from them (IS,
    self-normalised), with 95 % intervals; a dashed line at pi_theta measured directly (a run
    with alpha = 1 throughout). None when no run has answers."""
    rows = [r for r in rows if r.get("accuracy") is not None]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.4, 2.2 * len(rows) + 2), 4.2))
    w, seen = 0.26, set()
    for i, r in enumerate(rows):
        bars = [("accuracy of its samples", r["accuracy"], r["accuracy_ci"], "#4c72b0", None)]
        if not r["sampler"].startswith("pi_theta alone"):  # on pi_theta's own samples every weight is 1
            bars += [("π_θ accuracy, IS from its samples", r["theta_accuracy_is"], r["theta_accuracy_is_ci"],
                      "#dd8452", None),
                     ("π_θ accuracy, self-normalised IS", r["theta_accuracy_snis"], r["theta_accuracy_snis_ci"],
                      "#f2c29b", "//")]
        for j, (label, v, ci, color, hatch) in enumerate(bars):
            _bar(ax, i + (j - (len(bars) - 1) / 2) * w, v, ci, w, color, None if label in seen else label, hatch)
            seen.add(label)
    direct = next((r for r in rows if r["sampler"].startswith("pi_theta alone")), None)
    if direct:
        ax.axhline(direct["accuracy"], color="#c44e52", ls="--", lw=1.2,
                   label=f"π_θ measured directly ({direct['accuracy']:.2f})")
    ticks = [(r["name"] if r["sampler"] == r["name"] else f"{r['name']}\n{r['sampler'][:28]}")
             + f"\nn {r['n_graded']}, seq ESS {_ess(r['seq_ess'])}" for r in rows]
    ax.set_xticks(range(len(rows)), ticks, fontsize=8)
    ax.set(ylim=(-0.03, 1.12), ylabel="accuracy (95 % interval)",  # below 0: a line at 0 stays visible
           title="answer accuracy by sampler, and π_θ's accuracy recovered by importance weights")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: bars reach the top
    return _png(fig)


def _ess(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def make_all(runs: list[tuple[str, list[dict]]], summaries: list[stats.RunSummary],
             th: stats.Thresholds, rows: list[dict] | None = None) -> tuple[dict[str, bytes], dict[str, str]]:
    """(name -> PNG bytes, name -> why it was skipped) for every plot in PLOT_NAMES."""
    pngs, skipped = {"alpha_hist": alpha_hist(runs, th)}, {}
    pos = alpha_vs_position(runs)
    if pos is None:
        skipped["alpha_vs_position"] = ("no per-token arrays in the diagnostics: rerun generate with "
                                        "--save-token-stats to plot alpha against position")
    else:
        pngs["alpha_vs_position"] = pos
        for name, lines in runs:
            if not _has_alpha_arrays(lines):
                skipped[f"alpha_vs_position[{name}]"] = "this run has no per-token arrays (--save-token-stats)"
    pngs["kl_scatter"] = kl_scatter(runs)
    pngs["ess_ratio_hist"] = ess_ratio_hist(runs, th)
    pngs["seq_logw_hist"] = seq_logw_hist(runs)
    pngs["method_comparison"] = method_comparison(summaries)
    acc = accuracy_chart(rows) if rows else None
    if acc is not None:
        pngs["accuracy"] = acc
    elif rows is not None:
        skipped["accuracy"] = "no run's records carry a reference answer (--answer-field)"
    return pngs, skipped
