"""The CPU decode step — pi_theta forward, pi_t forward, the fused C step as the custom op
qstar::step_cpu — compiles with torch.compile(fullgraph=True): a graph break would mean a host
sync or a Python branch on tensor values inside the step. The compiled engine makes the same
tokens and records as the eager one."""
import pytest
import torch

import tiny
from engine import create_optimal_sampling_model
from qstar_kernels import cpu_step

pytestmark = pytest.mark.skipif(not cpu_step.available(), reason="no C compiler for the fused CPU step")

PROMPTS = ["what is two plus two?", "hello world", "solve the problem step by step."]


def engine(**kw):
    return create_optimal_sampling_model(tiny.model(seed=1), tiny.model(seed=2), tokenizer=tiny.tokenizer(),
                                         device="cpu", alpha_method="kl_symmetry", max_batch_size=3, **kw)


def test_the_fused_c_step_is_a_custom_op():
    B, V = 3, 50
    g = torch.Generator().manual_seed(0)
    xp, xt = torch.randn(B, V, generator=g), torch.randn(B, V, generator=g)
    f32 = lambda v: torch.full((B,), v, dtype=torch.float32)  # noqa: E731
    i64 = lambda v: torch.full((B,), v, dtype=torch.int64)  # noqa: E731
    args = (xp, xt, "kl_symmetry", f32(0.5), 0.0, 1.0, V, f32(1.0), i64(0), f32(1.0), f32(0.0), i64(1),
            torch.arange(B), i64(0), None)
    tokens, out, iters, clamped = torch.ops.qstar.step_cpu(*args)
    assert tokens.shape == (B,) and out.shape == (cpu_step.NOUT, B) and iters.dtype == torch.int32
    torch.library.opcheck(torch.ops.qstar.step_cpu.default, args, test_utils=("test_schema", "test_faketensor"))


def test_decode_step_compiles_fullgraph_and_matches_eager():
    torch._dynamo.reset()
    eager = engine().generate(PROMPTS, max_new_tokens=6, seed=2, ignore_eos=True)
    qm = engine(compile=True)
    compiled = qm.generate(PROMPTS, max_new_tokens=6, seed=2, ignore_eos=True)
    st = qm.engine.stepper
    assert st._decode is not st.decode_step  # the compiled function ran (fullgraph: no break allowed)
    for a, b in zip(eager, compiled):
        assert a.token_ids == b.token_ids
        for name in ("alpha", "logq", "logp_theta", "logp_behavior"):
            assert getattr(a, name) == pytest.approx(getattr(b, name), abs=1e-5), name
    # the same function under fullgraph on its own: no host sync, no data-dependent branch
    rows = torch.arange(3)
    with torch.inference_mode():
        fn = torch.compile(st.decode_step, fullgraph=True, backend="eager")
        tokens, vals = fn(rows, 64, 64)
    assert tokens.shape == (3,) and vals.shape[0] == 3
