"""metatts: meta-learning few-shot speaker adaptation for text-to-speech."""

from metatts import meta
from metatts.types import LossFn, Task, TTSBatch, VocoderBatch

__version__ = "0.1.0"

__all__ = ["meta", "LossFn", "Task", "TTSBatch", "VocoderBatch"]
