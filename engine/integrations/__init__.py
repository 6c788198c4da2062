"""Bridges from qstar to training frameworks; each module imports its framework, so nothing here
loads unless asked for (`import engine` never imports TRL or accelerate).

    from engine.integrations.trl_grpo import QStarGRPOConfig, QStarGRPOTrainer   # pip install qstar[trl]
"""
