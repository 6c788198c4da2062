"""qstar as verl's rollout backend (verl==0.9.1): `actor_rollout_ref.rollout.name=qstar`.

Importing this package registers, in verl's own registries, the replica (RolloutReplicaRegistry
"qstar" -> replica.QStarReplica), the trainer-side adapter (_ROLLOUT_REGISTRY[("qstar", "async")]
-> adapter.QStarRolloutAdapter) and the agent loop "qstar_agent" (pi_t's view of the prompt). verl
imports it in every process that imports verl, through the `verl.plugins` entry point qstar
installs, or through VERL_USE_EXTERNAL_MODULES=engine.integrations.verl (docs/guide.md, "Train
with verl"). Each sampled token's behaviour log-prob is the TokenOutput's `log_probs` (verl's
`rollout_log_probs`); `qstar_logp_theta`, `qstar_logp_t`, `qstar_alpha`, `qstar_forced`,
`qstar_clamped` travel as extra fields. alpha is the weight on pi_theta.
Not for: the base engine — nothing outside this package imports verl.
"""
from __future__ import annotations

NAME = "qstar"
VERL_VERSION = "0.9.1"


def _load_replica():
    from .replica import QStarReplica

    return QStarReplica


def register() -> None:
    """Put qstar into verl's registries (idempotent)."""
    from verl.workers.rollout import base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    RolloutReplicaRegistry.register(NAME, _load_replica)
    base._ROLLOUT_REGISTRY[(NAME, "async")] = "engine.integrations.verl.adapter.QStarRolloutAdapter"
    try:
        from . import agent_loop  # noqa: F401 - registers "qstar_agent"
    except ImportError as e:  # verl's agent loop needs its server packages (the `verl` extra)
        import logging

        logging.getLogger(__name__).warning("qstar_agent not registered: %s (pip install 'qstar[verl]')", e)


register()
