"""Every `qstar generate` option, once: the CLI flags, the --config file keys and the run
manifest all come from GenerateConfig's fields (and their `help` metadata).

Not for: engine internals (engine.config holds those; to_engine() maps onto them).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from qstar_kernels import METHODS

from ..config import DRAFT_SIDES, MAX_SPECULATIVE
from .data import unescape

LONG_PROMPT = ("skip", "truncate-left", "error")
FORMATS = ("jsonl", "parquet")


def opt(default, help: str, group: str = "run", hashed: bool = True, choices=None, flag_type=None):
    """A field with CLI/config metadata. hashed: part of the config hash (changes what is sampled)."""
    meta = dict(help=help, group=group, hashed=hashed, choices=choices, flag_type=flag_type)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def mixture_config(alpha_method, alpha, alpha_min, alpha_max, support_top_k, support_top_p, force_teacher):
    """The engine's MixtureConfig of the mixture flags (`qstar generate` and `qstar check`)."""
    from ..config import MixtureConfig, support_spec

    if isinstance(support_top_k, bool) or not isinstance(support_top_k, int) or support_top_k < 0:
        raise ValueError(f"--support-top-k must be an int >= 0 (0 = off), got {support_top_k!r}")
    if not isinstance(support_top_p, (int, float)) or not 0 < support_top_p <= 1:
        raise ValueError(f"--support-top-p must lie in (0, 1] (1 = off), got {support_top_p!r}")
    return MixtureConfig(alpha_method=alpha_method, alpha=alpha, alpha_min=alpha_min, alpha_max=alpha_max,
                         support=support_spec(support_top_k, support_top_p), force_teacher=force_teacher or "")


def _check_int(name: str, value, low: int | None, hint: str = "") -> None:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{flag} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{flag} must be >= {low}{hint}, got {value}")


def _check_float(name: str, value, ok, rule: str) -> None:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{flag} must be a finite number, got {value!r}")
    if not ok(value):
        raise ValueError(f"{flag} {rule}, got {value}")


def check_sampling(*, temperature, top_k, top_p, min_p, seed, max_new_tokens=1, n=1, stop=(), speculative=0) -> None:
    """Every sampling flag, named, before anything loads (`qstar generate` and `qstar check`;
    SamplingParams checks again for API users)."""
    _check_int("speculative", speculative, 0, " (draft tokens per round; 0 = off)")
    if speculative > MAX_SPECULATIVE:
        raise ValueError(f"--speculative must be <= {MAX_SPECULATIVE} (draft tokens per round), got {speculative}")
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("n", n, 1)
    _check_int("top_k", top_k, 0, " (0 = off)")
    _check_int("seed", seed, None)
    _check_float("temperature", temperature, lambda x: x >= 0, "must be >= 0 (0 = greedy)")
    _check_float("top_p", top_p, lambda x: 0 < x <= 1, "must lie in (0, 1] (1 = off)")
    _check_float("min_p", min_p, lambda x: 0 <= x <= 1, "must lie in [0, 1] (0 = off)")
    for s in stop:
        if not isinstance(s, str) or not s:
            raise ValueError(f"--stop must be a non-empty string, got {s!r}")


def check_modes(*, backend: str, speculative: int, cross_tokenizer: bool) -> None:
    """The modes that exclude each other, before anything loads (`qstar generate` and `qstar check`)."""
    if speculative and backend == "vllm":
        raise ValueError(f"--speculative {speculative} needs --backend hf (the vllm backend has no "
                         "speculative mode); or drop --speculative")
    if cross_tokenizer and backend != "hf":
        raise ValueError(f"--cross-tokenizer needs --backend hf (the {backend} backend runs both models on "
                         "one token sequence, so it cannot re-tokenize for the teacher)")
    if cross_tokenizer and speculative:
        raise ValueError(f"--speculative {speculative} with --cross-tokenizer: speculative rounds need both "
                         "models on one tokenizer; drop one of the two")


@dataclass
class GenerateConfig:
    # models
    model_theta: str = opt(None, "policy pi_theta: HF model dir, hub name or .gguf file", "models")
    model_t: str = opt(None, "teacher/target pi_t (must share pi_theta's tokenizer unless --cross-tokenizer)",
                       "models")
    cross_tokenizer: bool = opt(False, "allow a teacher with another tokenizer: sample in pi_theta's vocabulary, "
                                "pi_t reads its own tokenization of the response and is carried onto pi_theta's "
                                "vocabulary (logp_theta / logp_behavior stay exact; docs/guide.md#cross-tokenizer)",
                                "models")
    # data
    dataset: str = opt(None, "HF hub dataset, local dataset dir, or a .jsonl/.json/.parquet/.csv file", "data")
    split: str = opt("train", "dataset split", "data")
    subset: str | None = opt(None, "dataset configuration (subset) name", "data")
    num_samples: int | None = opt(None, "use the first N rows of the dataset (default: all)", "data", hashed=False)
    prompt_field: str | None = opt(None, "column holding the prompt (default: auto-detect messages, prompt, "
                                   "question, problem, instruction(+input), query)", "data")
    id_field: str | None = opt(None, "column holding each row's id (default: id/sample_id/uid if present, "
                               "else the row index)", "data")
    theta_template: str | None = opt(None, "pi_theta's prompt as a format string over row fields, e.g. '{problem}'; "
                                     "\\n / \\t in it are a newline / a tab", "data")
    t_template: str | None = opt(None, "pi_t's prompt as a format string, e.g. "
                                 "'{problem}\\n\\nReference solution: {solution}' (default: pi_theta's)", "data")
    system_prompt: str | None = opt(None, "system prompt for both sides", "data")
    no_chat_template: bool = opt(False, "do not apply the tokenizer's chat template (both sides)", "data")
    no_chat_template_theta: bool = opt(False, "no chat template for pi_theta's prompt only", "data")
    no_chat_template_t: bool = opt(False, "no chat template for pi_t's prompt only", "data")
    adapter: str | None = opt(None, "custom row adapter 'module:function'; function(row) returns a prompt "
                              "(string or messages) or {'prompt_theta': ..., 'prompt_t': ...}", "data")
    on_long_prompt: str = opt("skip", "a prompt longer than a model's context: skip the row, truncate-left "
                              "(keep its end), or error (stop the run)", "data", choices=LONG_PROMPT)
    # mixture
    alpha_method: str = opt("kl_symmetry", "how alpha (the weight on pi_theta) is chosen per token", "mixture",
                            choices=METHODS)
    alpha: float = opt(0.5, "alpha for --alpha-method fixed (1 = pi_theta only, 0 = pi_t only)", "mixture")
    alpha_min: float = opt(0.0, "clamp alpha from below after solving", "mixture")
    alpha_max: float = opt(1.0, "clamp alpha from above after solving", "mixture")
    support_top_k: int = opt(0, "restrict both models to pi_t's K most likely tokens before alpha is solved "
                             "(renormalised; q, logq and the statistics are then the restricted ones, "
                             "logp_theta/logp_t stay the models' own) (0 = off)", "mixture")
    support_top_p: float = opt(1.0, "restrict both models to pi_t's nucleus: its most likely tokens (within "
                               "--support-top-k) until their mass reaches P (1 = off)", "mixture")
    force_teacher: str | None = opt(None, "sample these tokens from pi_t alone (alpha = 0, recorded as forced): "
                                    "first (the first response token), special (where pi_t's argmax is a "
                                    "special token of the tokenizer) or first,special", "mixture")
    # sampling
    n: int = opt(1, "samples per prompt (they share one prefill)", "sampling")
    max_new_tokens: int = opt(512, "response tokens at most", "sampling")
    temperature: float = opt(1.0, "temperature on q (0 = greedy)", "sampling")
    top_k: int = opt(0, "top-k on q after alpha is solved (0 = off)", "sampling")
    top_p: float = opt(1.0, "top-p (nucleus) on q after alpha is solved (1 = off)", "sampling")
    min_p: float = opt(0.0, "min-p on q (0 = off)", "sampling")
    stop: list[str] = opt([], "stop string (repeatable); the response text is cut before it", "sampling",
                          flag_type="append")
    ignore_eos: bool = opt(False, "do not stop at EOS (only max tokens / stop strings end a sample)", "sampling")
    seed: int = opt(0, "sampling seed: with (sample_id, n) it fixes every draw, across resumes", "sampling")
    speculative: int = opt(0, "K >= 1: the draft model proposes K tokens per round and both models score them in one "
                           "forward; emitted tokens keep exactly the behaviour distribution, records their meaning "
                           "(0 = off; --backend hf)", "sampling")
    draft: str = opt("auto", "which model drafts under --speculative: theta, t, or auto (fewer parameters, ties "
                     "theta)", "sampling", choices=DRAFT_SIDES)
    # output
    output: str = opt(None, "output JSONL path (the checkpoint); diagnostics go to <stem>.diagnostics.jsonl",
                      "output")
    format: str = opt("jsonl", "also write <stem>.parquet at the end with --format parquet", "output",
                      hashed=False, choices=FORMATS)
    save_token_stats: bool = opt(False, "store per-token arrays (token_ids, alpha, logp_*, kl_*, ess_*) in "
                                 "records and diagnostics", "output")
    save_diagnostics: bool = opt(True, "write <stem>.diagnostics.jsonl (per-sample means, sequence log-weights)",
                                 "output", hashed=False)
    overwrite: bool = opt(False, "delete an existing output and start over (default: resume it)", "output",
                          hashed=False)
    # execution (never part of the config hash)
    batch_size: int = opt(8, "rows decoded at once (continuous batching)", "execution", hashed=False)
    device: str | None = opt(None, "cpu or cuda (default: cuda if available)", "execution", hashed=False)
    dtype: str | None = opt(None, "float32, bfloat16 or float16 (default: bfloat16 on cuda, float32 on cpu)",
                            "execution", hashed=False)
    threads: int | None = opt(None, "torch CPU threads (1 can beat 2 under load)", "execution", hashed=False)
    backend: str = opt("hf", "model backend: hf, or vllm (both models in one vLLM engine; docs/vllm.md)",
                       "execution", hashed=False, choices=("hf", "vllm"))
    quiet: bool = opt(False, "no progress line", "execution", hashed=False)
    ray: str | None = opt(None, "run the engine as Ray replicas: a cluster ADDRESS (host:port or ray://...), "
                          "auto (the running cluster) or local (start Ray here); this process still writes "
                          "the output (needs pip install 'qstar[ray]')", "execution", hashed=False)
    num_workers: int = opt(1, "with --ray: engine replicas, each holding both models", "execution", hashed=False)
    gpus_per_worker: float | None = opt(None, "with --ray: GPUs per replica, may be fractional (default: 1 when "
                                        "the cluster has GPUs and --device is not cpu, else 0)", "execution",
                                        hashed=False)
    chunk_size: int | None = opt(None, "with --ray: requests sent to a replica at once; at most 2 chunks per "
                                 "replica are in flight (default: 4 x --batch-size)", "execution", hashed=False)

    def __post_init__(self):
        for name in ("model_theta", "model_t", "dataset", "output"):
            if not getattr(self, name):
                raise ValueError(f"--{name.replace('_', '-')} is required")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        for f in fields(self):
            ch = f.metadata.get("choices")
            if ch and getattr(self, f.name) not in ch:
                raise ValueError(f"--{f.name.replace('_', '-')} must be one of {', '.join(ch)}, "
                                 f"got {getattr(self, f.name)!r}")
        if self.num_samples is not None:
            _check_int("num_samples", self.num_samples, 1)
        self._check_sampling()
        check_modes(backend=self.backend, speculative=self.speculative, cross_tokenizer=self.cross_tokenizer)
        _check_int("batch_size", self.batch_size, 1)
        if self.threads is not None:
            _check_int("threads", self.threads, 1)
        self.mixture()  # the mixture options' own checks
        self._check_ray()

    def _check_sampling(self) -> None:
        check_sampling(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                       seed=self.seed, max_new_tokens=self.max_new_tokens, n=self.n, stop=self.stop,
                       speculative=self.speculative)

    def notes(self) -> list[str]:
        """Options that are valid but have no effect as combined (printed, not refused)."""
        if self.temperature != 0:
            return []
        moot = [f"--{n.replace('_', '-')}" for n, off in (("top_p", 1.0), ("top_k", 0), ("min_p", 0.0))
                if getattr(self, n) != off]
        if not moot:
            return []
        return [f"--temperature 0 is greedy (the most likely token of q): {', '.join(moot)} "
                f"{'is' if len(moot) == 1 else 'are'} moot"]

    def mixture(self):
        """The engine's MixtureConfig of these options (raises ValueError naming a bad one)."""
        try:
            return mixture_config(self.alpha_method, self.alpha, self.alpha_min, self.alpha_max,
                                  self.support_top_k, self.support_top_p, self.force_teacher)
        except ValueError as e:
            raise ValueError(str(e).replace("force_teacher", "--force-teacher", 1)) from None

    def _check_ray(self) -> None:
        if self.ray is not None and not str(self.ray).strip():
            raise ValueError("--ray needs a value: a cluster address (host:port), auto or local")
        if self.num_workers < 1:
            raise ValueError(f"--num-workers must be >= 1, got {self.num_workers}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ValueError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError(f"--chunk-size must be >= 1, got {self.chunk_size}")
        if self.ray is None:
            given = [f for f, v in (("--num-workers", self.num_workers != 1),
                                    ("--gpus-per-worker", self.gpus_per_worker is not None),
                                    ("--chunk-size", self.chunk_size is not None)) if v]
            if given:
                raise ValueError(f"{', '.join(given)} only with --ray: add --ray local (this machine), "
                                 "--ray auto or --ray ADDRESS")

    def hashed(self) -> dict:
        """The keys that change what is sampled (the resume guard). Templates as they are applied
        (\\n unescaped): a run whose template meant a literal backslash-n is not resumed with newlines."""
        h = {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("hashed", True)}
        if not h["speculative"]:  # off: the hash of runs made before the option existed stays valid
            del h["speculative"], h["draft"]
        for name in ("theta_template", "t_template"):
            h[name] = unescape(h[name])
        if h.pop("cross_tokenizer"):  # absent when off: hashes of same-tokenizer runs stay as they were
            from ..cross_tokenizer import MAPPING_RULE

            h["cross_tokenizer"] = MAPPING_RULE  # the teacher's tokenizer is model_t's, hashed above
        return h

    def to_dict(self) -> dict:
        return asdict(self)
