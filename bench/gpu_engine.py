"""GPU check of the engine: correctness on a small fp32 pair, then throughput of a random
~1B-class bf16 pair at batch 1 / 32 / 128 vs HF `generate` of one model. Table, then JSON.

    PYTHONPATH=. python -m bench.gpu_engine [--out DIR] [--device cuda] [--small]

--small shrinks everything (a CPU smoke test uses it). Installs nothing; no network.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch


def llama(vocab, hidden, layers, heads, kv, inter, seed, device, dtype, std=0.02):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                      initializer_range=std, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      tie_word_embeddings=False)
    torch.manual_seed(seed)
    with torch.device(device):
        return LlamaForCausalLM(cfg).to(dtype).eval()


class IdTokenizer:
    """Just enough tokenizer for id-level benchmarks: prompts are given as token ids."""

    def __init__(self, vocab):
        self.vocab, self.eos_token_id, self.chat_template = vocab, 2, None

    def get_vocab(self):
        return {f"t{i}": i for i in range(self.vocab)}

    def __call__(self, text):
        return {"input_ids": [int(x) for x in text.split()]}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def correctness(device):
    """fp32 small pair on the device: greedy = HF greedy, graphs = eager, recompute within 1e-4."""
    from engine import create_optimal_sampling_model
    from qstar_kernels import mix

    V = 512
    a = llama(V, 128, 2, 4, 2, 256, 1, device, torch.float32, std=0.3)
    b = llama(V, 128, 2, 4, 2, 256, 2, device, torch.float32, std=0.3)
    tok = IdTokenizer(V)
    prompts = [" ".join(str(3 + (i * 7 + j) % 500) for j in range(5 + 3 * i)) for i in range(4)]
    res = {}
    greedy = create_optimal_sampling_model(a, b, tokenizer=tok, device=device, dtype="float32",
                                           alpha_method="fixed", alpha=1.0, max_batch_size=4)
    outs = greedy.generate(prompts, max_new_tokens=24, temperature=0.0, ignore_eos=True)
    same = True
    for p, o in zip(prompts, outs):
        ids = torch.tensor([tok(p)["input_ids"]], device=device)
        ref = a.generate(ids, max_new_tokens=24, min_new_tokens=24, do_sample=False)[0, ids.shape[1]:].tolist()
        same &= ref == o.token_ids
    res["greedy_equals_hf"] = same
    kw = dict(tokenizer=tok, device=device, dtype="float32", alpha_method="kl_symmetry", max_batch_size=4)
    g = create_optimal_sampling_model(a, b, cuda_graphs=True, **kw).generate(prompts, max_new_tokens=24, seed=1)
    e = create_optimal_sampling_model(a, b, cuda_graphs=False, **kw).generate(prompts, max_new_tokens=24, seed=1)
    res["graphs_equal_eager"] = all(x.token_ids == y.token_ids for x, y in zip(g, e))
    worst = 0.0
    for p, o in zip(prompts, g):
        ids = tok(p)["input_ids"]
        full = torch.tensor([ids + o.token_ids], device=device)
        with torch.no_grad():
            la = a(full).logits[0, len(ids) - 1:-1].double()
            lb = b(full).logits[0, len(ids) - 1:-1].double()
        m = mix(la, lb, "kl_symmetry")
        worst = max(worst, (torch.tensor(o.alpha, dtype=torch.float64, device=device) - m.alpha).abs().max().item(),
                    (torch.tensor(o.logq, dtype=torch.float64, device=device)
                     - m.logq.gather(1, torch.tensor(o.token_ids, device=device)[:, None])[:, 0]).abs().max().item())
    res["recompute_max_err"] = worst
    res["ok"] = bool(same and res["graphs_equal_eager"] and worst < 1e-3)
    return res


def throughput(device, small, batches, new_tokens):
    from engine import create_optimal_sampling_model

    if small:
        shape = dict(vocab=1024, hidden=64, layers=2, heads=4, kv=2, inter=128)
    else:  # Llama-3.2-1B-like
        shape = dict(vocab=128256, hidden=2048, layers=16, heads=32, kv=8, inter=8192)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    a = llama(**shape, seed=1, device=device, dtype=dtype)
    b = llama(**shape, seed=2, device=device, dtype=dtype)
    tok = IdTokenizer(shape["vocab"])
    rows = []
    for B in batches:
        prompts = [" ".join(str(3 + (i * 13 + j) % 1000) for j in range(32)) for i in range(B)]
        ids = torch.tensor([tok(p)["input_ids"] for p in prompts], device=device)
        row = dict(B=B, new_tokens=new_tokens)
        for label, kw in (("hf", {}),):
            a.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=True, top_k=0)
            sync(device)
            t = time.perf_counter()
            a.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, top_k=0, **kw)
            sync(device)
            row[f"{label}_one_model_tok_s"] = B * new_tokens / (time.perf_counter() - t)
        for method in ("fixed", "kl_symmetry"):
            qm = create_optimal_sampling_model(a, b, tokenizer=tok, device=device, dtype=str(dtype).split(".")[1],
                                               alpha_method=method, max_batch_size=B)
            qm.generate(prompts, max_new_tokens=4, ignore_eos=True)  # capture graphs, warm up
            sync(device)
            t = time.perf_counter()
            qm.generate(prompts, max_new_tokens=new_tokens, ignore_eos=True)
            sync(device)
            row[f"qstar_{method}_tok_s"] = B * new_tokens / (time.perf_counter() - t)
        row["ratio_to_limit"] = row["qstar_kl_symmetry_tok_s"] / (row["hf_one_model_tok_s"] / 2)
        row["kl_over_fixed"] = row["qstar_kl_symmetry_tok_s"] / row["qstar_fixed_tok_s"]
        rows.append({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    return rows


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-check-out"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    corr = correctness(args.device)
    print("engine correctness:", json.dumps(corr), flush=True)
    batches = [1, 4] if args.small else [1, 32, 128]
    rows = throughput(args.device, args.small, batches, 8 if args.small else args.new_tokens)
    with open(os.path.join(args.out, "gpu_engine.json"), "w") as f:
        json.dump(dict(correctness=corr, rows=rows), f, indent=1)
    cols = ["B", "hf_one_model_tok_s", "qstar_fixed_tok_s", "qstar_kl_symmetry_tok_s", "ratio_to_limit", "kl_over_fixed"]
    print(" ".join(f"{c:>24}" for c in cols))
    for r in rows:
        print(" ".join(f"{r[c]:>24}" for c in cols))
    print(json.dumps(dict(bench="gpu_engine", correct=corr["ok"], rows=rows)))
    return 0 if corr["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
