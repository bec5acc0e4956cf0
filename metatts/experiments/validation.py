"""Schema checks of experiment configs, run before anything is written.

:func:`validate` checks a config against the schema of its experiment
(``config.experiment``: ``tts`` or ``sinusoid``): every required key is there,
no key is unknown, each value has its type (int, float, bool, str, tuple) and
its range (step counts >= 1, learning rates > 0, probabilities in [0, 1],
known method, filter, corpus and model names). ``metatts.experiments.run``
calls it first, so a bad override such as ``--config.train.num_steps=-5``
stops before the workdir is touched. Every failure is one line naming the key,
the bad value and the fix::

  config.train.num_steps=-5: must be an integer >= 1; set
  --config.train.num_steps to a positive number.

(one line in the real message). The tts schema's types are those of
``metatts.experiments.config.default_config()``; ``tests/
test_config_validation.py`` checks that every key of it has a rule here and
that every shipped config in ``experiments/configs`` passes.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from metatts import records

# Sections of a tts config whose keys are free-form (fields of a model,
# FeatureConfig, SynthConfig, learner names); their values are checked by
# the code that consumes them.
_FREEFORM = ("model", "data.features", "data.synth_overrides",
             "train.inner_steps")


class ConfigError(ValueError):
  """A config failed its schema; ``problems`` holds one line per failure."""

  def __init__(self, problems: Sequence[str]):
    self.problems = list(problems)
    super().__init__("\n".join(self.problems))


def _fmt(value: Any) -> str:
  if hasattr(value, "to_dict"):  # a ConfigDict: on one line
    value = value.to_dict()
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(_fmt(v) for v in value) + (
        "," if len(value) == 1 else "") + ")"
  return repr(value)


_is_int = records.is_int


def _is_number(v: Any) -> bool:
  """A finite real number (config values: no NaN or infinity)."""
  return records.is_number(v) and math.isfinite(float(v))


# ----------------------------------------------------------------------------
# Rules: ``problem(value) -> None | "must be ..."`` and the fix's wording.


@dataclasses.dataclass(frozen=True)
class Int:
  """An integer in ``[lo, hi]`` (``None``: no bound)."""

  lo: Optional[int] = 0
  hi: Optional[int] = None

  def problem(self, v):
    if (not _is_int(v) or (self.lo is not None and v < self.lo)
        or (self.hi is not None and v > self.hi)):
      return ("must be an integer " + self._range()).strip()
    return None

  def _range(self):
    if self.lo is None:
      return ""
    if self.hi is not None:
      return f"from {self.lo} to {self.hi}"
    return f">= {self.lo}"

  def fix(self):
    if self.lo is None:
      return "an integer"
    if self.hi is not None:
      return f"an integer from {self.lo} to {self.hi}"
    return {1: "a positive number", 0: "0 or a positive number"}.get(
        self.lo, f"a number >= {self.lo}")


@dataclasses.dataclass(frozen=True)
class Float:
  """A finite number ``> lo`` (``open_lo``) or ``>= lo``, and ``<= hi``
  (``< hi`` with ``open_hi``)."""

  lo: float = 0.0
  open_lo: bool = True
  hi: Optional[float] = None
  open_hi: bool = False

  def problem(self, v):
    bad = not _is_number(v) or (v <= self.lo if self.open_lo else v < self.lo)
    if not bad and self.hi is not None:
      bad = v >= self.hi if self.open_hi else v > self.hi
    if bad:
      return "must be a number " + self._range()
    return None

  def _range(self):
    if self.lo == -math.inf:
      return "(finite)"
    low = f"{'>' if self.open_lo else '>='} {self.lo:g}"
    if self.hi is None:
      return low
    return low + f" and {'<' if self.open_hi else '<='} {self.hi:g}"

  def fix(self):
    if self.hi is not None:
      return f"a number {self._range()}"
    if self.lo == 0:
      return "a positive number" if self.open_lo else "0 or a positive number"
    return f"a number {self._range()}"


@dataclasses.dataclass(frozen=True)
class Bool:

  def problem(self, v):
    return None if isinstance(v, bool) else "must be True or False"

  def fix(self):
    return "True or False"


@dataclasses.dataclass(frozen=True)
class Str:
  """A string; with ``choices``, one of them; else non-empty unless
  ``empty``."""

  choices: Optional[Callable[[], Sequence[str]]] = None
  empty: bool = False

  def problem(self, v):
    if self.choices is not None:
      choices = list(self.choices())
      if v not in choices:
        return f"must be one of {choices}"
      return None
    if not isinstance(v, str) or (not self.empty and not v.strip()):
      return "must be a string" + ("" if self.empty else " (not empty)")
    return None

  def fix(self):
    return "one of them" if self.choices is not None else "a string"


@dataclasses.dataclass(frozen=True)
class Ints:
  """A tuple of integers ``>= lo``, at least ``min_len`` of them."""

  lo: int = 0
  hi: Optional[int] = None
  min_len: int = 1
  example: str = "(1,2)"

  def problem(self, v):
    ok = (isinstance(v, (tuple, list)) and len(v) >= self.min_len
          and all(_is_int(x) and x >= self.lo
                  and (self.hi is None or x <= self.hi) for x in v))
    if ok:
      return None
    what = "a non-empty tuple of" if self.min_len <= 1 else (
        f"a tuple of at least {self.min_len}")
    bound = f">= {self.lo}" if self.hi is None else (
        f"from {self.lo} to {self.hi}")
    return f"must be {what} integers {bound}"

  def fix(self):
    return f"e.g. '{self.example}'"


@dataclasses.dataclass(frozen=True)
class Strs:
  """A tuple of distinct strings (each one of ``choices`` if given)."""

  choices: Optional[Callable[[], Sequence[str]]] = None
  min_len: int = 0
  example: str = "()"

  def problem(self, v):
    if not isinstance(v, (tuple, list)) or not all(isinstance(x, str)
                                                   for x in v):
      return "must be a tuple of strings"
    if len(v) < self.min_len:
      return "must name at least one"
    if len(set(v)) != len(v):
      return "must not repeat a name"
    if self.choices is not None:
      choices = list(self.choices())
      unknown = [x for x in v if x not in choices]
      if unknown:
        return f"has unknown {unknown}; each must be one of {choices}"
    return None

  def fix(self):
    return f"a tuple such as '{self.example}'"


@dataclasses.dataclass(frozen=True)
class Filter:
  """A parameter-filter name (``metatts.functional.filter_for``)."""

  def problem(self, v):
    from metatts import functional  # pylint: disable=g-import-not-at-top
    try:
      functional.filter_for(v)
    except ValueError:
      return (f"must be one of {list(functional.FILTER_NAMES)} or a "
              "'+'-joined combination")
    return None

  def fix(self):
    return "e.g. 'speaker+decoder'"


@dataclasses.dataclass(frozen=True)
class Mapping_:
  """A dict of free-form keys, checked by ``check(value) -> message``."""

  check: Optional[Callable[[Any], Optional[str]]] = None
  fix_text: str = "a dict of valid fields"

  def problem(self, v):
    if not hasattr(v, "items"):
      return "must be a dict"
    return self.check(v) if self.check is not None else None

  def fix(self):
    return self.fix_text


# ----------------------------------------------------------------------------
# The walk.


def _line(key: str, value: Any, must: str, fix: str) -> str:
  return f"config.{key}={_fmt(value)}: {must}; set --config.{key} to {fix}."


def _lookup(config, key: str):
  node = config
  for part in key.split("."):
    if not hasattr(node, "items") or part not in node:
      return False, None
    node = node[part]
  return True, node


def _leaf_keys(config, prefix: str = "") -> List[str]:
  out = []
  for k, v in config.items():
    key = prefix + k
    if hasattr(v, "items") and key not in _FREEFORM:
      out.extend(_leaf_keys(v, key + "."))
    else:
      out.append(key)
  return out


def _type_rule(default: Any):
  """A type-only rule from a default value (a key without a range rule)."""
  if isinstance(default, bool):
    return Bool()
  if _is_int(default):
    return Int(None)
  if isinstance(default, numbers.Real):
    return Float(-math.inf, open_lo=True)
  if isinstance(default, str):
    return Str(empty=True)
  if isinstance(default, (tuple, list)):
    return _Tuple()
  return Mapping_()


@dataclasses.dataclass(frozen=True)
class _Tuple:

  def problem(self, v):
    return None if isinstance(v, (tuple, list)) else "must be a tuple"

  def fix(self):
    return "a tuple, e.g. '(1,2)'"


def _check_rules(config, schema: Mapping[str, Any], experiment: str,
                 start: str) -> List[str]:
  """Required keys, unknown keys, and each key's rule (``schema``)."""
  problems = []
  if not hasattr(config, "items"):
    return [f"config has type {type(config).__name__}; pass an "
            "ml_collections.ConfigDict (e.g. from get_config())."]
  for key in _leaf_keys(config):
    if key not in schema:
      section = key.rpartition(".")[0]
      siblings = sorted(k.rpartition(".")[2] for k in schema
                        if k.rpartition(".")[0] == section)
      problems.append(
          f"config.{key} is not a key of the {experiment} config; remove it "
          f"or fix its spelling (keys of config{'.' + section if section else ''}"
          f": {', '.join(siblings)}).")
  for key, rule in schema.items():
    present, value = _lookup(config, key)
    if not present:
      problems.append(
          f"config.{key} is missing; add it (start from {start}).")
      continue
    must = rule.problem(value)
    if must:
      problems.append(_line(key, value, must, rule.fix()))
  return problems


# ----------------------------------------------------------------------------
# tts.


def _tts_experiment():
  # "vocoder" runs the tts config's data and vocoder stages only.
  return ["tts", "vocoder"]


def _sinusoid_experiment():
  return ["sinusoid"]


def _optimizers():
  from metatts.training import export  # pylint: disable=g-import-not-at-top
  return list(export.OPTIMIZERS)


def _tts_method_names():
  from metatts.experiments import tts  # pylint: disable=g-import-not-at-top
  return sorted(tts.METHODS)


def _learner_names():
  from metatts import methods  # pylint: disable=g-import-not-at-top
  return sorted({m.learner_name for m in methods.METHODS.values()
                 if m.learner_name})


def _metric_names():
  # metatts.evaluation.pipeline.ALL_METRICS, without importing the
  # evaluation stack (tests/test_config_validation.py checks they agree).
  return ["secs", "eer", "mcd", "wer", "f0", "dnsmos"]


def _reptile_outers():
  return ("sgd", "adam")


def _task_maps():
  return ("vmap", "map")


def _speaker_encoder_sizes():
  from metatts.models import speaker_encoder  # pylint: disable=g-import-not-at-top
  return list(speaker_encoder._SIZES)  # pylint: disable=protected-access


def _vocoder_models():
  return ["nsf", "wavenet"]


def _vocoder_sizes():
  from metatts.models import nsf  # pylint: disable=g-import-not-at-top
  from metatts.models import wavenet  # pylint: disable=g-import-not-at-top
  # Both vocoders name their sizes tiny / base / full.
  return sorted(set(wavenet._SIZES) | set(nsf._SIZES))  # pylint: disable=protected-access


def _corpora():
  from metatts.experiments.config import CORPORA  # pylint: disable=g-import-not-at-top
  return list(CORPORA)


def _synth_presets():
  from metatts.data import synth  # pylint: disable=g-import-not-at-top
  return sorted(synth.PRESETS)


def _one_line(e: Exception) -> str:
  return " ".join(str(e).split()).rstrip(".")


def _check_model(v) -> Optional[str]:
  from metatts import models  # pylint: disable=g-import-not-at-top
  fields = dict(v.to_dict() if hasattr(v, "to_dict") else v)
  name = fields.pop("name", "tacotron")
  if name not in models.MODELS or name in ("wavenet", "speaker_encoder"):
    return ("has an unknown acoustic model name; use 'tacotron' or "
            "'duration_tacotron'")
  try:
    models.model_config(name, fields)
  except (ValueError, TypeError) as e:
    return f"is not a valid {name} config ({_one_line(e)})"
  return None


def _check_features(v) -> Optional[str]:
  from metatts.data import features  # pylint: disable=g-import-not-at-top
  try:
    features.FeatureConfig.from_config(v)
  except (ValueError, TypeError) as e:
    return f"is not a valid FeatureConfig ({_one_line(e)})"
  return None


def _check_inner_steps(v) -> Optional[str]:
  known = _learner_names()
  unknown = sorted(k for k in v.keys() if k not in known)
  if unknown:
    return f"has unknown learner(s) {unknown}; keys must be among {known}"
  bad = sorted(k for k, n in v.items() if not _is_int(n) or n < 1)
  if bad:
    return f"must map each learner to an integer >= 1 (not {bad})"
  return None


def tts_rules() -> Dict[str, Any]:
  """``{key: rule}`` for every key of a tts config (``default_config()``)."""
  from metatts import api  # pylint: disable=g-import-not-at-top
  steps_bound = int(api.MAX_STEPS)
  return {
      "experiment": Str(_tts_experiment),
      "name": Str(),
      "seed": Int(0),
      "progress": Bool(),
      "expected_minutes": Float(0.0, open_lo=False),
      "hardware": Str(empty=True),
      "data.corpus": Str(_corpora),
      "data.root": Str(),
      "data.synth_preset": Str(_synth_presets),
      "data.synth_overrides": Mapping_(fix_text="SynthConfig fields"),
      "data.synth_seed": Int(0),
      "data.cache_dir": Str(),
      "data.features": Mapping_(_check_features,
                                "FeatureConfig fields, e.g. {'n_mels': 80}"),
      "data.max_tokens": Int(1),
      "data.max_frames": Int(16),
      "data.num_buckets": Int(1),
      "data.max_train_speakers": Int(0),
      "data.heldout_seen": Strs(example="('p225','p226')"),
      "data.heldout_unseen": Strs(example="('p225','p226')"),
      "model": Mapping_(_check_model,
                        "fields of the model, e.g. {'name': 'tacotron', "
                        "'size': 'tiny'}"),
      "methods": Strs(_tts_method_names, min_len=1,
                      example="(\"transfer\",\"meta-fomaml\")"),
      "train.num_steps": Int(1),
      "train.equal_budget": Bool(),
      "train.num_tasks": Int(1),
      "train.num_support": Int(1),
      "train.num_query": Int(1),
      "train.filter": Filter(),
      "train.inner_lr": Float(0.0),
      "train.outer_lr": Float(0.0),
      "train.meta_outer_lr": Float(0.0, open_lo=False),
      "train.inner_steps": Mapping_(_check_inner_steps,
                                    "e.g. {'fomaml': 1, 'reptile': 3}"),
      "train.anchor_weight": Float(0.0, open_lo=False),
      "train.meta_clip_norm": Float(0.0, open_lo=False),
      "train.reptile_epsilon": Float(0.0, hi=1.0),
      "train.reptile_outer": Str(_reptile_outers),
      "train.task_map": Str(_task_maps),
      "train.imaml_lam": Float(0.0),
      "train.imaml_cg_steps": Int(1),
      "train.multitask_weight": Float(0.0, open_lo=False),
      "train.multitask_l2": Float(0.0, open_lo=False),
      "train.speaker_encoder_size": Str(_speaker_encoder_sizes),
      "train.init_from": Str(empty=True),
      "train.init_from_fraction": Float(0.0, open_lo=False, hi=1.0,
                                        open_hi=True),
      "train.workers": Int(1),
      "train.log_every": Int(1),
      "train.checkpoint_every": Int(1),
      "train.max_to_keep": Int(1),
      "train.max_skipped": Int(0),
      "adapt.enabled": Bool(),
      "adapt.scratch": Bool(),
      "adapt.filter": Filter(),
      "adapt.optimizer": Str(_optimizers),
      "adapt.lr": Float(0.0),
      "adapt.steps": Ints(0, steps_bound, example="(0,5,20,100)"),
      "adapt.shots": Ints(1, example="(1,5)"),
      "adapt.default_steps": Int(0, steps_bound),
      "adapt.num_eval": Int(1),
      "adapt.max_speakers": Int(1),
      "adapt.workers": Int(1),
      "adapt.seed": Int(0),
      "adapt.griffin_lim_iters": Int(1),
      "eval.enabled": Bool(),
      "eval.metrics": Strs(_metric_names, min_len=1,
                           example="(\"secs\",\"eer\")"),
      "eval.griffin_lim": Bool(),
      "eval.workers": Int(0),
      "eval.wer_steps": Ints(0, steps_bound, min_len=0, example="(0,5,100)"),
      "vocoder.enabled": Bool(),
      "vocoder.method": Str(_tts_method_names),
      "vocoder.model": Str(_vocoder_models),
      "vocoder.init_from": Str(empty=True),
      "vocoder.size": Str(_vocoder_sizes),
      "vocoder.upsample_factors": Ints(1, example="(10,20)"),
      "vocoder.num_steps": Int(1),
      "vocoder.num_tasks": Int(1),
      "vocoder.num_support": Int(1),
      "vocoder.num_query": Int(1),
      "vocoder.window_frames": Int(1),
      "vocoder.inner_lr": Float(0.0),
      "vocoder.inner_steps": Int(1),
      "vocoder.outer_lr": Float(0.0),
      "vocoder.max_speakers": Int(0),
      "vocoder.clips_per_speaker": Int(1),
      "vocoder.eval_speakers": Int(1),
      "vocoder.eval_clips": Int(1),
      "vocoder.heldout_resample": Bool(),
      "vocoder.f0_steps": Int(0),
      "vocoder.f0_window_frames": Int(1),
      "vocoder.f0_batch": Int(1),
      "vocoder.f0_lr": Float(0.0),
  }


def _tts_cross_checks(config, workdir: Optional[str]) -> List[str]:
  """Checks that involve several keys (only once each key is valid)."""
  problems = []
  d, t = config.data, config.train
  methods = tuple(config.methods)
  # The synthetic corpus: the preset with its overrides.
  if d.corpus == "synth" and d.synth_overrides:
    from metatts.data import synth  # pylint: disable=g-import-not-at-top
    try:
      merged = dict(dataclasses.asdict(synth.get_config(d.synth_preset)),
                    **d.synth_overrides.to_dict())
      synth.get_config(merged)
    except (ValueError, TypeError) as e:
      problems.append(_line(
          "data.synth_overrides", d.synth_overrides.to_dict(),
          f"is not valid for preset {d.synth_preset!r} ({_one_line(e)})",
          "fields of metatts.data.synth.SynthConfig"))
  both = sorted(set(d.heldout_seen) & set(d.heldout_unseen))
  if both:
    problems.append(_line("data.heldout_seen", tuple(d.heldout_seen),
                          f"shares {both} with config.data.heldout_unseen",
                          "speakers that are in only one of the two"))
  # init_from: "", a method of this run, or an export folder (a path, or a
  # folder of the workdir as metatts.methods.base.Method.initial_params
  # resolves it).
  src = t.init_from
  if src and src not in methods:
    from metatts import methods as methods_lib  # pylint: disable=g-import-not-at-top
    places = [os.path.expanduser(src)]
    if workdir and os.path.sep not in src:
      places.append(os.path.join(workdir, src))
    if not any(os.path.isdir(p) for p in places):
      if src in methods_lib.METHODS:
        problems.append(_line(
            "train.init_from", src,
            f"names method {src!r}, which config.methods={methods} does not "
            "train (and the workdir has no export of it)",
            f"'' or a method of config.methods, or add {src!r} to "
            "config.methods"))
      else:
        problems.append(_line(
            "train.init_from", src,
            "is neither a method of config.methods nor an existing export "
            "folder", "'' (random init), a method of config.methods or the "
            "path of an export folder (WORKDIR/<method>/model)"))
  # The vocoder's upsampling must turn mel frames into samples.
  if config.vocoder.enabled:
    from metatts.data import features  # pylint: disable=g-import-not-at-top
    hop = features.FeatureConfig.from_config(d.features).hop_length
    product = math.prod(int(f) for f in config.vocoder.upsample_factors)
    if product != hop:
      problems.append(_line(
          "vocoder.upsample_factors", tuple(config.vocoder.upsample_factors),
          f"must multiply to the features' hop_length {hop} (not {product})",
          f"factors whose product is {hop}"))
  return problems


def tts_schema() -> Dict[str, Any]:
  """``{key: rule}`` for every key of ``default_config()``: its rule in
  :func:`tts_rules`, else a check of the default value's type."""
  from metatts.experiments.config import default_config  # pylint: disable=g-import-not-at-top
  defaults = default_config()
  rules = tts_rules()
  return {key: rules.get(key) or _type_rule(_lookup(defaults, key)[1])
          for key in _leaf_keys(defaults)}


def validate_tts(config, workdir: Optional[str] = None) -> None:
  """Checks a tts config; raises ``ConfigError`` listing every failure."""
  problems = _check_rules(
      config, tts_schema(), "tts",
      "metatts.experiments.config.default_config()")
  if not problems:
    problems = _tts_cross_checks(config, workdir)
  if problems:
    raise ConfigError(problems)


# ----------------------------------------------------------------------------
# sinusoid.


def _sinusoid_methods():
  from metatts.experiments import sinusoid  # pylint: disable=g-import-not-at-top
  return sorted(sinusoid.METHODS)


def sinusoid_rules() -> Dict[str, Any]:
  """``{key: rule}`` for every key of ``experiments/configs/sinusoid.py``."""
  return {
      "experiment": Str(_sinusoid_experiment),
      "method": Str(_sinusoid_methods),
      "size": Str(),
      "seed": Int(0),
      "eval_seed": Int(0),
      "num_support": Int(1),
      "num_query": Int(1),
      "num_eval_query": Int(1),
      "layer_sizes": Ints(1, min_len=2, example="(1,40,40,1)"),
      "inner_lr": Float(0.0),
      "num_inner_steps": Int(1),
      "outer_lr": Float(0.0),
      "imaml_lam": Float(0.0),
      "imaml_cg_steps": Int(1),
      "max_to_keep": Int(1),
      "max_skipped": Int(0),
      "progress": Bool(),
      "num_steps": Int(1),
      "meta_batch_size": Int(1),
      # The 95% interval uses the sample standard deviation: >= 2 tasks.
      "num_eval_tasks": Int(2),
      "log_every": Int(1),
      "eval_every": Int(0),
      "checkpoint_every": Int(1),
  }


def validate_sinusoid(config, workdir: Optional[str] = None) -> None:
  """Checks a sinusoid config; raises ``ConfigError`` listing every failure."""
  del workdir
  problems = _check_rules(config, sinusoid_rules(), "sinusoid",
                          "experiments/configs/sinusoid.py's get_config()")
  if not problems:
    sizes = tuple(config.layer_sizes)
    if sizes[0] != 1 or sizes[-1] != 1:
      problems.append(_line(
          "layer_sizes", sizes,
          "must start and end with 1 (x and y are scalars)",
          "e.g. '(1,40,40,1)'"))
  if problems:
    raise ConfigError(problems)


VALIDATORS: Dict[str, Callable[..., None]] = {
    "sinusoid": validate_sinusoid,
    "tts": validate_tts,
    "vocoder": validate_tts,  # a tts config whose vocoder stage runs alone
}


def validate(config, workdir: Optional[str] = None) -> None:
  """Checks ``config`` against its experiment's schema.

  Args:
    config: an experiment config (``ml_collections.ConfigDict``).
    workdir: the run's output folder, if known (``train.init_from`` may name
      an export an earlier run left there); nothing is written to it.

  Raises:
    ConfigError: (a ``ValueError``) with one line per failure, each naming
      the key, the bad value and the fix.
  """
  name = config.get("experiment") if hasattr(config, "get") else None
  if name not in VALIDATORS:
    raise ConfigError([
        f"config.experiment={name!r}: must be one of {sorted(VALIDATORS)}; "
        "set it in the config's get_config()."])
  VALIDATORS[name](config, workdir)


__all__ = ["ConfigError", "VALIDATORS", "sinusoid_rules", "tts_rules",
           "tts_schema",
           "validate", "validate_sinusoid", "validate_tts"]
