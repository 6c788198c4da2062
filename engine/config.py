"""Validated configuration dataclasses of the engine (the CLI maps flags onto these).

Not for: defaults of the pipeline (datasets, records) — those live with the pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qstar_kernels.names import BACKENDS, METHODS

if TYPE_CHECKING:
    import torch


FORCE_TEACHER = ("first", "special")
DRAFT_SIDES = ("auto", "theta", "t")  # speculative decoding: which model drafts
MAX_SPECULATIVE = 32  # draft tokens per round at most (each round's verification is (K+1) x V)


def parse_support(spec) -> tuple[int, float]:
    """"t_top_k:K,t_top_p:P" (either part may be left out; "" / None = off) -> (K, P)."""
    k, p = 0, 1.0
    if spec is None or spec == "":
        return k, p
    how = "support must look like 't_top_k:50', 't_top_p:0.95' or 't_top_k:50,t_top_p:0.95'"
    if not isinstance(spec, str):
        raise ValueError(f"{how}, got {spec!r}")
    seen = set()
    for part in spec.split(","):
        name, sep, value = part.strip().partition(":")
        if name in seen:
            raise ValueError(f"{how}: {name} given twice in {spec!r}")
        seen.add(name)
        try:
            if not sep or name not in ("t_top_k", "t_top_p"):
                raise ValueError
            if name == "t_top_k":
                k = int(value)
                if k < 0:
                    raise ValueError
            else:
                p = float(value)
                if not 0.0 < p <= 1.0:
                    raise ValueError
        except ValueError:
            raise ValueError(f"{how} (t_top_k an int >= 0, t_top_p in (0, 1]), got {spec!r}") from None
    return k, p


def support_spec(top_k: int, top_p: float) -> str:
    """The inverse of parse_support (what the CLI's --support-top-k/-p become)."""
    parts = ([f"t_top_k:{int(top_k)}"] if top_k else []) + ([f"t_top_p:{float(top_p)}"] if top_p < 1 else [])
    return ",".join(parts)


def parse_force_teacher(spec) -> tuple[str, ...]:
    """"first", "special", "first,special" (or a list of them); "" / None = off."""
    if spec is None or spec == "":
        return ()
    if not isinstance(spec, (str, list, tuple)):
        raise ValueError(f"force_teacher takes a comma-separated subset of {FORCE_TEACHER} (a string), "
                         f"got {spec!r}")
    parts = spec.split(",") if isinstance(spec, str) else list(spec)
    parts = [str(x).strip() for x in parts if str(x).strip()]
    bad = [x for x in parts if x not in FORCE_TEACHER]
    if bad:
        raise ValueError(f"force_teacher takes a comma-separated subset of {FORCE_TEACHER}, got {spec!r} "
                         f"(unknown: {bad})")
    return tuple(x for x in FORCE_TEACHER if x in parts)


@dataclass
class MixtureConfig:
    alpha_method: str = "kl_symmetry"  # fixed | entropy | kl_symmetry | ess_balance | reverse_kl_symmetry
    alpha: float = 0.5                 # weight on pi_theta for alpha_method="fixed"
    alpha_min: float = 0.0             # clamp applied after solving
    alpha_max: float = 1.0
    support: str = ""                  # "t_top_k:K,t_top_p:P": restrict both models to pi_t's set
    force_teacher: str = ""            # "first", "special" or "first,special": a = 0 there

    def __post_init__(self):
        if self.alpha_method not in METHODS:
            raise ValueError(f"alpha_method must be one of {METHODS}, got {self.alpha_method!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1] (the weight on pi_theta), got {self.alpha!r}")
        if not 0.0 <= self.alpha_min <= self.alpha_max <= 1.0:
            raise ValueError(f"need 0 <= alpha_min <= alpha_max <= 1, got {self.alpha_min!r}, {self.alpha_max!r}")
        self.support_top_k, self.support_top_p = parse_support(self.support)
        self.support = support_spec(self.support_top_k, self.support_top_p)
        self.force_teacher = ",".join(parse_force_teacher(self.force_teacher))

    @property
    def force_first(self) -> bool:
        return "first" in self.force_teacher.split(",")

    @property
    def force_special(self) -> bool:
        return "special" in self.force_teacher.split(",")


@dataclass
class SamplingParams:
    max_new_tokens: int = 100    # response tokens at most (finish_reason "length")
    temperature: float = 1.0     # 0 = greedy
    top_k: int = 0               # 0 = off
    top_p: float = 1.0           # 1 = off
    min_p: float = 0.0           # 0 = off
    seed: int = 0                # with the sample key and position, fixes every draw
    n: int = 1                   # samples per prompt (sharing one prefill)
    ignore_eos: bool = False     # True: only max_new_tokens / stop strings end a sample
    stop: list[str] = field(default_factory=list)  # stop strings (the text is cut before them)
    speculative: int = 0         # K >= 1: the draft model proposes K tokens per round (0 = off)
    draft: str = "auto"          # which model drafts: theta | t | auto (fewer parameters, ties theta)

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        checks = [
            (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, "max_new_tokens must be an int >= 1",
             self.max_new_tokens),
            (self.temperature >= 0, "temperature must be >= 0 (0 = greedy)", self.temperature),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be an int >= 0 (0 = off)", self.top_k),
            (0 < self.top_p <= 1, "top_p must lie in (0, 1] (1 = off)", self.top_p),
            (0 <= self.min_p <= 1, "min_p must lie in [0, 1] (0 = off)", self.min_p),
            (isinstance(self.n, int) and self.n >= 1, "n must be an int >= 1", self.n),
            (all(isinstance(s, str) and s for s in self.stop), "stop must be non-empty strings", self.stop),
            (isinstance(self.speculative, int) and not isinstance(self.speculative, bool)
             and 0 <= self.speculative <= MAX_SPECULATIVE,
             f"speculative must be an int in [0, {MAX_SPECULATIVE}] (draft tokens per round; 0 = off)",
             self.speculative),
            (self.draft in DRAFT_SIDES, f"draft must be one of {DRAFT_SIDES}", self.draft),
        ]
        for ok, msg, value in checks:
            if not ok:
                raise ValueError(f"{msg}, got {value!r}")


@dataclass
class EngineConfig:
    max_batch_size: int = 8          # decode rows at once (continuous batching refills them)
    device: str | None = None        # default: cuda if available else cpu
    dtype: str | None = None         # default: bfloat16 on cuda, float32 on cpu
    threads: int | None = None       # torch.set_num_threads on CPU (None: leave as is)
    kernels_backend: str = "auto"    # qstar_kernels backend: auto | torch | triton | cpu
    cuda_graphs: bool | str = True   # capture decode steps on CUDA (ignored on CPU); "strict": a
                                     # capture failure raises instead of warning and running eagerly
    force_row_model: bool = False    # run both models on the generic per-row HF path
    max_model_len: int | None = None  # positions per slot (prompt + response) each KV cache holds,
                                      # fixed for the engine's life; None: each model's context,
                                      # capped so that both caches fit in kv_cache_gib
    kv_cache_gib: float | None = None  # memory for both KV caches; None: 2 on CPU, half the free
                                       # GPU memory on CUDA
    compile: bool = False            # CPU: torch.compile(fullgraph=True) the decode step

    def _check_engine_knobs(self) -> None:
        if self.cuda_graphs not in (True, False, "strict"):
            raise ValueError(f"cuda_graphs must be True, False or 'strict', got {self.cuda_graphs!r}")
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int) or self.max_model_len < 2):
            raise ValueError(f"max_model_len must be an int >= 2 (prompt + response positions), "
                             f"got {self.max_model_len!r}")
        if self.kv_cache_gib is not None and not (isinstance(self.kv_cache_gib, (int, float)) and self.kv_cache_gib > 0):
            raise ValueError(f"kv_cache_gib must be a number > 0 (GiB for both KV caches), got {self.kv_cache_gib!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}")

    def __post_init__(self):
        if not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be an int >= 1, got {self.max_batch_size!r}")
        if self.kernels_backend not in BACKENDS:
            raise ValueError(f"kernels_backend must be one of {BACKENDS}, got {self.kernels_backend!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be an int >= 1, got {self.threads!r}")
        self._check_engine_knobs()
        import torch

        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} but no CUDA device is visible; use device='cpu'")
        if self.dtype is None:
            self.dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        import torch

        return getattr(torch, self.dtype)
