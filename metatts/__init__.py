"""metatts: meta-learning few-shot speaker adaptation for text-to-speech.

The few-shot voice API (``load``, ``load_voice``, ``TTS``, ``Voice``) is
imported on first use, so ``import metatts`` for the meta-learners alone does
not pull in the model and audio stacks.
"""

import importlib

from metatts import meta
from metatts.types import LossFn, Task, TTSBatch, VocoderBatch

__version__ = "0.1.0"

_LAZY = {"load": "metatts.api", "load_voice": "metatts.api",
         "TTS": "metatts.api", "Voice": "metatts.api"}


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'metatts' has no attribute {name!r}")


__all__ = ["meta", "LossFn", "Task", "TTSBatch", "VocoderBatch",
           "TTS", "Voice", "load", "load_voice"]
