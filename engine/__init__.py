"""engine: the two-model decode engine and its Python API (built on qstar_kernels).

    from engine import create_optimal_sampling_model
"""
import importlib

# imported on first use: `qstar --help` and argument errors never load torch
_LAZY = {"create_optimal_sampling_model": "api", "OptimalSamplingModel": "api", "EngineConfig": "config",
         "MixtureConfig": "config", "SamplingParams": "config", "SampleOutput": "outputs"}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["create_optimal_sampling_model", "OptimalSamplingModel", "EngineConfig", "MixtureConfig",
           "SamplingParams", "SampleOutput"]
