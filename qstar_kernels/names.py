"""The names qstar_kernels' options take, importable without torch (CLI help and argument
checks read them before anything heavy loads)."""

METHODS = ("fixed", "entropy", "kl_symmetry", "ess_balance", "reverse_kl_symmetry")
BACKENDS = ("auto", "torch", "triton", "cpu")
