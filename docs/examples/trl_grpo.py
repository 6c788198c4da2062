"""Train pi_theta with TRL's GRPOTrainer on qstar rollouts (CPU, fp32) and report what happened.

    pip install -e ".[trl]"        # trl==1.16.0 (constraints.txt)
    python docs/examples/trl_grpo.py --model-theta policy/ --model-t teacher/ --steps 4 \
        [--alpha-method fixed --alpha 1]

The data: arithmetic questions; pi_theta sees the question, pi_t also sees a reference solution
(the `prompt_t` column). The reward must vary inside a group even on random tiny models, so it
is token presence: the share of completion tokens that occur in the reference answer's tokens.
Each reward call also checks that qstar's per-token `logp_theta`, `logp_t`, `alpha` arrived.

Printed last, one JSON line: steps, sync_calls (TRL's weight syncs = generation rounds),
is_log_ratio_abs_max (TRL's own `sampling/sampling_logp_difference/max`, max over steps;
~0 for --alpha-method fixed --alpha 1 on an unpadded vocabulary), is_log_ratio_per_step,
policy_logp_moved (max |change| of the trainer model's log-probs on a fixed sequence between
the first and the last round), logp_theta_vs_trainer_max (after each sync: qstar's recorded
logp_theta on the round's completions against the trainer model's exact log-probs — its current
weights evaluated in float64 —, T = 1), logp_theta_vs_trainer_fp32_max (the same against the
trainer's own fp32 forward: two fp32 implementations, each ~1e-5 off, already before any
update), weights_max_abs_diff (hf backend:
the sampler's pi_theta parameters against the trainer's after each sync; 0 = bit-identical),
completions_differ, reward_kwargs_ok, teacher_saw_more, loss, seconds.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

QUESTIONS = [("what is two plus two?", "two plus two is four."),
             ("what is the quick brown fox?", "the fox jumps over the lazy dog."),
             ("say hello world.", "hello world, this is a tiny model."),
             ("add the numbers and divide by three.", "add the numbers, then divide by three.")]


def dataset(teacher_context: bool = True):
    """Rows: prompt (pi_theta's view), prompt_t (pi_t's: plus a reference solution), answer."""
    from datasets import Dataset

    rows = [{"prompt": [{"role": "user", "content": q}], "answer": a} for q, a in QUESTIONS]
    if teacher_context:  # the vllm backend runs both models on one prompt: no prompt_t there
        for row, (q, a) in zip(rows, QUESTIONS):
            row["prompt_t"] = [{"role": "user", "content": f"{q}\nreference solution: {a}"}]
    return Dataset.from_list(rows)


class Report:
    """What the run measured (filled by the reward function, the probe and the log callback)."""

    def __init__(self):
        self.logs, self.sync_diffs, self.sync_diffs_fp32, self.fixed_logps, self.weight_diffs = [], [], [], [], []
        self.reward_kwargs_ok, self.teacher_saw_more, self.groups_identical = True, True, 0


def make_reward(tokenizer, report: Report):
    def token_presence(completions, completion_ids, answer, logp_theta, logp_t, alpha, **kwargs):
        out = []
        for ids, ans, *per_token in zip(completion_ids, answer, logp_theta, logp_t, alpha):
            report.reward_kwargs_ok &= all(len(v) == len(ids) for v in per_token)
            target = set(tokenizer(ans)["input_ids"])
            out.append(sum(t in target for t in ids) / len(ids))
        return out

    return token_presence


def trainer_logps(model, prompt_ids: list[int], tokens: list[int]):
    """The trainer model's log-probs of `tokens` after `prompt_ids` (T = 1, all logit rows, as TRL)."""
    import torch

    ids = torch.tensor([prompt_ids + tokens[:-1]], device=next(model.parameters()).device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:].double()
    return torch.log_softmax(logits, -1)[torch.arange(len(tokens)), torch.tensor(tokens)]


def make_trainer(args, report: Report, sampler=None):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from engine import create_optimal_sampling_model
    from engine.integrations.trl_grpo import QStarGRPOConfig, QStarGRPOTrainer

    class Probe(QStarGRPOTrainer):
        def rollout(self, prompts, trainer=None):
            out = super().rollout(prompts, trainer)  # TRL synced pi_theta just before this call
            model = self.accelerator.unwrap_model(self.model)
            # the trainer's current weights evaluated in float64 (its exact log-probs), and its fp32 forward
            exact = AutoModelForCausalLM.from_config(model.config, dtype=torch.float64).eval()
            exact.load_state_dict(model.state_dict())
            for refs, model_ in ((report.sync_diffs, exact), (report.sync_diffs_fp32, model)):
                refs.append(max(float((trainer_logps(model_, p, c) - torch.tensor(lp, dtype=torch.float64)).abs().max())
                                for p, c, lp in zip(out["prompt_ids"], out["completion_ids"], out["logp_theta"])))
            theta = getattr(self.sampler.pair, "model_theta", None)  # hf backend: the engine's own module
            if theta is not None:
                mine = dict(theta.named_parameters())
                with torch.no_grad():
                    report.weight_diffs.append(max(float((mine[n] - w).abs().max()) for n, w in model.named_parameters()))
            fixed = out["prompt_ids"][0], self.processing_class("the quick brown fox")["input_ids"]
            report.fixed_logps.append(trainer_logps(model, *fixed))
            report.teacher_saw_more &= all(o.num_prompt_tokens_t > o.num_prompt_tokens_theta
                                           for o in self.last_outputs)
            G = self.num_generations
            groups = [out["completion_ids"][i:i + G] for i in range(0, len(prompts), G)]
            report.groups_identical += sum(all(c == g[0] for c in g) for g in groups)
            return out

    class Logs(TrainerCallback):
        def on_log(self, _args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                report.logs.append(dict(logs))

    tok = AutoTokenizer.from_pretrained(args.model_theta)
    cfg_theta = AutoConfig.from_pretrained(args.model_theta)
    for name, value in vars(cfg_theta).items():  # dropout off: TRL's old log-probs must be deterministic
        if "dropout" in name and isinstance(value, float):
            setattr(cfg_theta, name, 0.0)
    model = AutoModelForCausalLM.from_pretrained(args.model_theta, config=cfg_theta, dtype="float32")
    if sampler is None:
        sampler = create_optimal_sampling_model(args.model_theta, args.model_t, args.alpha_method, args.alpha,
                                                device="cpu", dtype="float32", backend=args.backend)
    cfg = QStarGRPOConfig(output_dir=tempfile.mkdtemp(prefix="qstar-trl-"), max_steps=args.steps,
                          num_generations=args.num_generations,
                          per_device_train_batch_size=args.num_generations * args.prompts_per_step,
                          max_completion_length=args.max_completion_length, learning_rate=args.lr,
                          temperature=1.0, beta=0.0, logging_steps=1, bf16=False, use_cpu=True,
                          report_to="none", save_strategy="no", seed=args.seed, disable_tqdm=True,
                          remove_unused_columns=False, dataloader_num_workers=0)
    return Probe(model=model, reward_funcs=[make_reward(tok, report)], args=cfg, train_dataset=dataset(args.backend == "hf"),
                 processing_class=tok, sampler=sampler, callbacks=[Logs()])


def main(argv=None, sampler=None) -> dict:
    """Run and report; `sampler` (tests): an already-started qstar model to train against."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model-theta", required=True)
    p.add_argument("--model-t", required=True)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--alpha-method", default="kl_symmetry")
    p.add_argument("--alpha", type=float, default=0.5, help="weight on pi_theta (alpha-method fixed)")
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--max-completion-length", type=int, default=12)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default="hf", choices=["hf", "vllm"],
                   help="vllm: both models in one vLLM engine (pi_t then sees the policy's prompt)")
    args = p.parse_args(argv)

    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func's experimental-API warning
    t0 = time.perf_counter()
    report = Report()
    trainer = make_trainer(args, report, sampler)
    trainer.train()
    key = "sampling/sampling_logp_difference/max"
    per_step = [log[key] for log in report.logs if key in log]
    moved = float((report.fixed_logps[-1] - report.fixed_logps[0]).abs().max()) if report.fixed_logps else 0.0
    result = {"steps": trainer.state.global_step, "sync_calls": trainer.sync_calls,
              "rollout_rounds": trainer.rollout_rounds, "alpha_method": trainer.sampler.mixture.alpha_method, "alpha": trainer.sampler.mixture.alpha,
              "is_log_ratio_abs_max": max(per_step) if per_step else None, "is_log_ratio_per_step": per_step,
              "sampling_metrics_logged": bool(per_step) and "sampling/importance_sampling_ratio/mean" in report.logs[-1],
              "policy_logp_moved": moved, "logp_theta_vs_trainer_max": max(report.sync_diffs, default=None),
              "logp_theta_vs_trainer_per_round": report.sync_diffs,
              "logp_theta_vs_trainer_fp32_max": max(report.sync_diffs_fp32, default=None),
              "weights_max_abs_diff": max(report.weight_diffs, default=None),
              "completions_differ": report.groups_identical == 0, "reward_kwargs_ok": report.reward_kwargs_ok,
              "teacher_saw_more": report.teacher_saw_more,
              "reward_std_mean": sum(log.get("reward_std", 0.0) for log in report.logs) / max(len(report.logs), 1),
              "loss": report.logs[-1]["loss"] if report.logs else None,
              "seconds": round(time.perf_counter() - t0, 2)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
