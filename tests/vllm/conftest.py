"""vLLM backend tests: collected only where vLLM imports (the venv `make test-vllm` builds).

Under plain `make test` (no vLLM) this directory is skipped at once: nothing here imports
vLLM or torch unless vLLM is installed. Where it is, caches and sockets go to a temp dir, the
Triton CPU interpreter switch set by tests/conftest.py is undone (vLLM must not see it), and
one engine per model pair is shared by the whole session (each start costs ~10 s on CPU).
"""
import atexit
import importlib.util
import os
import shutil
import tempfile

# tests/ is on sys.path, so this very directory looks like a namespace package "vllm":
# only a real package (with an origin file) counts
_spec = importlib.util.find_spec("vllm")
HAVE_VLLM = _spec is not None and _spec.origin is not None
if HAVE_VLLM:
    try:
        import vllm  # noqa: F401
    except Exception:  # a broken install (e.g. CUDA-linked torchvision) skips too
        HAVE_VLLM = False

collect_ignore_glob = [] if HAVE_VLLM else ["test_*.py"]

if HAVE_VLLM:
    import pytest

    _tmp = tempfile.mkdtemp(prefix="qstar-vllm-tests-")
    atexit.register(shutil.rmtree, _tmp, True)
    os.environ.update(VLLM_CACHE_ROOT=os.path.join(_tmp, "cache"), VLLM_RPC_BASE_PATH=_tmp,
                      VLLM_CPU_KVCACHE_SPACE="1", VLLM_LOGGING_LEVEL="WARNING")
    if os.environ.get("TRITON_INTERPRET") == "1" and not os.environ.get("QSTAR_VLLM_KEEP_TRITON_INTERPRET"):
        del os.environ["TRITON_INTERPRET"]

    @pytest.fixture(scope="session")
    def pair_a(tmp_path_factory):
        """theta: llama, 2 layers, 2 heads of 32 (1 KV head); t: qwen2, 3 layers, 4 heads of 64 (2 KV).

        t's generation config adds 24 EOS ids, so samples end with "stop" within ~10 tokens.
        """
        import vllm_tiny

        return vllm_tiny.save_pair(tmp_path_factory.mktemp("pair_a"))

    @pytest.fixture(scope="session")
    def engine_a(pair_a):
        from engine import create_optimal_sampling_model

        return create_optimal_sampling_model(pair_a[0], pair_a[1], "kl_symmetry", backend="vllm",
                                             max_batch_size=64, cuda_graphs=False)

    @pytest.fixture(scope="session")
    def hf_a(pair_a):
        from engine import create_optimal_sampling_model

        return create_optimal_sampling_model(pair_a[0], pair_a[1], "kl_symmetry", device="cpu")

    @pytest.fixture(scope="session")
    def ref_a(pair_a):
        import vllm_tiny

        return vllm_tiny.Reference(*pair_a)
