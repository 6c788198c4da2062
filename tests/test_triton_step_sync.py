"""`step(validate=False)` on the Triton path never waits on the device and copies nothing from the
host per call.

The host side runs on `meta` tensors (shapes and dtypes, no data: any read-back — `.item()`,
`bool(t)`, `.tolist()`, `.cpu()` — raises) with the kernel launches recorded instead of run, and
every read-back or host->device tensor creation is counted as well. Engine-style calls: device
tensors for every per-row value, and Python scalars.
"""
import pytest
import torch

from qstar_kernels import step

pytest.importorskip("triton")
from qstar_kernels import triton_step  # noqa: E402

SYNCING = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


@pytest.fixture
def recorded(monkeypatch):
    """(launches, syncs): kernel launches replaced by a record; read-backs and host->device
    creations counted (they would also raise on meta)."""
    launches, syncs = [], []
    monkeypatch.setattr(triton_step, "launch", lambda k, grid, *a, **m: launches.append((k.fn.__name__, grid)))
    for name in SYNCING:
        orig = getattr(torch.Tensor, name)

        def counted(self, *a, _orig=orig, _name=name, **k):
            syncs.append(_name)
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    orig_to = torch.Tensor.to

    def to(self, *a, **k):
        target = [x for x in list(a) + list(k.values()) if isinstance(x, (str, torch.device))]
        if any(torch.device(x).type == "cpu" for x in target) and self.device.type != "cpu":
            syncs.append("to(cpu)")
        return orig_to(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "to", to)
    for name in ("tensor", "as_tensor", "from_numpy"):
        orig = getattr(torch, name)

        def created(data, *a, _orig=orig, _name=name, **k):
            if not isinstance(data, torch.Tensor):  # a copy of host data onto the device
                syncs.append(f"torch.{_name}")
            return _orig(data, *a, **k)

        monkeypatch.setattr(torch, name, created)
    return launches, syncs


def _meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="meta")


@pytest.mark.parametrize("method", ["kl_symmetry", "fixed", "ess_balance"])
def test_step_with_device_tensors_never_syncs(recorded, method):
    launches, syncs = recorded
    B, V = 8, 152064
    kw = dict(alpha=_meta(B), temperature=_meta(B), top_k=_meta(B, dtype=torch.int64), top_p=_meta(B),
              min_p=_meta(B), seed=_meta(B, dtype=torch.int64), keys=_meta(B, dtype=torch.int64),
              positions=_meta(B, dtype=torch.int64), force=_meta(B, dtype=torch.bool))
    out = step(_meta(B, V, dtype=torch.bfloat16), _meta(B, V, dtype=torch.bfloat16), method, vocab_size=V - 100,
               alpha_min=0.1, alpha_max=0.9, backend="triton", validate=False, **kw)
    assert syncs == [], syncs
    names = [n for n, _ in launches]
    assert "_race_reduce" in names and "_trunc_count" in names  # the whole step was launched
    assert out.tokens.shape == (B,) and out.passes.shape == (B,)
    assert names.count("_newton_part") == (triton_step.NEWTON_LAUNCHES if method != "fixed" else 0)


def test_step_with_python_scalars_never_syncs(recorded):
    """Engine calls pass temperature / top-k / top-p / seed / alpha as Python numbers: they become
    device-side fills (no copy), and alpha is range-checked on the host."""
    launches, syncs = recorded
    B, V = 4, 32000
    out = step(_meta(B, V), _meta(B, V), "kl_symmetry", alpha=0.4, temperature=0.7, top_k=50, top_p=0.9,
               seed=3, keys=_meta(B, dtype=torch.int64), positions=_meta(B, dtype=torch.int64),
               backend="triton", validate=False)
    assert syncs == [] and out.tokens.shape == (B,), syncs
    with pytest.raises(ValueError, match="alpha must lie in"):
        step(_meta(B, V), _meta(B, V), "fixed", alpha=1.5, keys=_meta(B, dtype=torch.int64),
             positions=_meta(B, dtype=torch.int64), backend="triton", validate=False)


def test_the_counter_sees_a_sync(recorded):
    """The harness is not blind: a read-back in the step's host code is caught."""
    _launches, syncs = recorded
    with pytest.raises(Exception):
        bool(_meta(3).any())
    assert "__bool__" in syncs
