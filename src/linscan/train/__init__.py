"""Training: loop, optimiser and schedule, atomic checkpoints."""

from .checkpoint import CheckpointError
from .loop import TrainArgs, TrainingDiverged, evaluate, train

__all__ = ["CheckpointError", "TrainArgs", "TrainingDiverged", "evaluate", "train"]
