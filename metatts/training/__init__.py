"""Training infrastructure: the impure loop, Orbax checkpoints and logging.

``metatts.meta`` holds the pure algorithms; this package runs them: jitted
steps, resumable checkpoints, TensorBoard/``metrics.json`` logs and progress.
"""

from metatts.training.checkpoint import Checkpointer
from metatts.training.logging import MetricLogger
from metatts.training.loop import TooManySkippedSteps
from metatts.training.loop import TrainResult
from metatts.training.loop import TrainState
from metatts.training.loop import train

__all__ = [
    "Checkpointer",
    "MetricLogger",
    "TooManySkippedSteps",
    "TrainResult",
    "TrainState",
    "train",
]
