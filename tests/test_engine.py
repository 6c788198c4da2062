"""The two-model engine against HF transformers on tiny random pairs."""
import numpy as np
import pytest
import torch
from scipy.stats import chisquare

import tiny
from engine import create_optimal_sampling_model
from qstar_kernels import METHODS, mix

PROMPTS = ["what is two plus two?", "hello world", "solve the problem step by step and give the answer now."]


@pytest.fixture(scope="module")
def models():
    return tiny.model(seed=1), tiny.model(seed=2)


def make(models, **kw):
    kw.setdefault("device", "cpu")
    return create_optimal_sampling_model(models[0], models[1], tokenizer=tiny.tokenizer(), **kw)


def chat_ids(text):
    out = tiny.tokenizer().apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                               tokenize=True)
    return list(out["input_ids"])


@pytest.mark.parametrize("alpha,side", [(1.0, 0), (0.0, 1)])
@pytest.mark.parametrize("row_model", [False, True])
def test_greedy_reproduces_hf_generate_batched_left_padded(models, alpha, side, row_model):
    tok = tiny.tokenizer()
    qm = make(models, alpha_method="fixed", alpha=alpha, max_batch_size=2, force_row_model=row_model)
    outs = qm.generate(PROMPTS, max_new_tokens=16, temperature=0.0)
    ids = [chat_ids(p) for p in PROMPTS]
    L = max(map(len, ids))
    batch = torch.tensor([[tok.pad_token_id] * (L - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (L - len(x)) + [1] * len(x) for x in ids])
    ref = models[side].generate(batch, attention_mask=mask, max_new_tokens=16, do_sample=False)
    for o, r in zip(outs, ref[:, L:].tolist()):
        eos = tok.eos_token_id
        want = r[:r.index(eos) + 1] if eos in r else r
        assert o.token_ids == want
        assert o.finish_reason == ("stop" if eos in r else "length")


@pytest.mark.parametrize("method", METHODS)
def test_recorded_values_equal_teacher_forced_recomputation(models, method):
    qm = make(models, alpha_method=method, alpha=0.3, max_batch_size=3)
    prompts_t = [p + " reference solution: four." for p in PROMPTS]
    outs = qm.generate(PROMPTS, prompts_t=prompts_t, max_new_tokens=10, temperature=1.0, top_p=0.9, n=2, seed=5)
    assert len(outs) == 6 and [(o.prompt_index, o.sample_index) for o in outs] == [(i, j) for i in range(3) for j in range(2)]
    for o in outs:
        p_theta, p_t = chat_ids(PROMPTS[o.prompt_index]), chat_ids(prompts_t[o.prompt_index])
        assert (o.num_prompt_tokens_theta, o.num_prompt_tokens_t) == (len(p_theta), len(p_t))
        resp = o.token_ids
        with torch.no_grad():
            lg_theta = models[0](torch.tensor([p_theta + resp])).logits[0, len(p_theta) - 1:-1]
            lg_t = models[1](torch.tensor([p_t + resp])).logits[0, len(p_t) - 1:-1]
        m = mix(lg_theta.double(), lg_t.double(), method, alpha=0.3)
        idx = torch.tensor(resp)[:, None]
        for name, want in (("alpha", m.alpha), ("logp_theta", m.logp_theta.gather(1, idx)[:, 0]),
                           ("logp_t", m.logp_t.gather(1, idx)[:, 0]), ("logq", m.logq.gather(1, idx)[:, 0]),
                           ("kl_theta", m.kl_theta), ("ess_t", m.ess_t)):
            got = torch.tensor(getattr(o, name), dtype=torch.float64)
            assert len(got) == len(resp)
            assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (method, name, (got - want).abs().max())
        assert all(b <= 0 for b in o.logp_behavior)


@pytest.mark.parametrize("method,kw", [(m, {}) for m in METHODS] + [("kl_symmetry", dict(top_p=0.8)),
                                                                     ("kl_symmetry", dict(top_k=5, temperature=0.8))])
def test_first_token_chi_square(models, method, kw):
    N = 3000
    qm = make(models, alpha_method=method, alpha=0.3, max_batch_size=256)
    outs = qm.generate([PROMPTS[0]], max_new_tokens=1, n=N, seed=11, **kw)
    ids = chat_ids(PROMPTS[0])
    with torch.no_grad():
        a = models[0](torch.tensor([ids])).logits[:, -1].double()
        b = models[1](torch.tensor([ids])).logits[:, -1].double()
    import exact
    want = exact.behaviour(mix(a, b, method, alpha=0.3).logq[0].numpy(), **kw)
    counts = np.bincount([o.token_ids[0] for o in outs], minlength=len(want)).astype(float)
    assert counts[want == 0].sum() == 0
    ex = want * N
    big = ex >= 5
    obs, ex = np.append(counts[big], counts[~big].sum()), np.append(ex[big], ex[~big].sum())
    keep = ex > 0
    assert chisquare(obs[keep], ex[keep]).pvalue > 1e-4


def test_same_tokens_alone_or_in_a_busy_continuous_batch(models):
    qm = make(models, alpha_method="kl_symmetry", max_batch_size=2)
    alone = qm.generate([PROMPTS[2]], keys=[77], max_new_tokens=12, seed=3, ignore_eos=True)[0]
    busy = qm.generate(PROMPTS + [PROMPTS[2]] + PROMPTS, keys=[1, 2, 3, 77, 4, 5, -6], max_new_tokens=12,
                       seed=3, ignore_eos=True)
    assert busy[3].token_ids == alone.token_ids
    assert busy[3].alpha == pytest.approx(alone.alpha, abs=1e-6)
    row = make(models, alpha_method="kl_symmetry", max_batch_size=3, force_row_model=True)
    assert row.generate([PROMPTS[2]], keys=[77], max_new_tokens=12, seed=3, ignore_eos=True)[0].token_ids == alone.token_ids


def test_stop_strings_and_eos_union(models):
    qm = make(models, alpha_method="fixed", alpha=1.0)
    base = qm.generate([PROMPTS[1]], max_new_tokens=20, temperature=0.0, ignore_eos=True)[0]
    stop = base.text[5:8]
    assert stop and base.text.find(stop) == 5
    cut = qm.generate([PROMPTS[1]], max_new_tokens=20, temperature=0.0, ignore_eos=True, stop=[stop])[0]
    assert cut.finish_reason == "stop" and cut.text == base.text[:5]
    assert cut.token_ids == base.token_ids[:len(cut.token_ids)] and len(cut.token_ids) < len(base.token_ids)
    # an EOS id only model_t's generation config knows still stops the sample
    t_model = tiny.model(seed=2)
    t_model.generation_config.eos_token_id = [tiny.tokenizer().eos_token_id, base.token_ids[3]]
    qm2 = create_optimal_sampling_model(models[0], t_model, tokenizer=tiny.tokenizer(), device="cpu",
                                        alpha_method="fixed", alpha=1.0)
    out = qm2.generate([PROMPTS[1]], max_new_tokens=20, temperature=0.0)[0]
    assert out.finish_reason == "stop" and out.token_ids == base.token_ids[:4]


def test_bad_requests_are_per_request_errors(models):
    short = tiny.model(seed=2, max_pos=48)
    qm = create_optimal_sampling_model(models[0], short, tokenizer=tiny.tokenizer(), device="cpu")
    long_prompt = " ".join(["the quick brown fox"] * 3)  # fits model_theta (256), not model_t (48)
    outs = qm.generate([PROMPTS[1], long_prompt, "", [{"role": "user", "content": "hi"}]], max_new_tokens=4)
    assert outs[0].finish_reason in ("stop", "length") and outs[0].token_ids
    assert outs[1].finish_reason == "error" and "model_t has" in outs[1].error and "accepts at most 48" in outs[1].error and not outs[1].token_ids
    assert outs[2].finish_reason == "error" and "empty prompt" in outs[2].error
    assert outs[3].finish_reason in ("stop", "length")
    # a response reaching the context end of the shorter model stops with "length"
    edge = qm.generate(["what is two plus two?"], max_new_tokens=50, ignore_eos=True)[0]
    assert edge.finish_reason == "length" and len(edge.token_ids) + len(chat_ids("what is two plus two?")) == 48


def test_mismatched_tokenizers_fail_at_load_naming_both(models):
    other = tiny.tokenizer(vocab_size=300, extra="zebra quartz")
    m_t = tiny.model(seed=2)
    with pytest.raises(ValueError, match="tokenizers of model_theta .* and model_t .* differ"):
        create_optimal_sampling_model((models[0], tiny.tokenizer()), (m_t, other), device="cpu")


def test_qwen2_fast_path_matches_hf():
    qm = tiny.pair("qwen2", alpha_method="fixed", alpha=1.0)
    out = qm.generate([PROMPTS[0]], max_new_tokens=10, temperature=0.0, ignore_eos=True)[0]
    ids = chat_ids(PROMPTS[0])
    ref = qm.pair.model_theta.generate(torch.tensor([ids]), max_new_tokens=10, min_new_tokens=10, do_sample=False)
    assert out.token_ids == ref[0, len(ids):].tolist()


def test_other_architectures_run_on_the_row_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny.tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                     eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id, initializer_range=0.3)
    torch.manual_seed(0)
    a, b = GPT2LMHeadModel(cfg).eval(), GPT2LMHeadModel(cfg).eval()
    qm = create_optimal_sampling_model(a, b, tokenizer=tok, device="cpu", alpha_method="fixed", alpha=1.0)
    out = qm.generate([PROMPTS[0]], max_new_tokens=8, temperature=0.0, ignore_eos=True)[0]
    ids = chat_ids(PROMPTS[0])
    ref = a.generate(torch.tensor([ids]), max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert out.token_ids == ref[0, len(ids):].tolist()
    assert type(qm.pair.runner_theta).__name__ == "RowModel"


def test_padded_vocab_rows_are_masked():
    tok = tiny.tokenizer()
    a, b = tiny.model(seed=1, vocab=len(tok) + 12), tiny.model(seed=2, vocab=len(tok) + 12)
    with torch.no_grad():  # padded output rows that would win every draw if not masked
        for m in (a, b):
            m.lm_head.weight[len(tok):] *= 50
    qm = create_optimal_sampling_model(a, b, tokenizer=tok, device="cpu", alpha_method="kl_symmetry")
    assert qm.pair.vocab.vocab_size == len(tok) and qm.pair.vocab.logits_width == len(tok) + 12
    outs = qm.generate(PROMPTS, max_new_tokens=8, ignore_eos=True, seed=1)
    assert all(t < len(tok) for o in outs for t in o.token_ids)
    o = outs[0]
    ids = chat_ids(PROMPTS[0])
    with torch.no_grad():
        la = a(torch.tensor([ids + o.token_ids])).logits[0, len(ids) - 1:-1].double()
        lb = b(torch.tensor([ids + o.token_ids])).logits[0, len(ids) - 1:-1].double()
    m = mix(la, lb, "kl_symmetry", vocab_size=len(tok))
    assert torch.allclose(torch.tensor(o.alpha, dtype=torch.float64), m.alpha, atol=1e-4)


@pytest.mark.parametrize("row_model", [False, True])
def test_controls_in_the_engine(models, row_model):
    """support + force_teacher first,special: the recorded values equal the teacher-forced
    recomputation with the same controls; forced tokens have alpha 0 and logq == restricted logp_t."""
    tok = tiny.tokenizer()
    qm = make(models, alpha_method="kl_symmetry", support="t_top_k:30,t_top_p:0.9", force_teacher="first,special",
              alpha_min=0.2, force_row_model=row_model)
    assert qm.mixture.support_top_k == 30 and qm.mixture.force_first and qm.mixture.force_special
    special = torch.zeros(len(tok), dtype=torch.bool)
    special[sorted(qm.pair.vocab.special_ids)] = True
    assert special[tok.eos_token_id] and special[tok.convert_tokens_to_ids("<|im_start|>")]
    outs = qm.generate(PROMPTS, max_new_tokens=8, n=2, seed=3)
    for o in outs:
        p = chat_ids(PROMPTS[o.prompt_index])
        resp = o.token_ids
        with torch.no_grad():
            lg_theta = models[0](torch.tensor([p + resp])).logits[0, len(p) - 1:-1].double()
            lg_t = models[1](torch.tensor([p + resp])).logits[0, len(p) - 1:-1].double()
        force = torch.arange(len(resp)) == 0
        m = mix(lg_theta, lg_t, "kl_symmetry", alpha_min=0.2, support_top_k=30, support_top_p=0.9, force=force,
                force_tokens=special)
        idx = torch.tensor(resp)[:, None]
        assert torch.isfinite(m.logq.gather(1, idx)).all(), "a token outside pi_t's support set"
        assert o.forced[0] == 1 and o.alpha[0] == 0.0
        assert [bool(x) for x in o.forced] == m.forced.tolist()
        for name, want in (("alpha", m.alpha), ("logq", m.logq.gather(1, idx)[:, 0]),
                           ("logp_t", m.logp_t.gather(1, idx)[:, 0]), ("logp_theta", m.logp_theta.gather(1, idx)[:, 0])):
            got = torch.tensor(getattr(o, name), dtype=torch.float64)
            assert torch.allclose(got, want, atol=1e-4), (name, (got - want).abs().max())
        # unforced tokens keep the clamp; forced ones ignore it
        assert all(a >= 0.2 - 1e-7 for a, f in zip(o.alpha, o.forced) if not f)


@pytest.mark.parametrize("kw,msg", [(dict(support="t_top_k:-1"), "support must look like"),
                                    (dict(support="top_k:5"), "support must look like"),
                                    (dict(support="t_top_p:1.5"), "t_top_p in (0, 1]"),
                                    (dict(force_teacher="first,last"), "unknown: ['last']")])
def test_bad_controls_name_the_value(models, kw, msg):
    with pytest.raises(ValueError) as e:
        make(models, **kw)
    assert msg in str(e.value)


@pytest.mark.parametrize("kw,msg", [(dict(force_teacher=True), "force_teacher takes a comma-separated subset"),
                                    (dict(support="t_top_k:5,t_top_k:7"), "t_top_k given twice")])
def test_more_bad_controls(models, kw, msg):
    with pytest.raises(ValueError, match=msg):
        make(models, **kw)


def test_second_generate_reuses_the_runners_and_caches(models):
    qm = make(models, alpha_method="kl_symmetry", max_batch_size=2)
    first = qm.generate(PROMPTS, max_new_tokens=6, seed=4, ignore_eos=True)
    stepper, runners, cache = qm.engine.stepper, qm.engine.stepper.runners, qm.pair.runner_theta.k
    again = qm.generate(PROMPTS, max_new_tokens=6, seed=4, ignore_eos=True)
    assert qm.engine.stepper is stepper and qm.engine.stepper.runners == runners
    assert qm.pair.runner_theta.k.data_ptr() == cache.data_ptr()  # no new cache, no rebuild
    assert [o.token_ids for o in again] == [o.token_ids for o in first]
    assert qm.engine.cuda_graphs == "off (cpu)"


def test_max_model_len_sizes_the_cache_once_and_refuses_what_cannot_fit(models):
    qm = make(models, alpha_method="fixed", alpha=1.0, max_model_len=40)
    assert qm.engine_cfg.max_model_len == 40
    long_prompt = " ".join(["the quick brown fox"] * 3)  # ~70 tokens: fits both models, not the cache
    outs = qm.generate([PROMPTS[1], long_prompt], max_new_tokens=40, ignore_eos=True)
    assert qm.pair.runner_theta.k.shape[3] == 40 and qm.engine.limits == (40, 40)
    assert outs[0].finish_reason == "length" and len(outs[0].token_ids) + len(chat_ids(PROMPTS[1])) == 40
    assert outs[1].finish_reason == "error" and "KV cache holds 40 positions" in outs[1].error
    assert "max_model_len=" in outs[1].error
    with pytest.raises(ValueError, match="max_model_len must be an int >= 2"):
        make(models, max_model_len=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graphs_captured_once_per_engine_and_equal_eager():
    a, b = tiny.model(seed=1).cuda(), tiny.model(seed=2).cuda()
    kw = dict(tokenizer=tiny.tokenizer(), device="cuda", dtype="float32", alpha_method="kl_symmetry", max_batch_size=3)
    qm = create_optimal_sampling_model(a, b, cuda_graphs="strict", **kw)
    first = qm.generate(PROMPTS, max_new_tokens=8, seed=3, ignore_eos=True)
    graphs = qm.engine.stepper.graphs
    n = graphs.captures
    assert n >= 1 and qm.engine.cuda_graphs.startswith("on (")
    again = qm.generate(PROMPTS, max_new_tokens=8, seed=3, ignore_eos=True)
    assert graphs.captures == n  # the second call replays, captures nothing
    eager = create_optimal_sampling_model(a, b, cuda_graphs=False, **kw).generate(PROMPTS, max_new_tokens=8, seed=3,
                                                                                 ignore_eos=True)
    assert [o.token_ids for o in first] == [o.token_ids for o in again] == [o.token_ids for o in eager]


def test_a_mixture_set_between_calls_takes_effect(models):
    """The stepper is built once per engine, but a mixture assigned to the engine between generate
    calls (the vLLM comparison tests do this) must be the one sampled from."""
    from engine.config import MixtureConfig

    qm = make(models, alpha_method="kl_symmetry", max_batch_size=4)
    first = qm.generate(["hello world"], max_new_tokens=4, temperature=0.0, ignore_eos=True, chat_template=False)
    qm.mixture = qm.engine.mixture = MixtureConfig(alpha_method="fixed", alpha=1.0)
    theta_only = qm.generate(["hello world"], max_new_tokens=4, temperature=0.0, ignore_eos=True, chat_template=False)
    assert all(a == 1.0 for a in theta_only[0].alpha)
    assert first[0].alpha != theta_only[0].alpha
