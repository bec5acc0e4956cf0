"""Exported models: what a finished training run hands to ``metatts.api``.

A training run writes, once training ends, a self-describing folder::

  <dir>/model.json   {"format": "metatts-model", "version": 1, "method": ...,
                      "model": "tacotron" | "wavenet", "model_config": {...},
                      "feature_config": {...}, "symbols": "characters",
                      "speakers": [train speaker ids in table order],
                      "adapt": {"filter": ..., "optimizer": "sgd" | "adam",
                                "lr": ..., "default_steps": ...,
                                "speaker_slot": ...},
                      "learned_lrs": bool, "has_extra": bool, ...}
  <dir>/params/      Orbax StandardCheckpointer: the ``nnx.Param`` pytree (a
                     pure dict, ``metatts.functional.split``)
  <dir>/extra/       optional Orbax tree of meta-learned extras (e.g. the
                     per-parameter inner learning rates of Meta-SGD)

``load_exported`` rebuilds the NNX model from ``model_config``, restores the
parameters into the abstract tree of that model (so a shape or structure
mismatch is an error, never a silent reinterpretation) and merges them.

The ``adapt`` entry is the *one* test-time adaptation protocol of this run
(parameter filter, inner optimizer, learning rate, default number of steps
and the embedding row used for a new voice); the evaluation and the library
API both use it, so every method is adapted the same way.

Writing is atomic (``metatts.atomic``): the folder is assembled in a hidden
sibling and renamed into place, so a crash or ``kill -9`` never leaves a
half-written export, and an older export survives until the new one is
complete. ``model.json`` is validated on write and on read
(:func:`validate_model_info`: required keys, types, ranges such as the
speaker slot within the speaker table); a failure is one line naming the
file, the key and the fix. Checkpoints use Orbax only, never pickle.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from metatts import atomic
from metatts import records

PyTree = Any

FORMAT = "metatts-model"
VERSION = 1
MODEL_JSON = "model.json"
PARAMS_DIR = "params"
EXTRA_DIR = "extra"
ADAPT_KEYS = ("filter", "optimizer", "lr", "default_steps", "speaker_slot")
OPTIMIZERS = ("sgd", "adam")

class ExportError(ValueError):
  """A missing, partial or inconsistent export folder."""


def _fix_hint(directory: str) -> str:
  if os.path.isfile(os.path.join(directory, "voice.json")):
    return (f"{directory} is a saved voice: adapt and save it again "
            "(voice.save(DIR) or python -m metatts adapt ... --out DIR).")
  return (f"Re-run training (experiments/main.py with the same --workdir "
          f"finishes and exports) or point at WORKDIR/<method>/model; got "
          f"{directory}.")


def config_to_dict(config: Any) -> Dict[str, Any]:
  """A model/feature config (dataclass, NamedTuple, ConfigDict) as JSON data."""
  if dataclasses.is_dataclass(config):
    d = dataclasses.asdict(config)
  elif hasattr(config, "_asdict"):
    d = dict(config._asdict())
  elif hasattr(config, "to_dict"):
    d = config.to_dict()
  elif isinstance(config, Mapping):
    d = dict(config)
  else:
    raise ValueError(
        f"Cannot serialize a config of type {type(config).__name__}; pass a "
        "dataclass, NamedTuple, dict or ml_collections.ConfigDict.")
  return json.loads(json.dumps(d, default=_json_default))


def _json_default(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  if isinstance(x, tuple):
    return list(x)
  raise TypeError(f"not JSON serializable: {type(x).__name__}")


def build_from_config(model_name: str, model_config: Mapping[str, Any],
                      seed: int = 0, abstract: bool = False):
  """Builds an NNX model of ``model_name`` from a ``config_to_dict`` dict.

  Args:
    model_name: a key of ``metatts.models.MODELS`` (the one model registry).
    model_config: every field of the model's config (from ``model.json``).
    seed: initialization seed (the values are overwritten on load).
    abstract: build under ``nnx.eval_shape``: every array is a
      ``jax.ShapeDtypeStruct`` and nothing is computed (building a model
      eagerly dispatches thousands of small initializer ops).

  Returns:
    ``(model, config)``.

  Raises:
    ValueError: unknown model name or config field.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from metatts import models  # pylint: disable=g-import-not-at-top
  if model_name not in models.MODELS:
    raise ValueError(f"Unknown exported model {model_name!r}; this version "
                     f"of metatts can load {sorted(models.MODELS)} "
                     "(metatts.models.MODELS).")
  fields = {k: (tuple(v) if isinstance(v, list) else v)
            for k, v in dict(model_config).items()}
  config = models.model_config(model_name, fields)
  make = lambda: models.build_model(model_name, config, nnx.Rngs(seed))  # noqa: E731
  if abstract:
    return nnx.eval_shape(make), config
  return make(), config


_ABSTRACT_SPLITS: Dict[Any, Any] = {}  # (model, config JSON, seed) -> split


def _abstract_split(model_name: str, model_config: Mapping[str, Any],
                    seed: int = 0):
  """``functional.split`` of ``build_from_config(..., abstract=True)``.

  Memoized per process: ``python -m metatts adapt`` builds the same
  abstract model to load the export and again to save the voice, and each
  ``nnx.eval_shape`` build took 0.6-1.2 s on the busy 2-core CPU
  (docs/benchmarks.md). Every call gets its own copy of the parameter tree.

  Returns:
    ``(graphdef, params, rest)``: the graph, a pure dict of
    ``jax.ShapeDtypeStruct`` and the non-parameter state.
  """
  from metatts import functional  # pylint: disable=g-import-not-at-top
  key = (model_name, json.dumps(dict(model_config), sort_keys=True,
                                default=_json_default), seed)
  if key not in _ABSTRACT_SPLITS:
    model, _ = build_from_config(model_name, model_config, seed,
                                 abstract=True)
    graphdef, params, rest = functional.split(model)
    params = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), params)
    if len(_ABSTRACT_SPLITS) >= 8:
      _ABSTRACT_SPLITS.clear()
    _ABSTRACT_SPLITS[key] = (graphdef, params, rest)
  graphdef, params, rest = _ABSTRACT_SPLITS[key]
  return graphdef, jax.tree.map(lambda x: x, params), rest


def _check_adapt(adapt: Mapping[str, Any]) -> Dict[str, Any]:
  missing = [k for k in ADAPT_KEYS if k not in adapt]
  if missing:
    raise ValueError(f"export_model: adapt={dict(adapt)} lacks {missing}; "
                     f"give all of {list(ADAPT_KEYS)}.")
  out = dict(adapt)
  if out["optimizer"] not in OPTIMIZERS:
    raise ValueError(f"export_model: adapt['optimizer']={out['optimizer']!r}"
                     f"; use one of {list(OPTIMIZERS)}.")
  out["lr"] = float(out["lr"])
  out["default_steps"] = int(out["default_steps"])
  out["speaker_slot"] = int(out["speaker_slot"])
  return out


def _save_tree(path: str, tree: PyTree) -> None:
  tree = jax.tree.map(np.asarray, tree)
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(path, tree)
  ckptr.wait_until_finished()
  ckptr.close()


def params_digest(*trees: Optional[PyTree]) -> str:
  """SHA-256 of parameter trees: every leaf's path, dtype, shape and bytes.

  Written into ``model.json`` (``params_sha256``) so that anything keyed on
  the export's ``model.json`` (the adaptation protocol's samples,
  ``metatts.experiments.adaptation.fingerprint``) changes when the weights
  do, not only when the config does: a retrained model with the same config
  used to reuse the older model's samples.
  """
  import hashlib  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  for tree in trees:
    if tree is None:
      h.update(b"none")
      continue
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      a = np.ascontiguousarray(np.asarray(leaf))
      h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
      h.update(a.tobytes())
  return h.hexdigest()


def export_model(directory: str, *, method: str, model_name: str,
                 model_config: Any, params: PyTree, feature_config: Any,
                 symbols: str, speakers, adapt: Mapping[str, Any],
                 extra: Optional[PyTree] = None,
                 info: Optional[Mapping[str, Any]] = None,
                 trees: Optional[Mapping[str, PyTree]] = None) -> str:
  """Writes an export folder (atomically replacing an older one).

  The folder is written into a hidden sibling and renamed into place
  (``metatts.atomic.staged_dir``): an older export at ``directory`` survives
  any failure, a ``kill -9`` included.

  Args:
    directory: destination, usually ``WORKDIR/<method>/model``.
    method: method key ('meta-maml', 'transfer', ...).
    model_name: a key of ``metatts.models.MODELS`` ('tacotron', 'wavenet',
      ...); ``load_exported`` rebuilds the model from it.
    model_config: the model's config object (or dict of all its fields).
    params: the parameter pytree (pure dict from ``functional.split``).
    feature_config: ``metatts.data.features.FeatureConfig`` (or dict).
    symbols: 'characters' or 'phonemes'.
    speakers: training speaker ids in embedding-table order.
    adapt: the test-time protocol, keys ``ADAPT_KEYS``.
    extra: optional pytree of meta-learned extras (e.g. the Meta-SGD inner
      learning rates, ``MetaState.extra``); stored and loaded back as the
      list of its leaves in flatten order.
    info: optional JSON-able additions to ``model.json``.
    trees: optional further Orbax trees saved as ``directory/<name>/`` in
      the same atomic write (e.g. a zeroshot export's ``speaker_encoder``).

  Returns:
    The absolute path of the export.

  Raises:
    ValueError: bad ``adapt`` or parameters that do not fit ``model_config``.
  """
  directory = os.path.abspath(directory)
  if trees:
    info = dict(info or {}, trees_sha256=params_digest(
        *(trees[name] for name in sorted(trees))))
  with atomic.staged_dir(directory) as tmp:
    write_export(tmp, method=method, model_name=model_name,
                 model_config=model_config, params=params,
                 feature_config=feature_config, symbols=symbols,
                 speakers=speakers, adapt=adapt, extra=extra, info=info,
                 where=directory)
    for name, tree in (trees or {}).items():
      _save_tree(os.path.join(tmp, name), tree)
  return directory


def write_export(folder: str, *, method: str, model_name: str,
                 model_config: Any, params: PyTree, feature_config: Any,
                 symbols: str, speakers, adapt: Mapping[str, Any],
                 extra: Optional[PyTree] = None,
                 info: Optional[Mapping[str, Any]] = None,
                 where: Optional[str] = None) -> None:
  """Writes an export's files into an existing empty ``folder`` (not atomic).

  The building block of :func:`export_model` and ``metatts.api.Voice.save``,
  which call it on the temporary folder of ``metatts.atomic.staged_dir``.
  Arguments as in :func:`export_model`; ``where`` names the destination in
  error messages.
  """
  where = where or folder
  cfg = config_to_dict(model_config)
  _, expected, _ = _abstract_split(model_name, cfg)
  _check_structure(expected, params, f"export_model({where})")
  has_extra = extra is not None and bool(jax.tree_util.tree_leaves(extra))
  meta_info = {
      "format": FORMAT, "version": VERSION, "method": str(method),
      "model": model_name, "model_config": cfg,
      "feature_config": config_to_dict(feature_config),
      "symbols": str(symbols), "speakers": [str(s) for s in speakers],
      "adapt": _check_adapt(adapt), "learned_lrs": has_extra,
      "has_extra": has_extra,
      "params_sha256": params_digest(params, extra if has_extra else None),
  }
  if info:
    meta_info.update(json.loads(json.dumps(dict(info),
                                           default=_json_default)))
  validate_model_info(meta_info, f"export_model({where})", written=True)
  _save_tree(os.path.join(folder, PARAMS_DIR), params)
  if has_extra:
    # Stored as its flat list of leaves (the form of ``MetaState.extra``
    # for Meta-SGD: one array per adapted leaf, in flatten order); Orbax
    # would otherwise turn list indices into string keys.
    leaves = jax.tree_util.tree_leaves(extra)
    _save_tree(os.path.join(folder, EXTRA_DIR),
               {f"{i:05d}": x for i, x in enumerate(leaves)})
  atomic.write_text(os.path.join(folder, MODEL_JSON),
                    json.dumps(meta_info, indent=1, sort_keys=True))


def _check_structure(expected: PyTree, got: PyTree, where: str) -> None:
  e_leaves, e_def = jax.tree_util.tree_flatten(expected)
  g_leaves, g_def = jax.tree_util.tree_flatten(got)
  if e_def != g_def:
    raise ValueError(
        f"{where}: the parameter tree does not match the model built from "
        f"model_config (expected {e_def}, got {g_def}). Export the params of "
        "the model that model_config describes.")
  for path_leaf, g in zip(jax.tree_util.tree_leaves_with_path(expected),
                          g_leaves):
    path, e = path_leaf
    if np.shape(e) != np.shape(g):
      raise ValueError(
          f"{where}: parameter {jax.tree_util.keystr(path)} has shape "
          f"{np.shape(g)}, but model_config gives {np.shape(e)}.")


def validate_model_info(info: Any, where: str, written: bool = False) -> None:
  """Checks a ``model.json`` dict: required keys, types and ranges.

  Args:
    info: the parsed ``model.json``.
    where: the file (or call) named in the message.
    written: the dict is about to be written by :func:`export_model` (the
      fix is then to pass other arguments, not to edit the file).

  Raises:
    ExportError: one line naming ``where``, the key and the fix.
  """
  fix = ("pass a valid value to export_model" if written else
         "correct it in the file or re-export the model (re-run training)")

  bad = records.one_line_error(where, ExportError, fix)
  records.check_header(info, bad, fmt=FORMAT, version=VERSION,
                       what="a metatts model export",
                       redo="re-export the model",
                       format_fix=("point at an export folder such as "
                                   "WORKDIR/<method>/model"))
  kinds = {"method": str, "model": str, "model_config": dict,
           "feature_config": dict, "symbols": str, "speakers": list,
           "adapt": dict}
  for key, kind in kinds.items():
    if key not in info:
      bad(key, "is missing (a required key)")
    if not isinstance(info[key], kind):
      bad(key, f"is {info[key]!r}, not a JSON "
          f"{'object' if kind is dict else kind.__name__}")
  if not all(isinstance(s, str) for s in info["speakers"]):
    bad("speakers", "must be a list of speaker-id strings")
  for key in ("learned_lrs", "has_extra"):
    if key in info and not isinstance(info[key], bool):
      bad(key, f"is {info[key]!r}, not true or false")
  cfg = info["model_config"]
  num_speakers = cfg.get("num_speakers")
  if num_speakers is not None and (not records.is_int(num_speakers)
                                   or num_speakers < 1):
    bad("model_config.num_speakers", f"is {num_speakers!r}, not an integer "
        ">= 1")
  adapt = info["adapt"]
  for key in ADAPT_KEYS:
    if key not in adapt:
      bad(f"adapt.{key}", f"is missing (adapt needs all of "
          f"{list(ADAPT_KEYS)})")
  from metatts import functional  # pylint: disable=g-import-not-at-top
  try:
    functional.filter_for(adapt["filter"])
  except ValueError:
    bad("adapt.filter", f"is {adapt['filter']!r}, not a parameter filter",
        f"use one of {list(functional.FILTER_NAMES)} or a '+'-joined "
        "combination such as 'speaker+decoder'")
  if adapt["optimizer"] not in OPTIMIZERS:
    bad("adapt.optimizer", f"is {adapt['optimizer']!r}",
        f"use one of {list(OPTIMIZERS)}")
  lr = adapt["lr"]
  if not records.is_number(lr) or not np.isfinite(lr) or lr <= 0:
    bad("adapt.lr", f"is {lr!r}, not a finite number > 0",
        "use the inner learning rate of training (typically 0.001-0.1)")
  steps = adapt["default_steps"]
  if not records.is_int(steps) or steps < 0:
    bad("adapt.default_steps", f"is {steps!r}, not an integer >= 0",
        "use e.g. 20")
  slot = adapt["speaker_slot"]
  if not records.is_int(slot) or slot < 0:
    bad("adapt.speaker_slot", f"is {slot!r}, not an integer >= 0")
  if records.is_int(num_speakers) and slot >= num_speakers:
    bad("adapt.speaker_slot", f"is {slot}, outside the speaker table [0, "
        f"{num_speakers}) of model_config.num_speakers",
        f"use a row below {num_speakers} (training reserves the last one, "
        f"{num_speakers - 1}, for new voices) or re-export the model")


def resolve_export_dir(path: str) -> str:
  """Finds the export folder: ``path`` itself or ``path/model``.

  Raises:
    FileNotFoundError: neither holds a ``model.json``.
  """
  path = os.path.abspath(os.path.expanduser(path))
  for cand in (path, os.path.join(path, "model")):
    atomic.recover(cand)  # a save killed between its two renames
    if os.path.isfile(os.path.join(cand, MODEL_JSON)):
      return cand
  raise FileNotFoundError(
      f"No exported model at {path}: {MODEL_JSON} is missing (neither "
      f"{os.path.join(path, MODEL_JSON)} nor "
      f"{os.path.join(path, 'model', MODEL_JSON)} exists). "
      + _fix_hint(path))


def read_model_json(directory: str) -> Dict[str, Any]:
  """Reads and validates ``model.json`` of an export folder."""
  directory = resolve_export_dir(directory)
  path = os.path.join(directory, MODEL_JSON)
  try:
    with open(path, encoding="utf-8") as f:
      info = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ExportError(f"{path} is unreadable ({e}). " + _fix_hint(directory)
                      ) from e
  validate_model_info(info, path)
  return info


def short_reason(error: BaseException, limit: int = 200) -> str:
  """The first line of an Orbax / TensorStore error, without its spec dump."""
  text = str(error).splitlines()[0] if str(error) else ""
  text = text.split(" [tensorstore_spec=")[0].split(" [source locations=")[0]
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _is_closed_loop_report(unraisable) -> bool:
  """Whether an unraisable-exception report is a late TensorStore callback
  into the event loop of a restore that already failed."""
  exc = unraisable.exc_value
  if not (isinstance(exc, RuntimeError) and
          str(exc) == "Event loop is closed"):
    return False
  tb = unraisable.exc_traceback
  while tb is not None:
    if tb.tb_frame.f_code.co_name == "call_soon_threadsafe":
      return True
    tb = tb.tb_next
  return False


def quiet_closed_loop_reports() -> None:
  """Drops the "Event loop is closed" reports of a failed Orbax restore.

  Orbax runs a restore in a fresh asyncio loop and closes it as soon as one
  array fails to read (``orbax.checkpoint._src.asyncio_utils``). TensorStore
  reads of the other arrays are still in flight; when each finishes, its
  callback calls ``loop.call_soon_threadsafe`` on the closed loop, and the
  ``RuntimeError`` it raises is reported through ``sys.unraisablehook`` (a
  six-line traceback per array, dozens for one damaged export, after the one
  real error). The reads themselves are harmless; this chains a filter in
  front of the current hook that drops exactly those reports (a
  ``RuntimeError('Event loop is closed')`` raised in
  ``call_soon_threadsafe``) and passes every other report on. Installed once,
  before the first restore: installed only after the failure, a callback
  finishing in between still printed its traceback (seen once in about
  three runs of test_damaged_parameters_print_one_line).
  """
  previous = sys.unraisablehook
  if getattr(previous, "_metatts_closed_loop_filter", False):
    return

  def hook(unraisable):
    if not _is_closed_loop_report(unraisable):
      previous(unraisable)

  hook._metatts_closed_loop_filter = True  # pylint: disable=protected-access
  sys.unraisablehook = hook


def load_exported(directory: str, *, seed: int = 0
                  ) -> Tuple[Any, PyTree, Dict[str, Any], Optional[PyTree]]:
  """Loads an export written by :func:`export_model`.

  Args:
    directory: the export folder, or its parent (``WORKDIR/<method>``).
    seed: initialization seed of the skeleton model (values are replaced).

  Returns:
    ``(model, params, meta_info, extra)``: the merged NNX model, its params
    pytree (pure dict), the ``model.json`` dict (with ``"directory"`` added)
    and the extras as a list of arrays (leaves in flatten order; for
    Meta-SGD exactly ``MetaState.extra``) or None.

  Raises:
    FileNotFoundError: no ``model.json`` / parameters (naming the folder and
      the fix).
    ExportError (a ValueError): damaged or inconsistent export.
  """
  from metatts import functional  # pylint: disable=g-import-not-at-top
  directory = resolve_export_dir(directory)
  info = read_model_json(directory)
  params_dir = os.path.join(directory, PARAMS_DIR)
  if not os.path.isdir(params_dir):
    raise FileNotFoundError(f"{params_dir} is missing: the export is partial."
                            " " + _fix_hint(directory))
  graphdef, abstract, rest = _abstract_split(info["model"],
                                             info["model_config"], seed)
  if jax.tree_util.tree_leaves(rest):
    # Non-parameter variables need real values: build the model eagerly.
    model, _ = build_from_config(info["model"], info["model_config"], seed)
    graphdef, _, rest = functional.split(model)
  quiet_closed_loop_reports()  # before: late callbacks can beat the except
  ckptr = ocp.StandardCheckpointer()
  try:
    params = ckptr.restore(params_dir, abstract)
    extra = None
    if info.get("has_extra"):
      extra_dir = os.path.join(directory, EXTRA_DIR)
      if not os.path.isdir(extra_dir):
        raise FileNotFoundError(f"{extra_dir} is missing although model.json "
                                "says has_extra. " + _fix_hint(directory))
      flat = ckptr.restore(extra_dir)
      extra = [np.asarray(flat[k]) for k in sorted(flat)]
  except (FileNotFoundError, ExportError):
    raise
  except Exception as e:  # Orbax raises many types for damaged files.
    raise ExportError(
        f"The parameters in {directory} cannot be restored "
        f"({type(e).__name__}: {short_reason(e)}). "
        + _fix_hint(directory)) from e
  finally:
    ckptr.close()
  model = functional.merge(graphdef, params, rest)
  info = dict(info, directory=directory)
  return model, params, info, extra


__all__ = ["ADAPT_KEYS", "ExportError", "build_from_config", "config_to_dict",
           "export_model", "load_exported", "quiet_closed_loop_reports",
           "read_model_json", "resolve_export_dir", "short_reason",
           "validate_model_info", "write_export"]
