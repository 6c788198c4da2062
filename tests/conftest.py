"""Shared fixtures: Triton kernels run under the CPU interpreter when there is no GPU."""
import os
import warnings

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs 2 workers on 2 cores: one thread each
    torch.set_num_threads(int(os.environ.get("QSTAR_TEST_THREADS", "1")))

import pytest  # noqa: E402

warnings.filterwarnings("ignore", message=".*invalid value encountered.*")
warnings.filterwarnings("ignore", message=".*divide by zero.*")
warnings.filterwarnings("ignore", message=".*overflow encountered.*")

NEG_INF = float("-inf")


def lm_logits(B, V, *, scale=4.0, seed=0, dtype=torch.float64, corr=0.7):
    """A pair of LM-like logits (|logit| <= 20), correlated like a policy and a teacher."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(B, V, generator=g, dtype=torch.float64) * scale
    lp = base + torch.randn(B, V, generator=g, dtype=torch.float64) * scale * (1 - corr)
    lt = base + torch.randn(B, V, generator=g, dtype=torch.float64) * scale * (1 - corr)
    return lp.clamp(-20, 20).to(dtype), lt.clamp(-20, 20).to(dtype)


def edge_cases(V=64, dtype=torch.float64):
    """Named (logits_theta, logits_t) rows that stress the solvers, each (1, V)."""
    g = torch.Generator().manual_seed(1)
    r = lambda s=3.0: torch.randn(1, V, generator=g, dtype=torch.float64) * s  # noqa: E731
    cases = {}
    x = r()
    cases["identical"] = (x, x.clone())
    cases["shifted_identical"] = (x, x + 5.0)
    one_a, one_b = torch.zeros(1, V, dtype=torch.float64), torch.zeros(1, V, dtype=torch.float64)
    one_a[0, 3], one_b[0, 7] = 30.0, 30.0
    cases["near_one_hot_disjoint"] = (one_a, one_b)
    one_c = one_a.clone()
    one_c[0, 7] = 29.0
    cases["near_one_hot_overlap"] = (one_c, one_b)
    cases["huge_1e4"] = (r(1e4), r(1e4))
    m1, m2 = r(), r()
    m1[0, :5] = NEG_INF
    m2[0, 5:9] = NEG_INF
    cases["masked_one_side"] = (m1, m2)
    m3, m4 = r(), r()
    m3[0, -10:] = NEG_INF
    m4[0, -10:] = NEG_INF
    cases["masked_both"] = (m3, m4)
    cases["flat_vs_peaked"] = (torch.zeros(1, V, dtype=torch.float64), r(8.0))
    return {k: (a.to(dtype), b.to(dtype)) for k, (a, b) in cases.items()}


@pytest.fixture
def lm_pair():
    return lm_logits


@pytest.fixture(scope="session")
def pair_dirs(tmp_path_factory):
    """A tiny (model_theta, model_t) pair saved as HF model dirs, for CLI tests."""
    import tiny

    root = tmp_path_factory.mktemp("models")
    tok = tiny.tokenizer()
    out = []
    for name, seed in (("theta", 1), ("t", 2)):
        tiny.model(seed=seed).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out.append(str(root / name))
    return out
