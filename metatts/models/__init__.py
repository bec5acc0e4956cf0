"""Flax NNX task models and the registry used by configs.

``MODELS`` maps a model name to a ``ModelEntry`` naming its config function
and class by import path; modules are imported only when a model is built,
so ``import metatts.models`` stays light. ``build_model`` turns a name, a
config and ``nnx.Rngs`` into a model; an unknown name fails with the list of
names.

    from flax import nnx
    from metatts.models import build_model
    model = build_model("tacotron", "tiny", nnx.Rngs(0))
    model = build_model("tacotron", {"size": "base", "num_mels": 80}, 0)
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Mapping, NamedTuple, Union

from flax import nnx


class ModelEntry(NamedTuple):
  """Where a registered model lives.

  Attributes:
    module: import path of the module.
    config_fn: name of ``config_fn(size: str, **overrides) -> config``.
    cls: name of the model class, built as ``cls(config, rngs=rngs)``.
  """

  module: str
  config_fn: str
  cls: str


MODELS = {
    "tacotron": ModelEntry("metatts.models.tacotron", "tacotron_config",
                           "Tacotron"),
    "duration_tacotron": ModelEntry("metatts.models.duration_tacotron",
                                    "duration_tacotron_config",
                                    "DurationTacotron"),
    "wavenet": ModelEntry("metatts.models.wavenet", "wavenet_config",
                          "WaveNet"),
    "nsf": ModelEntry("metatts.models.nsf", "nsf_config", "NSFWaveNet"),
    "speaker_encoder": ModelEntry("metatts.models.speaker_encoder",
                                  "speaker_encoder_config", "SpeakerEncoder"),
}


def _entry(name: str) -> ModelEntry:
  if name not in MODELS:
    raise ValueError(
        f"Unknown model {name!r}; registered models are {sorted(MODELS)}.")
  return MODELS[name]


def model_config(name: str, config: Union[str, Mapping[str, Any], Any,
                                          None] = None) -> Any:
  """Resolves a config for a registered model.

  Args:
    name: a key of ``MODELS``.
    config: None (the 'tiny' size), a size name ('tiny', 'base', 'full'), a
      mapping (dict or ``ml_collections.ConfigDict``) with an optional
      'size' key and field overrides, or an already built config object
      (returned as is).

  Returns:
    The model's config object.

  Raises:
    ValueError: unknown model, size or field.
  """
  entry = _entry(name)
  module = importlib.import_module(entry.module)
  config_fn = getattr(module, entry.config_fn)
  if config is None:
    return config_fn("tiny")
  if isinstance(config, str):
    return config_fn(config)
  if hasattr(config, "to_dict"):  # ml_collections.ConfigDict
    config = config.to_dict()
  if isinstance(config, Mapping):
    overrides = dict(config)
    size = overrides.pop("size", "tiny")
    return config_fn(size, **overrides)
  if dataclasses.is_dataclass(config) or hasattr(config, "_fields"):
    return config
  raise ValueError(
      f"Config for model {name!r} has type {type(config).__name__}; pass a "
      "size name, a dict / ConfigDict of fields, or the model's config "
      "object.")


def build_model(name: str, config: Union[str, Mapping[str, Any], Any,
                                         None] = None,
                rngs: Union[nnx.Rngs, int] = 0) -> nnx.Module:
  """Builds a registered model.

  Args:
    name: a key of ``MODELS`` (e.g. 'tacotron').
    config: see ``model_config``.
    rngs: ``nnx.Rngs`` or an int seed for parameter initialization.

  Returns:
    The model.

  Raises:
    ValueError: unknown model, size or config field.
  """
  entry = _entry(name)
  config = model_config(name, config)
  cls = getattr(importlib.import_module(entry.module), entry.cls)
  if isinstance(rngs, int):
    rngs = nnx.Rngs(rngs)
  return cls(config, rngs=rngs)


__all__ = ["MODELS", "ModelEntry", "build_model", "model_config"]
