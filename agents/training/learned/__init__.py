"""Training the learned prompting agent: expert data, SFT (behaviour cloning), then RL (GRPO).

``medseg-train learned --out DIR`` runs the recipe (``recipe``); the agent itself (network,
checkpoints, ``Policy``) is ``medseg_agents.learned``, which this package imports and which
never imports it.
"""
