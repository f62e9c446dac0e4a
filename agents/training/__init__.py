"""Everything that trains (``medseg_agents.training``): the room apart from inference.

- ``sft``: the SFT export, expert trajectories through ``MedSeg-Text-v0`` as TRL and
  LLaMA-Factory chat datasets (``medseg-train export-sft``), and its LLaMA-Factory config.
- ``trl``: the TRL 1.16 adapters (``MedSegToolEnv``, MedSAM-Agent's exact rollout) and the
  token layout they share.
- ``verl``: the verl 0.9.1 tools, agent loop, parquet rows, configs and GPU launch script.
- ``learn_text``: SFT then GRPO of the tiny offline Qwen3-VL (``medseg-train learn-text``).
- ``ppo``: the PPO trainer (``medseg-train ppo``); the agent it trains, ``PPOPolicy``, is
  inference and lives in ``medseg_agents.ppo``.
- ``click_model``: the fine-tuning recipe of the shipped ``litemedsam_clicks`` weights and
  its evaluation (``medseg-train click-model-train`` / ``click-model-eval``).
- ``learned``: the learned agent's recipe, behaviour cloning then GRPO
  (``medseg-train learned``); the agent itself is ``medseg_agents.learned``.
- ``cli``: ``medseg-train``, one subcommand per trainer.
- ``envs``: the env options every adapter builds its envs with (one shared segmenter).

This package may import the rest of ``medseg_agents`` and ``medseg_env``; nothing outside it
imports it (``medseg_bench`` included; ``tests/test_architecture.py`` checks), so the
trainers' heavy and clashing dependencies (TRL, verl, stable-baselines3) never reach a user
of the env, the policies or the benchmark. Nothing here is imported at package import time.
"""
