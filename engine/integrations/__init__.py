"""Bridges from qstar to training frameworks; each module imports its framework, so nothing here
loads unless asked for (`import engine` never imports TRL, accelerate or verl).

    from engine.integrations.trl_grpo import QStarGRPOConfig, QStarGRPOTrainer   # pip install qstar[trl]
    import engine.integrations.verl   # verl's rollout.name=qstar; verl imports it itself (qstar[verl])
"""
