"""One self-contained HTML report of a run: config, summary, plots and a token-coloured sample
browser. Offline by construction: no CDN, no server, plots embedded as base64 PNG, CSS and JS
inline; the page's data sits in a JSON script tag that the inline JS renders.

`alpha` is the weight on pi_theta (q ∝ pi_theta^a · pi_t^(1−a)); in the browser alpha above 0.5
is red (towards π_θ), below blue (towards π_t), the scale stretched to each sample's range.
Not for: statistics (stats.py), drawing (plots.py), reading or validating input files (cli.py).
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

from . import stats

ARRAYS = ("alpha", "kl_theta", "kl_t", "logp_theta", "logp_t", "logq", "logp_behavior")
PLOT_TITLES = {"alpha_hist": "alpha histogram", "alpha_vs_position": "alpha vs position",
               "kl_scatter": "KL(q‖π_θ) vs KL(q‖π_t)", "ess_ratio_hist": "ESS ratio histogram",
               "seq_logw_hist": "sequence log importance weights", "method_comparison": "condition checks",
               "accuracy": "accuracy by sampler"}


def load_tokenizer(model_path: str | None) -> tuple[object | None, str]:
    """(tokenizer, note): from a local HF dir or .gguf file only, never the network."""
    if not model_path:
        return None, "no model path in the manifest: tokens are shown as ids (give --tokenizer DIR)"
    p = Path(model_path).expanduser()
    if not p.exists():
        return None, f"{model_path} is not a local path (the report never uses the network): tokens are " \
                     "shown as ids; give --tokenizer DIR to decode them"
    try:
        from transformers import AutoTokenizer

        if p.suffix == ".gguf":
            from ..cache import gguf_cache_path

            cached = gguf_cache_path(p.resolve())
            if (cached / "tokenizer_config.json").exists():  # generate already converted this file
                return AutoTokenizer.from_pretrained(str(cached), local_files_only=True), f"tokenizer: {cached}"
            return AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name, local_files_only=True), \
                f"tokenizer: {p}"
        return AutoTokenizer.from_pretrained(str(p), local_files_only=True), f"tokenizer: {p}"
    except Exception as e:  # any failure here only costs the token texts, never the report
        return None, f"could not load a tokenizer from {model_path} ({type(e).__name__}: {e}): tokens shown as ids"


def token_texts(tok, ids: list[int]) -> list[str]:
    """Each token's share of the decoded text (incremental detokenisation as in vLLM): a character
    split over byte tokens lands on the token that completes it, the others get ''; a few tokens of
    left context keep sentencepiece's leading-space handling right. Joined, they give the decode."""
    def dec(x):
        return tok.decode(x, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    out, prefix, read = [], 0, 0
    for i in range(len(ids)):
        before, full = dec(ids[prefix:read]), dec(ids[prefix:i + 1])
        if len(full) > len(before) and not full.endswith("\ufffd"):
            out.append(full[len(before):])
            prefix, read = read, i + 1
        else:
            out.append("")
    if ids and read < len(ids):  # bytes that never formed a valid character: show them on the last token
        out[-1] += dec(ids[prefix:])[len(dec(ids[prefix:read])):]
    return out


def _num(x, digits: int = 5):
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def sample_view(rec: dict, tok, graded: dict | None = None) -> dict:
    """What the browser needs of one record (floats rounded: the page stays small)."""
    msgs = rec.get("messages") or []
    prompt = [m for m in msgs[:-1] if isinstance(m, dict)]
    view = {"key": f"{rec.get('sample_idx')}/{rec.get('n')}", "sample_id": rec.get("sample_id"),
            "finish_reason": rec.get("finish_reason"), "num_tokens": rec.get("num_tokens"),
            "prompt": [{"role": m.get("role"), "content": m.get("content")} for m in prompt],
            "prompt_t": rec.get("prompt_t"), "text": msgs[-1].get("content") if msgs else "",
            "means": {k: _num(rec.get(k)) for k in ("alpha_mean", "kl_theta_mean", "kl_t_mean", "ess_ratio_mean",
                                                   "seq_logw_theta", "seq_logw_t")}}
    g = (graded or {}).get(view["key"])
    if g:
        view["answer"] = {"answer": g["answer"], "reference": str(g["reference"])[-80:], "reward": g["reward"]}
    ids = rec.get("token_ids")
    if isinstance(ids, list) and all(isinstance(rec.get(k), list) for k in ARRAYS):
        view["token_ids"] = ids
        view["tokens"] = token_texts(tok, ids) if tok is not None else None
        view.update({k: [_num(v) for v in rec[k]] for k in ARRAYS})
    return view


def _table(rows: list[list], head: list[str]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(x) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def config_html(manifest: dict | None, manifest_path: Path) -> str:
    if not manifest:
        return f"<p class='note'>No manifest ({html.escape(manifest_path.name)}) next to the run: config unknown.</p>"
    items = list(manifest.get("config", {}).items())
    items += [("config_hash", manifest.get("config_hash")), ("updated", manifest.get("updated"))]
    cells = "".join(f"<div><span class='k'>{html.escape(k)}</span> "
                    f"{html.escape(v if isinstance(v, str) else json.dumps(v))}</div>" for k, v in items)
    return f"<div class='config'>{cells}</div>"


def summary_html(s: stats.RunSummary) -> str:
    level = "token" if s.distributions["token"] else "sample"
    dist = s.distributions["token"] or {}
    dist = {**dist, **{k: v for k, v in s.distributions["sample"].items() if k not in dist}}
    stat_rows = [[name, d["mean"], d["std"], d["min"], d["q05"], d["median"], d["q95"], d["max"], d["null"]]
                 for name, d in dist.items()]
    check_rows = [[c["rule"], f"{c['pass_rate']:.1%}" if c["pass_rate"] is not None else None, c["n"], c["null"],
                   "yes" if k in s.by_construction else ""] for k, c in s.checks.items() if k != "level"]
    seq_rows = [[side, w["logw"]["count"], w["logw"]["null"], w["logw"]["mean"], w["logw"]["std"],
                 w["logw"]["median"], w["ess_norm"]] for side, w in s.seq_weights.items()]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in s.notes)
    return (f"<p>method <b>{html.escape(s.alpha_method)}</b> · <b id='summary-samples'>{s.n_samples}</b> samples · "
            f"{s.n_tokens} tokens · finish {html.escape(json.dumps(s.finish_reasons))}</p>"
            f"<div class='row'><div><h3>Distributions ({level} level; length per sample)</h3>"
            + _table(stat_rows, ["statistic", "mean", "std", "min", "q05", "median", "q95", "max", "null"])
            + f"</div><div><h3>Condition checks ({s.checks['level']} level)</h3>"
            + _table(check_rows, ["check", "pass rate", "n", "null", "by construction"])
            + "<h3>Sequence importance weights</h3>"
            + _table(seq_rows, ["weight", "n", "null", "mean log w", "std", "median", "ESS / n"])
            + "<p class='note'>ESS / n = (Σw)² / (n·Σw²) over samples, w = exp(Σ logp − logp_behavior).</p>"
            + "</div></div>" + (f"<ul class='notes'>{notes}</ul>" if notes else ""))


def _est(v, ci) -> str:
    if v is None:
        return "—"
    return f"{v:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def comparison_html(rows: list[dict], chart: bytes | None) -> str:
    """The runs side by side: accuracy, pi_theta's accuracy estimated by IS, ESS, alpha, KL, tokens/s."""
    head = ["run", "sampler", "n", "accuracy [95 %]", "π_θ accuracy, IS from these samples",
            "π_θ accuracy, self-normalised IS", "sequence ESS", "mean α", "KL(q‖π_θ)", "tokens/s"]
    body = [[r["name"], r["sampler"], r["n_graded"], _est(r["accuracy"], r["accuracy_ci"]),
             _est(r["theta_accuracy_is"], r["theta_accuracy_is_ci"]),
             _est(r["theta_accuracy_snis"], r["theta_accuracy_snis_ci"]),
             None if r["seq_ess"] is None else f"{r['seq_ess']:.2f}", r["alpha_mean"], r["kl_theta_mean"],
             None if r["tokens_per_s"] is None else f"{r['tokens_per_s']:.1f}"] for r in rows]
    warn = "".join(f"<li><b>{html.escape(r['name'])}</b>: {html.escape(r['ess_warning'])}</li>"
                   for r in rows if r.get("ess_warning"))
    img = "" if chart is None else (f"<figure id='accuracy-chart'><img alt='accuracy by sampler' src='data:image/png;"
                                    f"base64,{base64.b64encode(chart).decode()}'><figcaption>accuracy by sampler; "
                                    "π_θ measured directly vs estimated from each sampler's samples</figcaption>"
                                    "</figure>")
    return (_table(body, head).replace("<table>", "<table id='comparison-table'>", 1)
            + "<p class='note'>IS: (1/n) Σ w·r, unbiased; self-normalised: Σ w·r / Σ w; w = exp(seq_logw_theta) = "
            "π_θ(y)/behaviour(y); intervals are normal 95 % (Wilson for accuracy); sequence ESS = (Σw)²/Σw². "
            "tokens/s from each run's &lt;stem&gt;.summary.json (— when absent).</p>"
            + (f"<ul class='notes'>{warn}</ul>" if warn else "") + img)


def plots_html(pngs: dict[str, bytes], skipped: dict[str, str]) -> str:
    figs = "".join(f"<figure><img alt='{html.escape(PLOT_TITLES.get(k, k))}' src='data:image/png;base64,"
                   f"{base64.b64encode(v).decode()}'><figcaption>{html.escape(PLOT_TITLES.get(k, k))}</figcaption>"
                   "</figure>" for k, v in pngs.items())
    notes = "".join(f"<p class='note'>{html.escape(PLOT_TITLES.get(k, k))} skipped: {html.escape(why)}</p>"
                    for k, why in skipped.items())
    return f"<div class='plots'>{figs}</div>{notes}"


def _json_for_script(obj) -> str:
    """JSON safe inside <script>: no '<', '>' or '&' that could close the tag."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(*, name: str, summary: stats.RunSummary, records: list[dict], pngs: dict[str, bytes],
           skipped: dict[str, str], manifest: dict | None, manifest_path: Path, tok, tok_note: str,
           max_samples: int, comparison: list[dict] | None = None, chart: bytes | None = None,
           graded: dict | None = None) -> str:
    recs = sorted(records, key=lambda r: (r.get("sample_idx", 0), r.get("n", 0)))
    shown = [sample_view(r, tok, graded) for r in recs[:max_samples]]
    data = {"name": name, "total": len(recs), "samples": shown, "tok_note": tok_note}
    more = (f"<p class='note'>Showing the first {len(shown)} of {len(recs)} samples (--max-samples).</p>"
            if len(shown) < len(recs) else "")
    e = html.escape
    cmp_section = "" if not comparison else (
        f"<section id='comparison'><h2>Comparison: {len(comparison)} run(s)</h2>{comparison_html(comparison, chart)}"
        + (f"<p class='note'>Below: the first run, {e(name)}, in detail.</p>" if len(comparison) > 1 else "")
        + "</section>")
    cmp_link = '<a href="#comparison">comparison</a> ' if comparison else ""
    config_of = f" — {e(name)}" if comparison and len(comparison) > 1 else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>qstar report: {e(name)}</title>
<style>{CSS}</style></head>
<body data-rendered="0">
<header><h1>qstar report — {e(name)}</h1>
<p><span id="sample-count">{len(recs)}</span> samples · method {e(summary.alpha_method)} ·
alpha is the weight on π_θ (q ∝ π_θ<sup>α</sup>·π_t<sup>1−α</sup>)</p>
<nav>{cmp_link}<a href="#config">config</a> <a href="#summary">summary</a> <a href="#samples">samples</a>
<a href="#plots">plots</a></nav></header>
{cmp_section}
<section id="config"><h2>Run config{config_of}</h2>{config_html(manifest, manifest_path)}</section>
<section id="summary"><h2>Summary</h2>{summary_html(summary)}</section>
<section id="samples"><h2>Samples</h2>{more}
<div class="controls"><button id="prev" type="button">◀</button><select id="sample-select"></select>
<button id="next" type="button">▶</button>
<label>colour by <select id="color-by"><option value="alpha">alpha</option>
<option value="kl_theta">KL(q‖π_θ)</option><option value="kl_t">KL(q‖π_t)</option>
<option value="kl_gap">KL(q‖π_θ) − KL(q‖π_t)</option><option value="logw">logp_theta − logp_behavior</option>
</select></label><span id="legend"></span></div>
<p class="note" id="tok-note"></p>
<div id="sample-meta"></div><div id="prompt"></div>
<div id="tokens" class="tokens"></div>
<div id="tok-detail" class="detail">hover a token for its values</div>
</section>
<section id="plots"><h2>Plots</h2>{plots_html(pngs, skipped)}</section>
<script type="application/json" id="qstar-data">{_json_for_script(data)}</script>
<script>{JS}</script>
</body></html>
"""


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1150px;padding:0 16px;
color:#222;background:#fff}
header{border-bottom:1px solid #ddd;margin-bottom:8px}h1{font-size:22px;margin:14px 0 4px}h2{font-size:18px;
margin:22px 0 8px;border-bottom:1px solid #eee}h3{font-size:15px;margin:14px 0 6px}nav a{margin-right:12px}
table{border-collapse:collapse;margin:4px 0 10px;font-size:12px}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left;vertical-align:top}th{background:#f5f5f5}td{font-variant-numeric:tabular-nums;max-width:640px;
overflow-wrap:anywhere}.note{color:#666;font-size:13px}.notes{color:#444;font-size:13px}
.plots{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;border:1px solid #eee;padding:4px}
figure img{max-width:540px;display:block}#accuracy-chart img{max-width:100%}
#comparison-table td:nth-child(n+3){text-align:right;white-space:nowrap}
.row{display:flex;flex-wrap:wrap;gap:24px}
.config{columns:3;font-size:12px;column-gap:20px}.config div{break-inside:avoid;overflow-wrap:anywhere}
.config .k{color:#666}figcaption{font-size:12px;color:#555;text-align:center}
.controls{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin:6px 0}select{max-width:520px}
#legend{font-size:12px;color:#444}.swatch{display:inline-block;width:120px;height:10px;vertical-align:middle;
margin:0 4px;border:1px solid #ccc}
#prompt{background:#f7f7f9;border-left:3px solid #bbb;padding:6px 10px;margin:6px 0;white-space:pre-wrap;
font-size:13px}#prompt .role{font-weight:bold;color:#555}#sample-meta{font-size:13px;color:#333}
.tokens{font:14px/1.9 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;white-space:pre-wrap;
border:1px solid #ddd;padding:8px;min-height:40px}.tok{border-radius:2px;cursor:default;padding:1px 0}
.tok:hover{outline:2px solid #333}.tok.id{color:#555;font-size:12px}
.tok.empty{display:inline-block;width:5px;height:1em;vertical-align:middle}
.detail{font:12px/1.5 ui-monospace,monospace;background:#fafafa;border:1px solid #eee;padding:6px;margin-top:6px;
white-space:pre-wrap;min-height:3em}
"""

JS = r"""
(function () {
  "use strict";
  var body = document.body;
  function fail(msg) {
    body.setAttribute("data-error", msg);
    document.getElementById("tok-note").textContent = "report script error: " + msg;
  }
  window.addEventListener("error", function (ev) { fail(String(ev.message)); });
  var data = JSON.parse(document.getElementById("qstar-data").textContent);
  var sel = document.getElementById("sample-select"), by = document.getElementById("color-by");
  var box = document.getElementById("tokens"), detail = document.getElementById("tok-detail");
  var current = 0;
  function num(v) { return (v === null || v === undefined) ? null : v; }
  function diff(a, b) { return (a === null || b === null) ? null : a - b; }
  var METRICS = {
    alpha: {kind: "alpha", get: function (s, i) { return num(s.alpha[i]); },
            legend: "alpha"},
    kl_theta: {kind: "seq", get: function (s, i) { return num(s.kl_theta[i]); }, legend: "KL(q‖π_θ): 0"},
    kl_t: {kind: "seq", get: function (s, i) { return num(s.kl_t[i]); }, legend: "KL(q‖π_t): 0"},
    kl_gap: {kind: "sym", get: function (s, i) { return diff(s.kl_theta[i], s.kl_t[i]); },
             legend: "KL gap: π_t closer"},
    logw: {kind: "sym", get: function (s, i) { return diff(s.logp_theta[i], s.logp_behavior[i]); },
           legend: "logp_theta − logp_behavior: negative"}
  };
  function mix(k, r, g, b) {  // white -> (r, g, b) by k in [0, 1]
    return "rgb(" + Math.round(255 + (r - 255) * k) + "," + Math.round(255 + (g - 255) * k) + "," +
      Math.round(255 + (b - 255) * k) + ")";
  }
  function colour(v, kind, scale) {
    if (v === null || !isFinite(v)) { return "#d0d0d0"; }
    if (kind === "alpha") { v = v - 0.5; }  // diverging around the even mix
    var k = Math.min(Math.abs(v) / scale, 1);
    if (kind === "seq") { return mix(k, 230, 120, 20); }
    return v >= 0 ? mix(k, 214, 39, 40) : mix(k, 31, 119, 180);
  }
  function scaleOf(s, m) {
    var hi = 0;
    for (var i = 0; i < s.token_ids.length; i++) {
      var v = m.get(s, i);
      if (v !== null && isFinite(v)) { hi = Math.max(hi, Math.abs(m.kind === "alpha" ? v - 0.5 : v)); }
    }
    if (m.kind === "alpha") { return Math.max(hi, 0.05); }  // a flat sample stays pale, not saturated
    return hi > 0 ? hi : 1;
  }
  function fmt(v) { return (v === null || v === undefined) ? "null" : (+v).toPrecision(5); }
  function tokenText(s, i) { return s.tokens ? s.tokens[i] : "⟨" + s.token_ids[i] + "⟩"; }
  function describe(s, i) {
    return "position " + i + "   token id " + s.token_ids[i] + "   text " + JSON.stringify(tokenText(s, i)) +
      "\nalpha " + fmt(s.alpha[i]) + "   logp_theta " + fmt(s.logp_theta[i]) + "   logp_t " + fmt(s.logp_t[i]) +
      "   logq " + fmt(s.logq[i]) + "   logp_behavior " + fmt(s.logp_behavior[i]) +
      "\nKL(q‖π_θ) " + fmt(s.kl_theta[i]) + "   KL(q‖π_t) " + fmt(s.kl_t[i]);
  }
  function legend(m, scale) {
    var el = document.getElementById("legend");
    var grad = m.kind === "alpha" ? "linear-gradient(90deg,rgb(31,119,180),#fff,rgb(214,39,40))" :
      m.kind === "seq" ? "linear-gradient(90deg,#fff,rgb(230,120,20))" :
      "linear-gradient(90deg,rgb(31,119,180),#fff,rgb(214,39,40))";
    var right = m.kind === "alpha" ? fmt(0.5 + scale) + " (π_θ side)" :
      m.kind === "seq" ? fmt(scale) + " (this sample's max)" : "+" + fmt(scale);
    var left = m.kind === "alpha" ? "alpha " + fmt(0.5 - scale) + " (π_t side)" :
      m.kind === "sym" ? m.legend + " −" + fmt(scale) : m.legend;
    el.innerHTML = "";
    el.appendChild(document.createTextNode(left));
    var sw = document.createElement("span"); sw.className = "swatch"; sw.style.background = grad;
    el.appendChild(sw);
    el.appendChild(document.createTextNode(right + "; white = 0.5 (alpha) or 0; scaled to this sample; " +
      "grey: null (non-finite)"));
  }
  function renderPrompt(s) {
    var p = document.getElementById("prompt"); p.innerHTML = "";
    s.prompt.forEach(function (m) {
      var r = document.createElement("span"); r.className = "role"; r.textContent = m.role + ": ";
      p.appendChild(r); p.appendChild(document.createTextNode(String(m.content) + "\n"));
    });
    if (s.prompt_t !== null && s.prompt_t !== undefined) {
      var r = document.createElement("span"); r.className = "role"; r.textContent = "π_t's prompt: ";
      p.appendChild(r); p.appendChild(document.createTextNode(typeof s.prompt_t === "string" ? s.prompt_t :
        JSON.stringify(s.prompt_t)));
    }
  }
  function render(idx) {
    current = idx; sel.value = String(idx);
    var s = data.samples[idx], m = METRICS[by.value];
    var meta = "sample " + s.key + " · id " + JSON.stringify(s.sample_id) + " · " + s.num_tokens +
      " tokens · finish " +
      s.finish_reason + " · mean alpha " + fmt(s.means.alpha_mean) + " · seq log w_θ " +
      fmt(s.means.seq_logw_theta);
    if (s.answer) {  // the answer step: what the rule read, the reference, right or wrong
      meta += " · answer " + (s.answer.answer === null ? "(none found)" : s.answer.answer) + " vs reference " +
        JSON.stringify(s.answer.reference) + (s.answer.reward >= 1 ? " ✓" : " ✗");
    }
    document.getElementById("sample-meta").textContent = meta;
    renderPrompt(s);
    box.innerHTML = "";
    var note = document.getElementById("tok-note");
    if (!s.token_ids) {
      box.textContent = s.text;
      note.textContent = "This record has no per-token arrays: rerun qstar generate with --save-token-stats " +
        "to colour its tokens by alpha / KL.";
      document.getElementById("legend").textContent = "";
      return;
    }
    note.textContent = data.tok_note;
    var scale = scaleOf(s, m), frag = document.createDocumentFragment();
    for (var i = 0; i < s.token_ids.length; i++) {
      var span = document.createElement("span");
      span.className = "tok colored" + (s.tokens ? "" : " id") + (tokenText(s, i) === "" ? " empty" : "");
      span.textContent = tokenText(s, i);
      span.style.background = colour(m.get(s, i), m.kind, scale);
      span.setAttribute("data-i", String(i));
      span.title = describe(s, i);
      frag.appendChild(span);
    }
    box.appendChild(frag);
    legend(m, scale);
    body.setAttribute("data-colored-tokens", String(box.querySelectorAll(".tok.colored").length));
  }
  box.addEventListener("mouseover", function (ev) {
    var i = ev.target.getAttribute && ev.target.getAttribute("data-i");
    if (i !== null && i !== undefined) { detail.textContent = describe(data.samples[current], +i); }
  });
  data.samples.forEach(function (s, i) {
    var o = document.createElement("option"); o.value = String(i);
    o.textContent = s.key + " · " + JSON.stringify(s.sample_id) + " · " + s.num_tokens + " tok · " +
      s.finish_reason +
      (s.token_ids ? "" : " · uncoloured");
    sel.appendChild(o);
  });
  sel.addEventListener("change", function () { render(+sel.value); });
  by.addEventListener("change", function () { render(current); });
  document.getElementById("prev").addEventListener("click", function () {
    render((current + data.samples.length - 1) % data.samples.length); });
  document.getElementById("next").addEventListener("click", function () {
    render((current + 1) % data.samples.length); });
  document.getElementById("sample-count").textContent = String(data.total);
  var first = 0;
  for (var j = 0; j < data.samples.length; j++) { if (data.samples[j].token_ids) { first = j; break; } }
  if (data.samples.length) { render(first); }
  body.setAttribute("data-sample-count", String(data.total));
  var cmp = document.getElementById("comparison-table");
  if (cmp) { body.setAttribute("data-comparison-rows", String(cmp.tBodies[0].rows.length)); }
  window.addEventListener("load", function () {  // every embedded chart decoded to a real image
    var imgs = document.images, ok = 0;
    for (var k = 0; k < imgs.length; k++) { if (imgs[k].complete && imgs[k].naturalWidth > 0) { ok++; } }
    body.setAttribute("data-images", imgs.length + "/" + ok);
  });
  body.setAttribute("data-rendered", "1");
})();
"""
