"""What the vllm backend refuses, each before an engine starts, with a message that says why."""
import pytest

import tiny
import vllm_tiny
from engine import create_optimal_sampling_model
from engine.backends.vllm.checks import PairError


def _config_dir(root, kind, **cfg):
    """A model dir with only config + tokenizer: enough for the checks, which run first."""
    from transformers import AutoConfig

    tok = tiny.tokenizer()
    AutoConfig.for_model(kind, vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         architectures=[cfg.pop("arch", "LlamaForCausalLM")], **cfg).save_pretrained(root)
    tok.save_pretrained(root)
    return str(root)


def _make(theta, t, **kw):
    return create_optimal_sampling_model(theta, t, backend="vllm", cuda_graphs=False, **kw)


def test_different_tp_degree(pair_a):
    with pytest.raises(PairError, match="tensor_parallel_size_t=2 differs"):
        _make(*pair_a, tensor_parallel_size_t=2)


def test_tp_that_does_not_split_the_heads(pair_a):
    with pytest.raises(PairError, match=r"model_theta .*2 attention heads do not split over tensor_parallel_size=4"):
        _make(*pair_a, tensor_parallel_size=4)


@pytest.mark.parametrize("kind,cfg,needle", [
    ("qwen2", dict(use_sliding_window=True, sliding_window=16, max_window_layers=0,
                   arch="Qwen2ForCausalLM"), "sliding"),
    ("jamba", dict(arch="JambaForCausalLM"), "hybrid"),
    ("llama", dict(head_dim=16), "head_dim 16 is not supported by vLLM's CPU attention"),
])
def test_hybrid_sliding_and_cpu_head_size(pair_a, tmp_path, kind, cfg, needle):
    bad = _config_dir(tmp_path / kind, kind, **cfg)
    with pytest.raises(PairError, match=needle) as e:
        _make(pair_a[0], bad)
    assert "model_t" in str(e.value)


def test_tokenizer_mismatch_names_both_models(pair_a, tmp_path):
    other = tmp_path / "other"
    _config_dir(other, "llama", head_dim=32)
    tiny.tokenizer(vocab_size=400, extra="zebra quagga okapi narwhal").save_pretrained(other)
    with pytest.raises(ValueError, match="tokenizers of model_theta .* and model_t .* differ") as e:
        _make(pair_a[0], str(other))
    assert str(other) in str(e.value)


def test_model_objects_are_refused(pair_a):
    with pytest.raises(PairError, match="paths or hub names"):
        _make(vllm_tiny._model("llama", 1, 64, 2, 2, 1, 32), pair_a[1])


def test_per_side_prompts_are_refused(engine_a):
    with pytest.raises(PairError, match="per-side prompts"):
        engine_a.generate(["hello world"], prompts_t=["hello world, with a reference solution"])


def test_requests_without_qstar_args_are_refused(engine_a):
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    with pytest.raises((ValueError, VLLMValidationError), match="extra_args"):
        engine_a.engine.llm.generate(["hello"], SamplingParams(max_tokens=2), use_tqdm=False)
    with pytest.raises((ValueError, VLLMValidationError), match="temperature must be 0"):
        q = dict(key=0, seed=0, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, alpha_method="fixed",
                 alpha=0.5, alpha_min=0.0, alpha_max=1.0, support_top_k=0, support_top_p=1.0,
                 force_first=False, force_special=False)
        engine_a.engine.llm.generate(["hello"], SamplingParams(max_tokens=2, temperature=1.0,
                                                               extra_args={"qstar": q}), use_tqdm=False)
    with pytest.raises((ValueError, VLLMValidationError), match="support_top_p"):
        q.update(support_top_p=0.0)
        engine_a.engine.llm.generate(["hello"], SamplingParams(max_tokens=2, temperature=0.0,
                                                               extra_args={"qstar": q}), use_tqdm=False)
