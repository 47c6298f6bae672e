"""Training: loop, optimiser and schedule, atomic checkpoints."""

from .checkpoint import CheckpointError
from .loop import TrainArgs, evaluate, train

__all__ = ["CheckpointError", "TrainArgs", "evaluate", "train"]
