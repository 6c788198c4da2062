"""Tiny random model pairs and a tokenizer trained in code (no files, no downloads)."""
from __future__ import annotations

import functools

import torch

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "what is two plus two? two plus two is four.",
    "solve the problem step by step and give the answer.",
    "reference solution: add the numbers, then divide by three.",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z 0 1 2 3 4 5 6 7 8 9",
    "hello world, this is a tiny model for tests of the mixture sampler.",
] * 4

CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@functools.cache
def tokenizer(vocab_size: int = 200, extra: str = ""):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS + ([extra] if extra else []), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT
    return fast


def model(kind: str = "llama", seed: int = 0, vocab: int | None = None, hidden: int = 64, layers: int = 2,
          heads: int = 4, kv_heads: int = 2, std: float = 0.3, max_pos: int = 256, eos=None):
    """A random causal LM whose logits have LM-like spread (std of init), eval mode, fp32."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = tokenizer()
    V = vocab or len(tok)
    cfg = AutoConfig.for_model(kind, vocab_size=V, hidden_size=hidden, intermediate_size=2 * hidden,
                               num_hidden_layers=layers, num_attention_heads=heads,
                               num_key_value_heads=kv_heads, max_position_embeddings=max_pos,
                               initializer_range=std, tie_word_embeddings=False,
                               bos_token_id=tok.bos_token_id, eos_token_id=eos if eos is not None else tok.eos_token_id,
                               pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    m.generation_config.eos_token_id = cfg.eos_token_id
    m.generation_config.pad_token_id = tok.pad_token_id
    return m


def pair(kind: str = "llama", **engine):
    """An OptimalSamplingModel over two different random models of one family."""
    from engine import create_optimal_sampling_model

    return create_optimal_sampling_model(model_theta=model(kind, seed=1), model_t=model(kind, seed=2),
                                         tokenizer=tokenizer(), device="cpu", **engine)


def save(root, models: dict) -> list[str]:
    """Save each {name: model} under root/name with the tiny tokenizer (chat template included)."""
    tok, out = tokenizer(), []
    for name, m in models.items():
        m.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out.append(str(root / name))
    return out


class Float64Pair:
    """Both saved models reloaded in float64 (eval), for teacher-forced references."""

    def __init__(self, path_theta: str, path_t: str):
        import torch
        from transformers import AutoModelForCausalLM

        self.theta = AutoModelForCausalLM.from_pretrained(path_theta, dtype=torch.float64).eval()
        self.t = AutoModelForCausalLM.from_pretrained(path_t, dtype=torch.float64).eval()
