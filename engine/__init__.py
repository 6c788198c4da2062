"""engine: the two-model decode engine, pipeline and CLI (built on qstar_kernels)."""
