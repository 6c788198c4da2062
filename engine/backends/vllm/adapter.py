"""QStarVLLM: the Python API object of the vllm backend, and the request loop behind it.

It is an OptimalSamplingModel (same `generate`, same SampleOutput fields, same keys and seeds,
same Philox draws as the hf engine), whose `.engine.run` feeds engine.core.Request objects to
one vLLM engine holding both models (model.py) and turns finished vLLM outputs back into
SampleOutputs (values decoded from logprobs, codec.py). The pipeline uses it through the same
`.tokenizer`, `.pair` and `.engine.run` as the hf engine.

Limits (each refused with a message): both models see the same prompt ids (no per-side
prompts: π_t's prompt must render to π_θ's ids), models given as paths / hub names / .gguf,
pairs checks.py refuses. update_policy_weights loads a trainer's pi_theta into the running engine
(vLLM's own load_weights, in place) and drops vLLM's prefix cache. Not for: the vLLM model class (model.py), the sampler (logits_processor.py).
"""
from __future__ import annotations

import os
from collections import deque
from pathlib import Path

from ...sampling_model import OptimalSamplingModel
from ...config import EngineConfig, MixtureConfig, SamplingParams
from ...core import Request
from ...outputs import SampleOutput
from ...policy_weights import check_weights, named_weights
from . import codec
from .checks import PairError, check_tp
from .logits_processor import FQCN
from .model import ARCH
from .pair import PairInfo, inspect_pair

# set before vLLM reads them: the V1 runner (its logits-processor interface is what
# logits_processor.py implements), no AOT compile cache (hf_overrides, which name pi_t, are not
# in vLLM's config hash), the engine in this process (no fork/spawn of the caller)
FORCED_ENV = {"VLLM_USE_V2_MODEL_RUNNER": "0"}
DEFAULT_ENV = {"VLLM_USE_AOT_COMPILE": "0", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
FINISH = {"stop": "stop", "length": "length"}


def _set_env(kv_cache_gib: float | None) -> None:
    os.environ.update(FORCED_ENV)
    for k, v in DEFAULT_ENV.items():
        os.environ.setdefault(k, v)
    if kv_cache_gib is not None:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(kv_cache_gib)


def per_side_error(req: Request) -> str | None:
    if req.ids_t != req.ids_theta:
        return (f"prompt {req.prompt_index}: pi_t's prompt differs from pi_theta's ({len(req.ids_t)} vs "
                f"{len(req.ids_theta)} tokens). The vllm backend runs both models on one token "
                "sequence, so per-side prompts (prompts_t, --t-template, per-side chat templates) "
                "need --backend hf")
    return None


def check_generate_config(cfg) -> None:
    """Refuse `qstar generate` options this backend cannot honour, before any model loads."""
    if cfg.t_template or cfg.no_chat_template_theta != cfg.no_chat_template_t:
        raise PairError("--backend vllm runs both models on the same prompt ids: per-side prompts "
                        "(--t-template, --no-chat-template-theta/-t) need --backend hf")


def reload_theta(worker, weights) -> None:
    """In each vLLM worker: load pi_theta's checkpoint-format weights into `theta_model` in place.

    vLLM processes weights after loading (CPU linear layers repack theirs and drop the original
    parameter), so a bare load_weights cannot run twice; the layerwise reload restores each
    layer's loadable parameters, loads, re-processes and copies the result back into the
    tensors the model (and any captured graph) already holds. Only theta_model takes part.
    """
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

    runner = worker.model_runner
    theta = runner.get_model().theta_model
    initialize_layerwise_reload(theta)
    theta.load_weights(iter(weights))
    finalize_layerwise_reload(theta, runner.model_config)


class VLLMEngine:
    """engine.core.Engine's `run` contract over one vLLM LLMEngine."""

    def __init__(self, llm, pair: PairInfo, mixture: MixtureConfig, max_in_flight: int):
        self.llm, self.pair, self.mixture = llm, pair, mixture
        self.max_in_flight = max_in_flight

    def _params(self, req: Request, params: SamplingParams):
        from vllm import SamplingParams as VSP
        from vllm.sampling_params import RequestOutputKind

        m = self.mixture
        q = dict(key=int(req.key), seed=int(params.seed), temperature=float(params.temperature),
                 top_k=int(params.top_k), top_p=float(params.top_p), min_p=float(params.min_p),
                 alpha_method=m.alpha_method, alpha=float(m.alpha), alpha_min=float(m.alpha_min),
                 alpha_max=float(m.alpha_max), support_top_k=int(m.support_top_k),
                 support_top_p=float(m.support_top_p), force_first=bool(m.force_first),
                 force_special=bool(m.force_special))
        room = self.pair.max_model_len - len(req.ids_theta)
        return VSP(temperature=0.0, max_tokens=min(params.max_new_tokens, room), ignore_eos=params.ignore_eos,
                   stop_token_ids=[] if params.ignore_eos else sorted(self.pair.vocab.eos_ids),
                   stop=list(params.stop) or None, detokenize=bool(params.stop),
                   logprobs=codec.NUM_LOGPROBS, flat_logprobs=True, skip_special_tokens=True,
                   output_kind=RequestOutputKind.FINAL_ONLY, extra_args={"qstar": q})

    def _admit_error(self, req: Request) -> str | None:
        if req.error:
            return req.error
        if not req.ids_theta:
            return "empty prompt for model_theta"
        if len(req.ids_theta) >= self.pair.max_model_len:
            return (f"prompt has {len(req.ids_theta)} tokens; the pair accepts at most "
                    f"{self.pair.max_model_len} positions (prompt + response): shorten or skip it")
        return None

    def run(self, requests: list[Request], params: SamplingParams, progress=None,
            should_stop=None) -> list[SampleOutput]:
        """Outputs in request order; with should_stop, unstarted requests are left out (None)."""
        if params.speculative:
            raise ValueError(f"speculative={params.speculative}: the vllm backend does not do speculative "
                             f"mixture sampling; use backend='hf' (--backend hf) or speculative=0")
        for r in requests:
            if not r.error and (msg := per_side_error(r)):
                raise PairError(msg)
        eng = self.llm.llm_engine
        results: list[SampleOutput | None] = [None] * len(requests)
        queue, inflight = deque(requests), {}

        def done(req, out):
            results[req.index] = out
            if progress:
                progress(out)

        while queue or inflight:
            if should_stop is not None and queue and should_stop():
                queue.clear()  # stop admitting; the running requests finish
            while queue and len(inflight) < self.max_in_flight:
                req = queue.popleft()
                err = self._admit_error(req)
                if err:
                    done(req, SampleOutput(prompt_index=req.prompt_index, sample_index=req.sample_index,
                                           key=req.key, finish_reason="error", error=err))
                    continue
                rid = f"qstar-{id(self)}-{req.index}"  # outputs carry this (external) id
                eng.add_request(rid, {"prompt_token_ids": req.ids_theta}, self._params(req, params))
                inflight[rid] = req
            if not inflight:
                continue
            for out in eng.step():
                if out.finished and out.request_id in inflight:
                    req = inflight.pop(out.request_id)
                    done(req, self._output(req, out, params))
            if inflight and not eng.has_unfinished_requests():
                raise RuntimeError(f"vLLM dropped {len(inflight)} requests without output "
                                   f"(e.g. {next(iter(inflight))})")
        return results  # type: ignore[return-value]

    def _output(self, req: Request, out, params: SamplingParams) -> SampleOutput:
        c = out.outputs[0]
        toks = list(c.token_ids)
        so = SampleOutput(prompt_index=req.prompt_index, sample_index=req.sample_index, key=req.key,
                          token_ids=toks, finish_reason=FINISH.get(c.finish_reason, "error"),
                          num_prompt_tokens_theta=len(req.ids_theta), num_prompt_tokens_t=len(req.ids_t))
        if so.finish_reason == "error":
            so.error, so.token_ids = f"vLLM finished the request with {c.finish_reason!r}", []
            return so
        lp, W = c.logprobs, self.pair.vocab.logits_width
        rows = [codec.decode(dict(zip(lp.token_ids[s:e], lp.logprobs[s:e])), W)
                for s, e in zip(lp.start_indices, lp.end_indices)]
        for name, col in zip(codec.FIELDS, zip(*rows) if rows else [()] * len(codec.FIELDS)):
            setattr(so, name, list(col))
        so.drafted = [0.0] * len(toks)  # no speculative mode here: every token is a plain draw
        text = self.pair.tokenizer.decode(toks, skip_special_tokens=True)
        if so.finish_reason == "stop" and params.stop:
            cut = [text.find(s) for s in params.stop if s in text]
            text = text[:min(cut)] if cut else text
        so.text = text
        return so


class QStarVLLM(OptimalSamplingModel):
    """create_optimal_sampling_model(..., backend="vllm"): the pair inside one vLLM engine.

    alpha is the weight on pi_theta. support ("t_top_k:K,t_top_p:P") and force_teacher
    ("first,special") are the hf engine's mixture controls (MixtureConfig, same semantics and
    draws). engine options: max_batch_size (vLLM max_num_seqs), kernels_backend (QSTAR_BACKEND
    for the sampler step), cuda_graphs (False = enforce_eager), tensor_parallel_size (both
    models; tensor_parallel_size_t must equal it), kv_cache_gib (CPU KV cache), max_model_len,
    and any other vllm.LLM keyword via vllm_kwargs.
    """

    def __init__(self, model_theta, model_t, alpha_method: str = "kl_symmetry", alpha: float = 0.5,
                 device: str | None = None, dtype: str | None = None, *, alpha_min: float = 0.0,
                 alpha_max: float = 1.0, support: str = "", force_teacher: str = "", tokenizer=None,
                 max_batch_size: int = 8, threads: int | None = None,
                 kernels_backend: str = "auto", cuda_graphs: bool = True, tensor_parallel_size: int = 1,
                 tensor_parallel_size_t: int | None = None, kv_cache_gib: float | None = None,
                 max_model_len: int | None = None, trust_remote_code: bool = False, vllm_kwargs: dict | None = None):
        if tokenizer is not None:
            raise PairError("the vllm backend uses the models' own tokenizer; drop tokenizer=")
        check_tp(tensor_parallel_size, tensor_parallel_size_t)
        self.mixture = MixtureConfig(alpha_method=alpha_method, alpha=alpha, alpha_min=alpha_min, alpha_max=alpha_max,
                                     support=support, force_teacher=force_teacher)
        self.engine_cfg = EngineConfig(device=device, dtype=dtype, max_batch_size=max_batch_size,
                                       kernels_backend=kernels_backend, cuda_graphs=cuda_graphs)
        cpu = self.engine_cfg.device == "cpu"
        self.pair = inspect_pair(model_theta, model_t, tensor_parallel_size=tensor_parallel_size, cpu=cpu,
                                 trust_remote_code=trust_remote_code)
        if max_model_len is not None:  # the pipeline's long-prompt check reads both
            self.pair.max_pos_theta = min(self.pair.max_pos_theta, int(max_model_len))
            self.pair.max_pos_t = min(self.pair.max_pos_t, int(max_model_len))
        self.tokenizer = self.pair.tokenizer
        _set_env(kv_cache_gib)
        if kernels_backend != "auto":
            os.environ["QSTAR_BACKEND"] = kernels_backend
        if threads and cpu:  # vLLM's CPU worker binds its own OpenMP threads to these cores
            os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "0" if threads == 1 else f"0-{threads - 1}"
        self.engine = VLLMEngine(self._start(tensor_parallel_size, trust_remote_code, vllm_kwargs or {}),
                                 self.pair, self.mixture, max_in_flight=4 * max_batch_size)

    def _start(self, tp: int, trust_remote_code: bool, extra: dict):
        from vllm import LLM

        p, cfg = self.pair, self.engine_cfg
        overrides = dict(architectures=[ARCH], qstar_model_t=p.path_t, qstar_arch_theta=p.arch_theta,
                         qstar_width=p.vocab.logits_width, qstar_vocab_size=p.vocab.vocab_size,
                         qstar_special_ids=sorted(int(i) for i in p.vocab.special_ids))
        kw = dict(model=p.path_theta, tokenizer=p.path_theta, hf_overrides=overrides, logits_processors=[FQCN],
                  logprobs_mode="processed_logprobs", max_logprobs=codec.NUM_LOGPROBS, dtype=cfg.dtype,
                  max_model_len=p.max_model_len, tensor_parallel_size=tp, max_num_seqs=cfg.max_batch_size,
                  enforce_eager=not cfg.cuda_graphs or cfg.device == "cpu", generation_config="vllm",
                  trust_remote_code=trust_remote_code, disable_log_stats=True, seed=0,
                  # the sampler's position is len(output ids); keep it exact (async scheduling
                  # pads that list with placeholders; untested here, so off unless asked for)
                  async_scheduling=False)
        kw.update(extra)
        return LLM(**kw)

    def update_policy_weights(self, weights) -> int:
        """Load new pi_theta weights into the engine; returns how many tensors were loaded.

        Same contract as the hf backend's (names of DDP / compile / PEFT-merged wrappings accepted,
        every name and shape checked against pi_theta's checkpoint before anything loads). Loaded
        through vLLM's layerwise reload (reload_theta), so weights its CPU / quantised kernels
        repacked after loading are repacked again and written back into the same storage;
        pi_t is a separate module (`t_model`) and never changes. The prefix cache is reset: its
        KV was computed with the old weights.
        """
        items = named_weights(weights)
        check_weights(items, self._theta_shapes(), self.pair.name_theta)
        llm = self.engine.llm
        llm.collective_rpc(reload_theta, args=(items,))
        llm.reset_prefix_cache()
        return len(items)

    def _theta_shapes(self) -> dict[str, tuple]:
        """pi_theta's parameter names and shapes, read from its checkpoint's safetensors headers."""
        if getattr(self, "_shapes", None) is None:
            from safetensors import safe_open
            from transformers import AutoConfig

            shapes = {}
            for f in sorted(Path(self.pair.path_theta).glob("*.safetensors")):
                with safe_open(str(f), "pt") as fh:
                    shapes.update({k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()})
            if not shapes:
                raise PairError(f"model_theta ({self.pair.name_theta}): no .safetensors files in "
                                f"{self.pair.path_theta} to check weights against")
            cfg = AutoConfig.from_pretrained(self.pair.path_theta).get_text_config()
            embed = "model.embed_tokens.weight"
            if getattr(cfg, "tie_word_embeddings", False) and embed in shapes:
                shapes.setdefault("lm_head.weight", shapes[embed])  # tied: saved once, sent twice
            self._shapes = shapes
        return self._shapes
