"""GPU check of the engine (bench/gpu_check.sh's engine section), each part time-boxed:

1. correctness, small fp32 Llama pair: greedy = HF greedy; CUDA graphs (strict: a failed capture
   is an error) = eager; recorded values = teacher-forced recomputation; the graphs are captured
   once and a second generate call captures none (counted);
2. attention: the Triton decode kernel vs SDPA over the gathered cache (the old path) on the
   pair's shapes: max error and time per call;
3. throughput: a random Qwen2-style pair from configs (pi_theta ~0.5B, pi_t ~1.5B shapes, bf16)
   at B = 1 / 32 / 128, 256 new tokens: qstar kl_symmetry tokens/s vs each model alone in HF
   `generate` with a static cache, back to back (limit = 1 / (1/r_theta + 1/r_t)). Targets
   (DESIGN §5): ratio >= 0.9 at B = 1, >= 3 at B = 128.
Prints the table, then one JSON line, always (a part that ran out of time says so).

    PYTHONPATH=. python -m bench.gpu_engine [--out DIR] [--device cuda] [--small] [--budget 220]

--small shrinks everything (a CPU smoke test uses it). Installs nothing; no network.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

QWEN = {"0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2),
        "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                     num_key_value_heads=2)}
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def build(kind, shape, vocab, seed, device, dtype, std=0.02):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(kind, vocab_size=vocab, max_position_embeddings=4096, initializer_range=std,
                               bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=kind == "qwen2",
                               **shape)
    torch.manual_seed(seed)
    with torch.device(device):
        m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).to(dtype).eval()
    m.generation_config.pad_token_id = 0
    return m


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


def prompts_for(B, vocab, length=32):
    return [" ".join(str(3 + (i * 13 + j * 7) % (vocab - 3)) for j in range(length - i % 5)) for i in range(B)]


def correctness(device):
    from engine import create_optimal_sampling_model
    from qstar_kernels import mix

    V = 512
    a = build("llama", dict(SMALL, hidden_size=128, intermediate_size=256), V, 1, device, torch.float32, std=0.3)
    b = build("llama", dict(SMALL, hidden_size=128, intermediate_size=256), V, 2, device, torch.float32, std=0.3)
    tok = IdTokenizer(V)
    prompts = prompts_for(4, V, 12)
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
    gm = create_optimal_sampling_model(a, b, cuda_graphs="strict", **kw)
    g = gm.generate(prompts, max_new_tokens=24, seed=1)
    graphs = gm.engine.stepper.graphs
    captured = graphs.captures if graphs is not None else 0
    g2 = gm.generate(prompts, max_new_tokens=24, seed=1)
    res["graphs_captured"] = captured
    res["graphs_recaptured_by_second_call"] = (graphs.captures if graphs is not None else 0) - captured
    res["graphs_status"] = gm.engine.cuda_graphs
    e = create_optimal_sampling_model(a, b, cuda_graphs=False, **kw).generate(prompts, max_new_tokens=24, seed=1)
    res["graphs_equal_eager"] = all(x.token_ids == y.token_ids == z.token_ids for x, y, z in zip(g, g2, e))
    worst = 0.0
    for p, o in zip(prompts, g):
        ids = tok(p)["input_ids"]
        full = torch.tensor([ids + o.token_ids], device=device)
        with torch.no_grad():
            la = a(full).logits[0, len(ids) - 1:-1].double()
            lb = b(full).logits[0, len(ids) - 1:-1].double()
        m = mix(la, lb, "kl_symmetry")
        idx = torch.tensor(o.token_ids, device=device)[:, None]
        worst = max(worst, (torch.tensor(o.alpha, dtype=torch.float64, device=device) - m.alpha).abs().max().item(),
                    (torch.tensor(o.logq, dtype=torch.float64, device=device) - m.logq.gather(1, idx)[:, 0]).abs().max().item())
    res["recompute_max_err"] = worst
    graphs_ok = device == "cpu" or (captured > 0 and res["graphs_recaptured_by_second_call"] == 0)
    res["ok"] = bool(same and res["graphs_equal_eager"] and worst < 1e-3 and graphs_ok)
    return res


def attention(device, small):
    """Triton decode attention vs gather + masked SDPA (the old graphed path) on the pair's head shapes."""
    import torch.nn.functional as F

    from qstar_kernels.attention import decode_attention

    dt = torch.float32 if device == "cpu" else torch.bfloat16
    shapes = [("0.5b", 14, 2, 64), ("1.5b", 12, 2, 128)] if not small else [("small", 4, 2, 16)]
    L = 256 if small else 4096
    rows = []
    for name, H, Hkv, D in shapes:
        for N in ((1, 4) if small else (1, 32, 128)):
            g = torch.Generator(device=device).manual_seed(N)
            S = N + 1
            k = torch.randn(S, Hkv, L, D, generator=g, device=device, dtype=dt)
            v = torch.randn(S, Hkv, L, D, generator=g, device=device, dtype=dt)
            q = torch.randn(N, H, D, generator=g, device=device, dtype=dt)
            slots = torch.randperm(S, device=device)[:N]
            lengths = torch.randint(1, L // 2, (N,), device=device)
            span = L  # a graphed step could not know the live length: it read the whole cache

            def sdpa():
                mask = (torch.arange(span, device=device)[None] < lengths[:, None])[:, None, None]
                return F.scaled_dot_product_attention(q[:, :, None], k[slots, :, :span], v[slots, :, :span],
                                                      attn_mask=mask, scale=D ** -0.5, enable_gqa=True)[:, :, 0]

            ours = lambda: decode_attention(q, k, v, slots, lengths, D ** -0.5)  # noqa: E731
            err = (ours().float() - sdpa().float()).abs().max().item()
            rows.append(dict(shape=name, N=N, H=H, Hkv=Hkv, D=D, L=L, max_err=err,
                             triton_us=timed(ours, device) * 1e6, sdpa_gather_us=timed(sdpa, device) * 1e6))
    return rows


def timed(fn, device, repeat=20):
    fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync(device)
    return (time.perf_counter() - t) / repeat


def hf_tok_s(model, ids, new_tokens, device):
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True, top_k=0,
              cache_implementation="static")
    model.generate(ids, **dict(kw, max_new_tokens=4, min_new_tokens=4))
    sync(device)
    t = time.perf_counter()
    model.generate(ids, **kw)
    sync(device)
    return ids.shape[0] * new_tokens / (time.perf_counter() - t)


def throughput(device, small, batches, new_tokens, deadline):
    from engine import create_optimal_sampling_model

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    vocab = 1024 if small else 151936
    theta = build("qwen2", SMALL if small else QWEN["0.5b"], vocab, 1, device, dtype)
    t = build("qwen2", SMALL if small else QWEN["1.5b"], vocab, 2, device, dtype)
    tok = IdTokenizer(vocab)
    qm = create_optimal_sampling_model(theta, t, tokenizer=tok, device=device, dtype=str(dtype).split(".")[1],
                                       alpha_method="kl_symmetry", max_batch_size=max(batches),
                                       max_model_len=64 + new_tokens, cuda_graphs="strict")
    rows = []
    for B in batches:
        if time.monotonic() > deadline:
            rows.append(dict(B=B, skipped="time box"))
            continue
        ids = torch.tensor([tok(p)["input_ids"][:26] for p in prompts_for(B, vocab)], device=device)
        prompts = [" ".join(map(str, r)) for r in ids.tolist()]  # the same 26 tokens per row for both
        row = dict(B=B, new_tokens=new_tokens)
        for side, m in (("theta", theta), ("t", t)):
            row[f"hf_{side}_tok_s"] = hf_tok_s(m, ids, new_tokens, device)
        qm.generate(prompts, max_new_tokens=4, ignore_eos=True)  # captures this bucket's graph
        sync(device)
        before = qm.engine.stepper.graphs.captures if qm.engine.stepper.graphs else 0
        t0 = time.perf_counter()
        qm.generate(prompts, max_new_tokens=new_tokens, ignore_eos=True)
        sync(device)
        row["qstar_kl_tok_s"] = B * new_tokens / (time.perf_counter() - t0)
        row["graphs_captured_in_timed_run"] = (qm.engine.stepper.graphs.captures if qm.engine.stepper.graphs else 0) - before
        row["limit_tok_s"] = 1 / (1 / row["hf_theta_tok_s"] + 1 / row["hf_t_tok_s"])
        row["ratio_to_limit"] = row["qstar_kl_tok_s"] / row["limit_tok_s"]
        row["target"] = 3.0 if B >= 128 else 0.9 if B == 1 else None
        rows.append({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
    return rows, qm.engine.cuda_graphs


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def boxed(name, fn, result, deadline):
    """Run one part unless the time box is spent; its error or skip is recorded, never raised."""
    if time.monotonic() > deadline:
        result[name] = "skipped: time box"
        return None
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the JSON line is printed whatever happens
        result[name] = f"error: {type(e).__name__}: {e}"[:500]
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-check-out"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--budget", type=float, default=220, help="seconds for all parts (gpu_check.sh allows 240)")
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    start = time.monotonic()
    end = start + args.budget
    res: dict = {}
    corr = boxed("correctness", lambda: correctness(args.device), res, start + 0.3 * args.budget) or {"ok": False}
    print("engine correctness:", json.dumps(corr), flush=True)
    attn = boxed("attention", lambda: attention(args.device, args.small), res, start + 0.45 * args.budget) or []
    batches = [1, 4] if args.small else [1, 32, 128]
    got = boxed("throughput", lambda: throughput(args.device, args.small, batches,
                                                 8 if args.small else args.new_tokens, end), res, end)
    rows, graphs = got if got else ([], None)
    with open(os.path.join(args.out, "gpu_engine.json"), "w") as f:
        json.dump(dict(correctness=corr, attention=attn, rows=rows, graphs=graphs, errors=res), f, indent=1)
    if attn:
        print(f"{'shape':>6} {'N':>4} {'max_err':>9} {'triton_us':>10} {'sdpa_gather_us':>15}")
        for r in attn:
            print(f"{r['shape']:>6} {r['N']:>4} {r['max_err']:9.2e} {r['triton_us']:10.1f} {r['sdpa_gather_us']:15.1f}")
    cols = ["B", "hf_theta_tok_s", "hf_t_tok_s", "limit_tok_s", "qstar_kl_tok_s", "ratio_to_limit", "target"]
    print(" ".join(f"{c:>16}" for c in cols))
    for r in rows:
        print(" ".join(f"{str(r.get(c, r.get('skipped', ''))):>16}" for c in cols))
    met = all(r["ratio_to_limit"] >= r["target"] for r in rows if r.get("target") and "ratio_to_limit" in r)
    print(json.dumps(dict(bench="gpu_engine", correct=corr["ok"], targets_met=met, cuda_graphs=graphs,
                          rows=rows, attention=attn, errors=res, seconds=round(time.monotonic() - start, 1))))
    return 0 if corr["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
