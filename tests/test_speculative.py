"""Speculative mixture sampling in the engine: emitted tokens are b-distributed at every position
(randomized PIT against teacher-forced b, chi-square per position 1..2K+2), records equal the
teacher-forced recomputation, b = d accepts everything, stops cut rounds, batch invariance."""
import functools

import pytest
import torch

from engine.check.runner import pit
from engine.check.stats import chi_square, rel_err
from qstar_kernels import METHODS, behaviour, mix
from tests import tiny

PROMPT = "what is two plus two?"
BINS = 8


@functools.cache
def _pair(alpha_method="kl_symmetry", support="", force_teacher=""):
    """pi_t = pi_theta with every weight perturbed: close enough that runs of K accepted drafts
    (the bonus path) happen, far enough that corrections do too."""
    from engine import create_optimal_sampling_model

    theta, t = tiny.model(seed=1), tiny.model(seed=1)
    g = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in t.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.15 * p.std().clamp_min(0.05))
    return create_optimal_sampling_model(model_theta=theta, model_t=t, tokenizer=tiny.tokenizer(), device="cpu",
                                         alpha_method=alpha_method, support=support, force_teacher=force_teacher,
                                         max_batch_size=64, threads=1)


@torch.no_grad()
def _forced(qm, outs, sampling):
    """Teacher-forced float64 Mixture and log b at every token of every (equal-length) output."""
    from engine.loading import token_table
    from engine.prompts import render

    ids = render(qm.tokenizer, PROMPT, chat_template=True)
    T = len(outs[0].token_ids)
    x = torch.tensor([ids + o.token_ids[:-1] for o in outs])
    W, mx = qm.pair.vocab.logits_width, qm.mixture
    lg = [m(input_ids=x).logits[:, -T:, :W].double().reshape(-1, W) for m in (qm.pair.model_theta, qm.pair.model_t)]
    force = (torch.arange(len(outs) * T) % T == 0) if mx.force_first else None
    m = mix(*lg, mx.alpha_method, alpha=mx.alpha, vocab_size=qm.pair.vocab.vocab_size, support_top_k=mx.support_top_k,
            support_top_p=mx.support_top_p, force=force, backend="torch",
            force_tokens=token_table(qm.pair.vocab.special_ids, W) if mx.force_special else None)
    return m, behaviour(m.logq, **sampling).view(len(outs), T, -1), T


@pytest.mark.parametrize("K,draft,support,sampling", [
    (1, "theta", "", dict(temperature=0.8, top_p=0.9)),
    (4, "t", "", dict(temperature=0.8, top_p=0.9)),
    (1, "t", "t_top_k:20", dict(temperature=1.0)),
    (4, "theta", "t_top_p:0.95", dict(temperature=1.0)),
])
def test_every_position_is_b_distributed(K, draft, support, sampling):
    qm, N, T = _pair(support=support), 160, 2 * K + 2
    outs = qm.generate([PROMPT], n=N, max_new_tokens=T, ignore_eos=True, seed=5, speculative=K, draft=draft,
                       **sampling)
    assert all(len(o.token_ids) == T for o in outs)
    _, logb, _ = _forced(qm, outs, sampling)
    toks = torch.tensor([o.token_ids for o in outs])
    gen = torch.Generator().manual_seed(0)
    drafted = torch.tensor([o.drafted for o in outs])
    assert 0 < drafted[:, 1:].mean() < 1, "both paths (accepted drafts, corrections) must be exercised"
    assert drafted[:, K + 1:].any() and (drafted[:, :K + 1].sum(1) == K).any(), "a second round and a bonus"
    for i in range(T):
        u = pit(logb[:, i], toks[:, i], gen)
        cs = chi_square(torch.histc(u, BINS, 0, 1), torch.full((BINS,), 1 / BINS), N)
        assert cs.p > 1e-3 / T, (i, cs)


@pytest.mark.parametrize("method", METHODS)
def test_records_equal_teacher_forced_recomputation(method):
    qm, sampling = _pair(method, force_teacher="first,special"), dict(temperature=0.9, top_k=30, top_p=0.95)
    outs = qm.generate([PROMPT], n=4, max_new_tokens=12, ignore_eos=True, seed=2, speculative=3, draft="t",
                       **sampling)
    m, logb, T = _forced(qm, outs, sampling)
    tok = torch.tensor([o.token_ids for o in outs]).reshape(-1, 1)
    want = dict(logp_theta=m.logp_theta.gather(1, tok)[:, 0], logp_t=m.logp_t.gather(1, tok)[:, 0],
                logq=m.logq.gather(1, tok)[:, 0], logp_behavior=logb.reshape(-1, logb.shape[-1]).gather(1, tok)[:, 0],
                alpha=m.alpha, kl_theta=m.kl_theta, entropy_q=m.entropy_q, forced=m.forced.double())
    for k, w in want.items():
        got = torch.tensor([v for o in outs for v in getattr(o, k)], dtype=torch.float64)
        assert float(rel_err(got, w).max()) <= 1e-4, k
    assert all(o.forced[0] == 1 for o in outs)
    assert all(o.draft_accept_rate is not None and 0 <= o.draft_accept_rate <= 1 for o in outs)


def test_b_equal_d_accepts_all_drafts():
    """alpha = 1 (fixed), draft = theta, no truncation: d = b, so every draft is accepted."""
    qm = _pair(alpha_method="fixed")
    qm.mixture.alpha = 1.0  # noqa: the stepper is rebuilt for a changed mixture
    try:
        outs = qm.generate([PROMPT], n=4, max_new_tokens=11, ignore_eos=True, speculative=4, draft="theta")
    finally:
        qm.mixture.alpha = 0.5
    for o in outs:
        assert o.drafted == [0] + [1] * 4 + [0] + [1] * 4 + [0] and o.draft_accept_rate == 1.0


def test_same_alone_or_in_a_batch_and_stops():
    qm = _pair()
    kw = dict(max_new_tokens=13, seed=3, speculative=4, draft="auto", temperature=1.0)
    batch = qm.generate([PROMPT, "hello world", "the quick"], n=3, ignore_eos=True, **kw)
    alone = qm.generate(["hello world"], keys=[(1 << 20) + 2], ignore_eos=True, **kw)
    assert alone[0].token_ids == batch[5].token_ids and alone[0].drafted == batch[5].drafted
    torch.testing.assert_close(alone[0].logq, batch[5].logq, atol=1e-5, rtol=0)  # batched matmul rounding
    assert all(len(o.token_ids) == 13 and len(o.drafted) == 13 for o in batch)  # never past max_new_tokens
    greedy = dict(kw, temperature=0.0)  # b and d are point masses: the plain run's tokens exactly
    assert [o.token_ids for o in qm.generate([PROMPT], ignore_eos=True, **greedy)] == \
        [o.token_ids for o in qm.generate([PROMPT], ignore_eos=True, **dict(greedy, speculative=0))]
    eos = qm.pair.vocab.eos_ids
    for o in qm.generate([PROMPT], n=16, **dict(kw, max_new_tokens=40)):
        assert not set(o.token_ids[:-1]) & eos and len(o.token_ids) <= 40
        assert o.finish_reason == ("stop" if o.token_ids[-1] in eos else "length")
    for o in qm.generate([PROMPT], n=8, stop=["e"], ignore_eos=True, **kw):
        text = qm.tokenizer.decode(o.token_ids, skip_special_tokens=True)
        assert o.finish_reason == "length" or ("e" in text and "e" not in o.text)
        assert "e" not in qm.tokenizer.decode(o.token_ids[:-1], skip_special_tokens=True)


@pytest.mark.parametrize("kw,msg", [(dict(speculative=-1), "speculative must be an int"),
                                    (dict(speculative=2.5), "speculative must be an int"),
                                    (dict(speculative=2, draft="big"), "draft must be one of")])
def test_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        _pair().generate([PROMPT], max_new_tokens=2, **kw)


def test_pipeline_records_manifest_and_resume_guard(pair_dirs, tmp_path):
    import json

    from engine.cli import main
    from tests.test_pipeline import ROWS, lines, run, write_jsonl

    ds, out = write_jsonl(tmp_path / "d.jsonl", ROWS[:2]), tmp_path / "o.jsonl"
    assert run(pair_dirs, ds, out, "--speculative", 2, "--save-token-stats", "--threads", 1) == 0
    recs = lines(out)
    assert all(len(r["drafted"]) == len(r["token_ids"]) and 0 <= r["draft_accept_rate"] <= 1 for r in recs)
    man = json.loads((tmp_path / "o.manifest.json").read_text())
    assert man["config"]["speculative"] == 2 and man["config"]["draft"] == "auto" and man["draft_resolved"] == "theta"
    assert run(pair_dirs, ds, out, "--speculative", 3) == 2  # another K samples differently: refused
    part = tmp_path / "p.jsonl"  # resumed in two sessions: the same samples
    assert run(pair_dirs, ds, part, "--speculative", 2, "--save-token-stats", "--num-samples", 1) == 0
    manifest = tmp_path / "p.manifest.json"  # "auto" resolving to another side on resume: refused
    good = manifest.read_text()
    manifest.write_text(json.dumps(dict(json.loads(good), draft_resolved="t")))
    assert run(pair_dirs, ds, part, "--speculative", 2, "--save-token-stats", "--batch-size", 1) == 2
    manifest.write_text(good)
    assert run(pair_dirs, ds, part, "--speculative", 2, "--save-token-stats", "--batch-size", 1) == 0
    key = lambda r: (r["sample_idx"], r["n"])  # noqa: E731
    assert sorted(([key(r), r["token_ids"]] for r in lines(part)), key=str) == \
        sorted(([key(r), r["token_ids"]] for r in recs), key=str)
    diag = lines(tmp_path / "o.diagnostics.jsonl")
    assert all("drafted" in d and "draft_accept_rate" in d for d in diag)
    assert main(["analyze", str(tmp_path / "o.diagnostics.jsonl"), "--output-dir", str(tmp_path / "a"),
                 "--no-plots"]) == 0  # the analysis reads records that carry the new fields


def test_qstar_check_speculative_passes(pair_dirs, tmp_path, capsys):
    import json

    from engine.cli import main

    out = tmp_path / "check.json"
    rc = main(["check", "--model-theta", pair_dirs[0], "--model-t", pair_dirs[1], "--draws", "600", "--samples", "3",
               "--max-new-tokens", "16", "--threads", "1", "--speculative", "4", "--draft", "t",
               "--support-top-p", "0.97", "--force-teacher", "first", "--temperature", "0.9", "--top-p", "0.95",
               "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "speculative 4 (draft t)" in text
    pit = next(r for r in json.loads(out.read_text())["rows"] if r["name"].startswith("every token ~"))
    assert pit["detail"]["dof"] == 9


def test_cache_end_cuts_rounds_and_row_model_refuses():
    """Rounds that run past the end of a row's cache (writes clamped) only feed tokens that the
    length stop cuts; the per-row fallback has no multi-token extend and says so."""
    qm = tiny.pair(max_model_len=30, max_batch_size=4, threads=1)
    for K in (0, 8):
        outs = qm.generate(["hi"], n=2, max_new_tokens=40, ignore_eos=True, speculative=K)
        assert [len(o.token_ids) for o in outs] == [30 - outs[0].num_prompt_tokens_theta] * 2
    with pytest.raises(ValueError, match="per-row fallback"):
        tiny.pair(force_row_model=True, threads=1).generate([PROMPT], max_new_tokens=3, speculative=2)
