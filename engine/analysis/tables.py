"""The text tables `qstar analyze` prints: one block per run, then comparisons of several runs.

`alpha` is the weight on pi_theta. "-" marks a value that does not exist (no answers, no
tokens/s recorded, a null statistic).
Not for: computing anything (stats.py, importance.py) or reading files (cli.py).
"""
from __future__ import annotations

from . import stats

def _f(x, spec=".4g") -> str:
    return "-" if x is None else format(x, spec)


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


CHECK_LABELS = {"ess_ratio": "ESS ratio in [{ess_low:g}, {ess_high:g}]",
                "kl_gap": "|KL(q||pi_theta) - KL(q||pi_t)| < {kl_tol:g}",
                "alpha": "alpha in [{alpha_low:g}, {alpha_high:g}]", "all": "all three at once"}


def format_run(s: stats.RunSummary, th: stats.Thresholds) -> str:
    out = [f"== {s.name}  ({s.path})",
           f"method {s.alpha_method} {s.alpha_methods if len(s.alpha_methods) > 1 else ''}| {s.n_samples} samples | "
           f"{s.n_tokens} tokens | finish {s.finish_reasons} | clamped {_pct(s.clamped_frac_mean)}"]
    tok = s.distributions["token"] or {}
    head = ["statistic", "level", "mean", "std", "min", "q05", "median", "q95", "max", "null"]
    out.append("".join(f"{h:>10}" if i > 1 else f"{h:<15}" if i == 0 else f"{h:<8}" for i, h in enumerate(head)))
    for name, d in s.distributions["sample"].items():
        lvl, d = ("token", tok[name]) if name in tok else ("sample", d)
        out.append(f"{name:<15}{lvl:<8}" + "".join(f"{_f(d[k]):>10}" for k in head[2:-1]) + f"{d['null']:>10}")
    out.append(f"{'check (' + s.checks['level'] + ' level)':<48}{'pass':>8}{'n':>8}{'null':>7}")
    for k, label in CHECK_LABELS.items():
        c = s.checks[k]
        mark = f"  by construction ({s.alpha_method})" if k in s.by_construction else ""
        out.append(f"{label.format(**vars(th)):<48}{_pct(c['pass_rate']):>8}{c['n']:>8}{c['null']:>7}{mark}")
    out.append(f"{'sequence weights':<18}{'n':>6}{'null':>6}{'mean logw':>12}{'std':>10}{'median':>10}{'ESS/n':>9}")
    for side, w in s.seq_weights.items():
        lw = w["logw"]
        out.append(f"{'pi_' + side + '/behavior':<18}{lw['count']:>6}{lw['null']:>6}{_f(lw['mean']):>12}"
                   f"{_f(lw['std']):>10}{_f(lw['median']):>10}{_f(w['ess_norm'], '.4f'):>9}")
    out += [f"note: {n}" for n in s.notes]
    if s.answers:
        out.append(format_answers(s.answers))
    speed = s.speed or {}
    out.append(f"tokens/s: {_f(speed.get('tokens_per_s'), '.1f')}" + ("" if speed else
               " (no <stem>.summary.json from qstar generate)"))
    return "\n".join(out)


def format_comparison(rows: list[dict]) -> str:
    head = f"{'run':<16}{'method':<20}{'level':<7}{'alpha':>7}{'KL_th':>8}{'KL_t':>8}{'ESSr med':>9}" \
           f"{'ESS ok':>9}{'KL ok':>9}{'alpha ok':>9}{'all':>8}{'seqESS':>8}"
    out = ["== comparison (* = passes by construction)", head]
    for r in rows:
        marks = {k: "*" if k in r["by_construction"] else " " for k in ("ess_ratio", "kl_gap")}
        out.append(f"{r['name'][:15]:<16}{r['alpha_method'][:19]:<20}{r['level']:<7}{_f(r['alpha_mean'], '.3f'):>7}"
                   f"{_f(r['kl_theta_mean'], '.4f'):>8}{_f(r['kl_t_mean'], '.4f'):>8}"
                   f"{_f(r['ess_ratio_median'], '.3f'):>9}{_pct(r['pass_ess_ratio']) + marks['ess_ratio']:>9}"
                   f"{_pct(r['pass_kl_gap']) + marks['kl_gap']:>9}{_pct(r['pass_alpha']):>9}{_pct(r['pass_all']):>8}"
                   f"{_f(r['seq_ess_theta'], '.3f'):>8}")
    return "\n".join(out)



def _ci(ci) -> str:
    return "-" if not ci else f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def format_answers(a: dict) -> str:
    """A run's answer step: accuracy, both IS estimates of pi_theta's accuracy, ESS, warning."""
    is_, sn = a["theta_accuracy_is"], a["theta_accuracy_snis"]
    out = [f"answers ({a['grader']}, reference field {a['field']}): {a['correct']:g} of {a['n']} right = "
           f"{_pct(a['accuracy'])} {_ci(a['accuracy_ci'])}"
           + ("" if a["no_answer"] is None else f"; no number found in {a['no_answer']}"),
           f"pi_theta's accuracy from these samples: IS {_f(is_['value'], '.3f')} {_ci(is_['ci'])}  "
           f"self-normalised {_f(sn['value'], '.3f')} {_ci(sn['ci'])}  sequence ESS {_f(a['seq_ess'], '.2f')} of "
           f"{a['n']}"]
    out += [f"note: {n}" for n in a["notes"] + ([a["ess_warning"]] if a["ess_warning"] else [])]
    return "\n".join(out)


def format_answer_comparison(rows: list[dict]) -> str:
    """Accuracy and pi_theta's accuracy estimated from each run, side by side."""
    head = f"{'run':<16}{'sampler':<26}{'n':>5}{'accuracy':>10}{'IS(pi_th)':>11}{'SNIS':>8}{'seqESS':>8}" \
           f"{'alpha':>7}{'KL_th':>8}{'tok/s':>8}"
    out = ["== answers by sampler (IS / SNIS: pi_theta's accuracy estimated from the run's samples)", head]
    for r in rows:
        out.append(f"{r['name'][:15]:<16}{r['sampler'][:25]:<26}{_f(r['n_graded'], 'd'):>5}"
                   f"{_pct(r['accuracy']):>10}{_f(r['theta_accuracy_is'], '.3f'):>11}"
                   f"{_f(r['theta_accuracy_snis'], '.3f'):>8}{_f(r['seq_ess'], '.2f'):>8}"
                   f"{_f(r['alpha_mean'], '.3f'):>7}{_f(r['kl_theta_mean'], '.4f'):>8}"
                   f"{_f(r['tokens_per_s'], '.1f'):>8}")
    return "\n".join(out)
