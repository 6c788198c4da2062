"""Bad calls raise ValueError naming the argument and the value."""
import pytest
import torch

from qstar_kernels import mix, sample

X = torch.randn(2, 10)


@pytest.mark.parametrize("call,needle", [
    (lambda: mix(X, torch.randn(2, 11)), "same shape"),
    (lambda: mix(X, torch.randn(3, 10)), "same shape"),
    (lambda: mix(X[0], X[0]), "shape (B, V)"),
    (lambda: mix(X, X, "bisection"), "method must be one of"),
    (lambda: mix(X, X, "fixed", alpha=1.5), "alpha must lie in [0.0, 1.0], got 1.5"),
    (lambda: mix(X, X, "fixed", alpha=torch.tensor([0.2, -0.1])), "got -0.1"),
    (lambda: mix(X, X, alpha_min=0.7, alpha_max=0.3), "alpha_min=0.7"),
    (lambda: mix(X, X, vocab_size=11), "vocab_size must be an int in [1, 10]"),
    (lambda: mix(torch.full((2, 10), float("nan")), X), "logits_theta contains NaN"),
    (lambda: mix(X, torch.where(torch.arange(10) == 3, float("nan"), X)), "logits_t contains NaN"),
    (lambda: mix(X, torch.full((2, 10), float("-inf"))), "-inf everywhere"),
    (lambda: mix(X, X.int()), "floating"),
    (lambda: mix(X, X, backend="cuda"), "backend must be one of"),
    (lambda: sample(X.log_softmax(-1)), "keys and positions are required"),
    (lambda: sample(X, keys=[0, 1], positions=[0, 0], temperature=-1.0), "temperature must lie"),
    (lambda: sample(X, keys=[0, 1], positions=[0, 0], top_p=1.5), "top_p must lie"),
    (lambda: sample(X, keys=[0, 1], positions=[0, 0], top_p=0.0), "top_p must be > 0"),
    (lambda: sample(X, keys=[0, 1], positions=[0, 0], top_k=-2), "top_k must be >= 0"),
    (lambda: sample(X, keys=[0, 1, 2], positions=[0, 0]), "keys must be a scalar or a (2,)"),
    (lambda: sample(X, keys=[0, 1], positions=[-1, 0]), "positions must lie"),
])
def test_bad_calls_raise_value_error(call, needle):
    with pytest.raises(ValueError) as e:
        call()
    assert needle in str(e.value), str(e.value)
