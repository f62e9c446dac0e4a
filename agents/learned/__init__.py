"""The learned prompting agent: its network, checkpoints and ``Policy`` (inference only).

Training lives in ``medseg_agents.training.learned`` (``medseg-train learned``), which imports
this package; nothing here imports the trainer.
"""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .network import PolicySpec, PromptNet
from .policy import LearnedBCPolicy, LearnedPolicy, shipped_weights

__all__ = [
    "CheckpointError",
    "LearnedBCPolicy",
    "LearnedPolicy",
    "PolicySpec",
    "PromptNet",
    "load_checkpoint",
    "save_checkpoint",
    "shipped_weights",
]
