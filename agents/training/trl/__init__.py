"""Reinforcement learning of the MLLM policies with TRL (``pip install trl==1.16.0``).

- ``trl_env``: ``MedSegToolEnv``, an ``environment_factory`` for TRL's ``GRPOTrainer``: the
  three MedSAM-Agent tools, each call a turn of ``MedSeg-Text-v0``, the env's reward; and the
  reward functions that log format and Dice.
- ``trl_rollout``: ``MedSAMAgentGRPOTrainer``, MedSAM-Agent's exact rollout (overlays as user
  messages, its turn limit, a malformed reply ends the episode) through TRL's ``rollout_func``.
- ``tokens``: the token layout both share (a conversation grown turn by turn, never re-rendered).

``medseg_agents.training.learn_text`` runs SFT then GRPO with them on the tiny offline model.
Nothing here imports TRL at package import time.
"""
