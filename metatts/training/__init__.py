"""Training infrastructure: the impure loop, Orbax checkpoints and logging.

``metatts.meta`` holds the pure algorithms; this package runs them: jitted
steps, resumable checkpoints, TensorBoard/``metrics.json`` logs and progress.

The names below are imported on first use (PEP 562), so that
``from metatts.training import export`` - what ``metatts.load`` and the
CLI need - does not import the training loop and its TensorBoard writer
(``tensorboardX`` imports torch when it is installed: about 3 s of a 12 s
``python -m metatts say``, docs/benchmarks.md).
"""

import importlib

_LAZY = {
    "Checkpointer": "metatts.training.checkpoint",
    "MetricLogger": "metatts.training.logging",
    "TooManySkippedSteps": "metatts.training.loop",
    "TrainResult": "metatts.training.loop",
    "TrainState": "metatts.training.loop",
    "train": "metatts.training.loop",
}


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'metatts.training' has no attribute {name!r}")


__all__ = [
    "Checkpointer",
    "MetricLogger",
    "TooManySkippedSteps",
    "TrainResult",
    "TrainState",
    "train",
]
