"""engine: the two-model decode engine and its Python API (built on qstar_kernels).

    from engine import create_optimal_sampling_model
"""
from qstar_kernels.lazy import lazy_getattr

# imported on first use: `qstar --help` and argument errors never load torch
_LAZY = {"create_optimal_sampling_model": "api", "OptimalSamplingModel": "api", "EngineConfig": "config",
         "MixtureConfig": "config", "SamplingParams": "config", "SampleOutput": "outputs"}

__getattr__ = lazy_getattr(__name__, _LAZY)
__all__ = ["create_optimal_sampling_model", "OptimalSamplingModel", "EngineConfig", "MixtureConfig",
           "SamplingParams", "SampleOutput"]
