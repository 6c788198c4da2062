"""update_policy_weights on the hf backend: in place, exact, pi_t untouched, bad weights refused."""
import pytest
import torch

import tiny
from engine import create_optimal_sampling_model
from engine.policy_weights import WeightsError

PROMPTS = ["what is two plus two?", "hello world"]


def teacher_forced(model, prompt_ids, tokens, V):
    """log-probs (len(tokens),) of `tokens` after `prompt_ids` under `model` (first V columns)."""
    ids = torch.tensor([prompt_ids + tokens[:-1]])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1:, :V].double()
    return torch.log_softmax(logits, -1)[torch.arange(len(tokens)), torch.tensor(tokens)]


def check_logps(sampler, outs, model_theta, model_t, tol=1e-5):
    tok, V = sampler.tokenizer, sampler.pair.vocab.vocab_size
    for o in outs:
        pids = tok.apply_chat_template([{"role": "user", "content": PROMPTS[o.prompt_index]}],
                                       add_generation_prompt=True, tokenize=True)
        pids = list(pids["input_ids"] if hasattr(pids, "keys") else pids)
        for side, model in (("logp_theta", model_theta), ("logp_t", model_t)):
            ref = teacher_forced(model, pids, o.token_ids, V)
            got = torch.tensor(getattr(o, side), dtype=torch.float64)
            assert (got - ref).abs().max().item() <= tol, side


def gen(sampler):
    return sampler.generate(PROMPTS, max_new_tokens=6, n=2, seed=3, ignore_eos=True)


def test_update_in_place_moves_theta_only():
    theta, t, new = tiny.model(seed=1), tiny.model(seed=2), tiny.model(seed=5)
    t_ref = tiny.model(seed=2)
    sampler = create_optimal_sampling_model(theta, t, "fixed", alpha=1.0, tokenizer=tiny.tokenizer(), device="cpu")
    check_logps(sampler, gen(sampler), tiny.model(seed=1), t_ref)
    engine, param = sampler.engine, sampler.pair.model_theta.model.embed_tokens.weight
    assert sampler.update_policy_weights(new.state_dict()) == len(new.state_dict())
    assert sampler.engine is engine and sampler.pair.model_theta.model.embed_tokens.weight is param  # in place
    check_logps(sampler, gen(sampler), new, t_ref)


def test_wrapped_names_and_pairs_accepted():
    sampler = tiny.pair(alpha_method="fixed", alpha=1.0)
    new = tiny.model(seed=7)
    # DDP prefix, PEFT prefix + base_layer, PEFT's untouched original_module copy (skipped)
    items = [("module." + n, w) for n, w in new.named_parameters() if "layers.0." not in n]
    items += [("base_model.model." + n.replace("q_proj.", "q_proj.base_layer."), w)
              for n, w in new.named_parameters() if "layers.0." in n]
    items.append(("base_model.model.lm_head.original_module.weight", torch.zeros(3)))
    assert sampler.update_policy_weights(iter(items)) == len(items) - 1
    for n, w in new.named_parameters():
        assert torch.equal(sampler.pair.model_theta.get_parameter(n), w)


def test_shared_model_unshared_on_first_update(pair_dirs):
    theta_dir = pair_dirs[0]
    sampler = create_optimal_sampling_model(theta_dir, theta_dir, "fixed", alpha=0.5, device="cpu")
    assert sampler.pair.model_t is sampler.pair.model_theta  # one path: one object today
    new = tiny.model(seed=9)
    sampler.update_policy_weights(new.state_dict())
    assert sampler.pair.model_t is not sampler.pair.model_theta
    from transformers import AutoModelForCausalLM

    original = AutoModelForCausalLM.from_pretrained(theta_dir, dtype=torch.float32).eval()
    check_logps(sampler, gen(sampler), new, original)
    engine = sampler.engine
    sampler.update_policy_weights(tiny.model(seed=10).state_dict())  # second update: no new engine
    assert sampler.engine is engine


def test_bad_weights_refused_and_nothing_copied():
    sampler = tiny.pair()
    before = {n: w.clone() for n, w in sampler.pair.model_theta.state_dict().items()}
    other = tiny.model("qwen2", seed=3, hidden=32)  # another model: qwen2 names have biases, other shapes
    with pytest.raises(WeightsError, match="not parameters of model_theta"):
        sampler.update_policy_weights(other.state_dict())
    wide = tiny.model(seed=3, hidden=32)
    with pytest.raises(WeightsError, match="wrong shape.*another model"):
        sampler.update_policy_weights(wide.state_dict())
    with pytest.raises(WeightsError, match="LoRA"):
        sampler.update_policy_weights({"model.layers.0.self_attn.q_proj.lora_A.default.weight": torch.zeros(2, 2)})
    with pytest.raises(WeightsError, match="state dict or an iterable"):
        sampler.update_policy_weights(torch.zeros(3))
    with pytest.raises(WeightsError, match="no weights"):
        sampler.update_policy_weights({})
    for n, w in sampler.pair.model_theta.state_dict().items():
        assert torch.equal(w, before[n]), n
