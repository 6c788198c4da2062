"""verl rollout-backend tests: collected only where verl imports (the venv `make test-verl` builds).

Under plain `make test` (no verl) this directory is skipped at once: nothing here imports verl or
torch unless verl is installed. Fixtures: one tiny random pair saved to disk (verl loads models
by path) and an in-process QStarServer over it (no Ray) shared by the session.
"""
import importlib.util

# tests/ is on sys.path, so this very directory looks like a namespace package "verl":
# only a real package (with an origin file) counts
_spec = importlib.util.find_spec("verl")
HAVE_VERL = _spec is not None and _spec.origin is not None
if HAVE_VERL:
    try:
        import verl  # noqa: F401
        import engine.integrations.verl  # noqa: F401
    except Exception:  # a broken install skips too
        HAVE_VERL = False

collect_ignore_glob = [] if HAVE_VERL else ["test_*.py"]

if HAVE_VERL:
    import pytest

    import verl_tiny

    @pytest.fixture(scope="session")
    def pair_dirs(tmp_path_factory):
        return verl_tiny.save_pair(tmp_path_factory.mktemp("verl-pair"))

    @pytest.fixture(scope="session")
    def sampler(pair_dirs):
        from engine import create_optimal_sampling_model

        return create_optimal_sampling_model(model_theta=pair_dirs[0], model_t=pair_dirs[1], device="cpu",
                                             alpha_method="kl_symmetry", alpha_max=0.9)
