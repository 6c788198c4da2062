"""engine: the two-model decode engine and its Python API (built on qstar_kernels).

    from engine import create_optimal_sampling_model
"""
from .api import OptimalSamplingModel, create_optimal_sampling_model
from .config import EngineConfig, MixtureConfig, SamplingParams
from .outputs import SampleOutput

__all__ = ["create_optimal_sampling_model", "OptimalSamplingModel", "EngineConfig", "MixtureConfig",
           "SamplingParams", "SampleOutput"]
