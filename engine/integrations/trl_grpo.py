"""qstar as the rollout backend of TRL's GRPOTrainer (trl==1.16.0), with TRL's own importance-
sampling correction fed qstar's `logp_behavior`.

    sampler = create_optimal_sampling_model("policy/", "teacher/", alpha_method="kl_symmetry")
    trainer = QStarGRPOTrainer(model="policy/", reward_funcs=[reward], args=QStarGRPOConfig(...),
                               train_dataset=ds, sampler=sampler)   # ds: "prompt" (+ "prompt_t")
    trainer.train()

What the subclass does, and why each piece is here rather than in a bare `rollout_func`:
- rollout: TRL calls `rollout_func(prompts, trainer)` once per generation batch on every rank,
  prompts already repeated num_generations times. Each side's prompt is rendered here (chat
  template for message lists, as TRL does); pi_t's view comes from the batch's own rows (a
  column, default "prompt_t", or a user function), which only the subclass sees
  (`_generate_and_score_completions` keeps them). Every completion gets its own RNG key from
  (round, rank, index), so repeats, ranks and steps never share draws. max_completion_length,
  temperature, top_k, top_p, min_p come from the trainer's config. Returned: `logprobs =
  logp_behavior` (what each token was really drawn from) and, per token, `logp_theta`,
  `logp_t`, `alpha` (reward functions receive them as keyword arguments).
- importance sampling: TRL 1.16 corrects only when `use_vllm` is on, and turning that flag on
  in the config builds a vLLM client; so after `__init__` the attributes are flipped, and
  `vllm_generation` is a `PolicySync` whose `sync_weights` TRL calls before each new step's
  generation. QStarGRPOConfig defaults the mode to per-token truncation: with a teacher
  mixture most sequence ratios exceed TRL's default sequence mask cap.
- weight sync: the trainer's model, unwrapped from accelerate, PEFT adapters merged (DeepSpeed
  ZeRO-3 gathered: every rank takes part), is copied into the sampler's pi_theta in place
  (`update_policy_weights`).
Not for: the mixture or the engine (engine.core, qstar_kernels); FSDP v1 (refused), tools and
environments (refused: the rollout would not see them). These touch TRL private details:
pinned to trl==1.16.0 (docs/guide.md, "Train with TRL").
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer
from trl.data_utils import is_conversational

TRL_VERSION = "1.16.0"


@dataclass
class QStarGRPOConfig(GRPOConfig):
    """GRPOConfig with the defaults a teacher mixture needs (see the module docstring)."""

    vllm_importance_sampling_mode: str = field(
        default="token_truncate",
        metadata={"help": "TRL's IS mode for qstar rollouts: token_truncate (default here: clamp each "
                          "token's ratio pi_theta/behaviour at vllm_importance_sampling_clip_max), "
                          "token_mask, sequence_truncate or sequence_mask (TRL's default)."})
    teacher_prompt_column: str = field(
        default="prompt_t",
        metadata={"help": "Dataset column with pi_t's view of the prompt (e.g. the problem plus a reference "
                          "solution); rows without it give pi_t the policy's prompt."})


def rollout_key(round_: int, rank: int, index: int) -> int:
    """A 63-bit RNG key for completion `index` of generation round `round_` on `rank`."""
    digest = hashlib.blake2b(f"qstar-trl:{round_}:{rank}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def repeats(ids_theta: list, ids_t: list, g: int) -> int:
    """g when the prompts come in blocks of g identical (theta, t) pairs (TRL's repeats: then the g
    samples share one prefill, as generate's n), else 1. Outputs stay in the same order."""
    if not g or g < 2 or len(ids_theta) % g:
        return 1
    same = all(ids_theta[i] == ids_theta[i - i % g] and ids_t[i] == ids_t[i - i % g] for i in range(len(ids_theta)))
    return g if same else 1


def _refuse(args, kwargs: dict) -> None:
    """Trainer options a qstar rollout cannot honour: one ValueError naming the option and the fix."""
    problems = []
    if args.use_vllm:
        problems.append("use_vllm=True (qstar is the generation backend here: leave use_vllm off)")
    if args.repetition_penalty != 1.0:
        problems.append(f"repetition_penalty={args.repetition_penalty} (qstar samples the exact mixture: "
                        "set 1.0)")
    if args.generation_kwargs:
        problems.append(f"generation_kwargs={args.generation_kwargs} (use temperature / top_k / top_p / "
                        "min_p / max_completion_length)")
    if not isinstance(args.max_completion_length, int) or args.max_completion_length < 1:
        problems.append(f"max_completion_length={args.max_completion_length!r} (an int >= 1)")
    for name in ("rollout_func", "tools", "environment_factory"):
        if kwargs.get(name):
            problems.append(f"{name}= (QStarGRPOTrainer makes the rollouts; tools and environments are "
                            "not supported)")
    if problems:
        raise ValueError("QStarGRPOTrainer cannot honour: " + "; ".join(problems))


def _warn_padded(sampler) -> None:
    vocab = sampler.pair.vocab
    rows = getattr(getattr(sampler.pair, "model_theta", None), "get_output_embeddings", lambda: None)()
    rows = rows.weight.shape[0] if rows is not None else vocab.logits_width
    if rows > vocab.vocab_size:
        warnings.warn(f"pi_theta has {rows - vocab.vocab_size} padded logit rows beyond the tokenizer's "
                      f"{vocab.vocab_size}: qstar never samples them, TRL normalises over them, so each "
                      "token's IS log-ratio carries log(1 - padded mass) (docs/guide.md, Train with TRL)",
                      stacklevel=3)


class PolicySync:
    """What TRL calls `vllm_generation`: `sync_weights()` copies the trainer's pi_theta into the
    sampler. `calls` counts the syncs TRL asked for (one per generation round)."""

    def __init__(self, trainer, sampler):
        from trl.distributed import DistributedBackend

        self.trainer, self.sampler, self.calls = trainer, sampler, 0
        self.dist = DistributedBackend(trainer.accelerator)
        if self.dist.fsdp_version == 1:
            raise ValueError("QStarGRPOTrainer does not sync weights from FSDP v1; use FSDP2, DeepSpeed or DDP")

    def sync_weights(self) -> None:
        self.calls += 1
        self.push()

    def push(self) -> int:
        """Copy the trainer model's current weights into the sampler; returns tensors copied."""
        from accelerate.utils import is_peft_model

        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        params = list(model.parameters())
        with self.dist.gather_params(params):  # ZeRO-3: a collective, every rank runs it
            if not is_peft_model(model):
                return self.sampler.update_policy_weights(model.named_parameters())
            model.merge_adapter()
            try:
                prefix = model.prefix  # "lora_": the adapter tensors, already merged
                return self.sampler.update_policy_weights(
                    (n, p) for n, p in model.named_parameters() if prefix not in n)
            finally:
                model.unmerge_adapter()


class QStarGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose rollouts are qstar samples from q ∝ pi_theta^a pi_t^(1-a) (a: the weight
    on pi_theta), IS-corrected by TRL with logp_behavior, pi_theta synced each generation round.

    sampler: what create_optimal_sampling_model returns (hf or vllm backend), its pi_theta the
    same architecture as `model`. teacher_prompt: optional function(row) -> pi_t's prompt (a
    string or message list); default: the row's `args.teacher_prompt_column` (QStarGRPOConfig;
    "prompt_t" otherwise), else the policy's prompt.
    """

    def __init__(self, model, reward_funcs, args: GRPOConfig | None = None, *, sampler, teacher_prompt=None,
                 **kwargs):
        import trl

        if trl.__version__ != TRL_VERSION:
            raise ImportError(f"QStarGRPOTrainer relies on TRL {TRL_VERSION} internals, found trl {trl.__version__}: "
                              f"pip install trl=={TRL_VERSION} (or qstar[trl])")
        if args is not None:
            _refuse(args, kwargs)
        self.sampler, self.teacher_prompt = sampler, teacher_prompt
        self.rollout_rounds = 0
        self.last_outputs: list = []
        self._rows: list[dict] | None = None
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, rollout_func=self.rollout, **kwargs)
        _refuse(self.args, kwargs)
        self.teacher_column = getattr(self.args, "teacher_prompt_column", "prompt_t")
        # TRL corrects and syncs only on its vLLM path; this backend takes that path's place
        self.use_vllm, self.vllm_mode, self._last_loaded_step = True, "qstar", -1
        self.vllm_generation = PolicySync(self, sampler)
        self.vllm_generation.push()  # a model that does not fit the sampler fails here, not mid-step
        _warn_padded(sampler)

    @property
    def sync_calls(self) -> int:
        return self.vllm_generation.calls

    def _generate_and_score_completions(self, inputs):
        self._rows = inputs  # the batch's rows: pi_t's view lives there, rollout_func gets only prompts
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self._rows = None

    def _teacher_view(self, row: dict, prompt):
        if self.teacher_prompt is not None:
            return self.teacher_prompt(row)
        return row.get(self.teacher_column) or prompt

    def _prompt_ids(self, prompt) -> list[int]:
        """One side's prompt ids the way TRL renders the policy's (chat template for messages)."""
        tok = self.processing_class
        if is_conversational({"prompt": prompt}):
            out = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True,
                                          **self.chat_template_kwargs)
            return list(out["input_ids"])
        return list(tok(prompt)["input_ids"])

    def rollout(self, prompts: list, trainer=None) -> dict:
        """TRL's rollout_func: one completion per (already repeated) prompt, drawn by qstar."""
        rows = self._rows if self._rows is not None and len(self._rows) == len(prompts) else [{}] * len(prompts)
        ids_theta = [self._prompt_ids(p) for p in prompts]
        ids_t = [self._prompt_ids(self._teacher_view(r, p)) for r, p in zip(rows, prompts)]
        rank, a = self.accelerator.process_index, self.args
        keys = [rollout_key(self.rollout_rounds, rank, i) for i in range(len(prompts))]
        self.rollout_rounds += 1
        n = repeats(ids_theta, ids_t, self.num_generations if self.model.training else self.num_generations_eval)
        outs = self.sampler.generate(ids_theta[::n], prompts_t=ids_t[::n], n=n, keys=keys,
                                     max_new_tokens=a.max_completion_length, temperature=a.temperature,
                                     top_k=a.top_k or 0, top_p=a.top_p, min_p=a.min_p or 0.0, seed=a.seed)
        self.last_outputs = outs  # this rank's SampleOutputs of the latest round (logging, checks)
        failed = [o for o in outs if o.finish_reason == "error"]
        if failed:
            raise RuntimeError(f"qstar could not sample {len(failed)} of {len(outs)} rollouts, e.g. prompt "
                               f"{failed[0].prompt_index}: {failed[0].error}")
        return {"prompt_ids": ids_theta, "completion_ids": [o.token_ids for o in outs],
                "logprobs": [o.logp_behavior for o in outs], "logp_theta": [o.logp_theta for o in outs],
                "logp_t": [o.logp_t for o in outs], "alpha": [o.alpha for o in outs]}
