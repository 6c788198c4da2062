"""pytest-benchmark micro-benchmarks of the CPU reference: `make bench`.

Every method plus the seed's naive 20-step bisection, B in {1, 8, 64}, V in {32000, 151936}.
`python -m bench.kernels` prints the same comparison as ratios in one table.
"""
import pytest
import torch

from bench.kernels import lm_like
from bench.naive import naive_kl_bisection
from qstar_kernels import mix

torch.set_num_threads(1)


@pytest.mark.parametrize("V", [32000, 151936])
@pytest.mark.parametrize("B", [1, 8, 64])
@pytest.mark.parametrize("method", ["fixed", "entropy", "kl_symmetry", "ess_balance", "naive_bisection"])
def test_mix_cpu(benchmark, method, B, V):
    lp, lt = lm_like(B, V)
    benchmark.group = f"B={B} V={V}"
    if method == "naive_bisection":
        benchmark(naive_kl_bisection, lp, lt)
    else:
        benchmark(mix, lp, lt, method, backend="torch", validate=False)
