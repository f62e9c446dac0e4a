"""GRPO with verl 0.9.1 (``scripts/verl_env.sh`` builds the overlay; a GPU run needs more).

- ``verl_tools``: the three MedSAM-Agent tools as verl ``BaseTool``s over one ``MedSeg-Text-v0``
  session per trajectory.
- ``verl_agent_loop``: ``MedSegAgentLoop``, MedSAM-Agent's agent loop on verl's
  ``ToolAgentLoop``.
- ``verl_data``: the parquet rows (``python -m medseg_agents.training.verl.verl_data``).
- ``configs/``: the GRPO recipe, the tool and agent-loop registries; ``run_verl_grpo.sh``
  launches a GPU run.

Importing ``verl_tools`` or ``verl_agent_loop`` needs verl; this package does not.
"""
