"""metatts: meta-learning few-shot speaker adaptation for text-to-speech.

The few-shot voice API (``load``, ``load_voice``, ``TTS``, ``Voice``) and the
meta-learners (``metatts.meta``, with optax) are imported on first use, so
``import metatts`` pulls in neither the model and audio stacks nor optax
(``python -m metatts say`` from a voice's cache needs jax alone).
"""

import importlib

from metatts.types import LossFn, Task, TTSBatch, VocoderBatch

__version__ = "0.1.0"

_LAZY = {"load": "metatts.api", "load_voice": "metatts.api",
         "TTS": "metatts.api", "Voice": "metatts.api"}


def __getattr__(name):
  if name == "meta":  # ``metatts.meta`` after a bare ``import metatts``
    return importlib.import_module("metatts.meta")
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'metatts' has no attribute {name!r}")


__all__ = ["meta", "LossFn", "Task", "TTSBatch", "VocoderBatch",
           "TTS", "Voice", "load", "load_voice"]
