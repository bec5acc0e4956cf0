"""The schema of ``WORKDIR/report/metrics.json`` and its validator.

::

  {
    "<method>": {                      # meta-<algorithm>, transfer, multitask,
      "shots": {                       # zeroshot, scratch
        "<K>": {                       # support clips, e.g. "5"
          "steps": {
            "<S>": {                   # adaptation steps, e.g. "0", "5", "100"
              "secs": float|null,      # mean over speakers of per-speaker mean SECS
              "eer": float|null,       # pooled verification EER, fraction [0, 1]
              "mcd": float|null,       # dB, mean over speakers
              "wer": float|null,       # fraction, mean over speakers
              "f0_rmse": float|null,   # cents, mean over speakers
              "n": int,                # held-out speakers in the cell
              # optional:
              "vde": float|null, "f0_rmse_hz": float|null, "dnsmos": float|null,
              "n_clips": int, "n_failed": int,
              "ci95": {"secs": float|null, ...},   # t-interval half-widths
              "splits": {"heldout_seen": {<cell without splits>},
                         "heldout_unseen": {...}}
            }}}}},
    "reference": {
      "real": {<cell>},          # real vs real (leave-one-out), ground-truth WER
      "griffin_lim": {<cell>},   # Griffin-Lim of the true mel vs real (optional)
      "vocoded": {<cell>},       # samples/vocoded vs real (optional)
      "settings": {...}          # judge settings (rates, order, alpha, ...)
    }
  }

A metric that was not requested or could not be computed is ``null``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

from metatts.evaluation.layout import SPLITS, check_method_key

CELL_REQUIRED = ("secs", "eer", "mcd", "wer", "f0_rmse", "n")
CELL_OPTIONAL_FLOATS = ("vde", "f0_rmse_hz", "dnsmos")
CELL_OPTIONAL_INTS = ("n_clips", "n_failed")
CEILINGS = ("real", "griffin_lim", "vocoded")


def _is_num_or_null(v) -> bool:
  if v is None:
    return True
  return (isinstance(v, numbers.Real) and not isinstance(v, bool)
          and math.isfinite(float(v)))


def _is_count(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def validate_cell(cell: Any, where: str, allow_splits: bool = True) -> None:
  """Validates one metric cell; raises ``ValueError`` naming the JSON path."""
  if not isinstance(cell, Mapping):
    raise ValueError(f"{where}: expected an object of metrics, got "
                     f"{type(cell).__name__}.")
  for k in CELL_REQUIRED:
    if k not in cell:
      raise ValueError(f"{where}: missing key {k!r}; a cell needs "
                       f"{list(CELL_REQUIRED)} (null when not computed).")
  for k, v in cell.items():
    path = f"{where}.{k}"
    if k == "n" or k in CELL_OPTIONAL_INTS:
      if not _is_count(v):
        raise ValueError(f"{path}: expected a non-negative int, got {v!r}.")
    elif k in CELL_REQUIRED or k in CELL_OPTIONAL_FLOATS:
      if not _is_num_or_null(v):
        raise ValueError(f"{path}: expected a finite number or null, got "
                         f"{v!r}.")
    elif k == "ci95":
      if not isinstance(v, Mapping):
        raise ValueError(f"{path}: expected an object {{metric: half-width}}.")
      for mk, mv in v.items():
        if mk not in CELL_REQUIRED[:-1] + CELL_OPTIONAL_FLOATS:
          raise ValueError(f"{path}.{mk}: not a metric key.")
        if not _is_num_or_null(mv):
          raise ValueError(f"{path}.{mk}: expected a number or null, got "
                           f"{mv!r}.")
    elif k == "splits" and allow_splits:
      if not isinstance(v, Mapping):
        raise ValueError(f"{path}: expected an object {{split: cell}}.")
      for sk, sv in v.items():
        if sk not in SPLITS:
          raise ValueError(f"{path}.{sk}: split must be one of {list(SPLITS)}.")
        validate_cell(sv, f"{path}.{sk}", allow_splits=False)
    else:
      raise ValueError(f"{path}: unknown key {k!r}; allowed: "
                       f"{list(CELL_REQUIRED + CELL_OPTIONAL_FLOATS + CELL_OPTIONAL_INTS)}"
                       ", 'ci95', 'splits'.")


def _check_int_key(k, where: str) -> None:
  if not (isinstance(k, str) and k.isdigit() and str(int(k)) == k):
    raise ValueError(f"{where}: key {k!r} must be a non-negative integer "
                     "written as a string, e.g. \"5\".")


def validate_metrics(obj: Any) -> None:
  """Checks a metrics.json object against the schema (module docstring).

  Args:
    obj: The parsed JSON.

  Raises:
    ValueError: The first violation, naming its JSON path and what is
      expected there.
  """
  if not isinstance(obj, Mapping):
    raise ValueError("metrics.json: expected a JSON object at the top level.")
  if "reference" not in obj:
    raise ValueError("metrics.json: missing the 'reference' entry (ceilings).")
  methods = [k for k in obj if k != "reference"]
  if not methods and not (isinstance(obj["reference"], Mapping) and
                          "vocoded" in obj["reference"]):
    # (a vocoder-only run judges its resynthesis beside the ceilings)
    raise ValueError("metrics.json: no method entries.")
  for m in methods:
    check_method_key(m, "metrics.json")
    entry = obj[m]
    if not isinstance(entry, Mapping) or set(entry) != {"shots"}:
      raise ValueError(f"{m}: expected exactly {{\"shots\": {{...}}}}.")
    if not isinstance(entry["shots"], Mapping) or not entry["shots"]:
      raise ValueError(f"{m}.shots: expected a non-empty object.")
    for k, kv in entry["shots"].items():
      _check_int_key(k, f"{m}.shots")
      if not isinstance(kv, Mapping) or set(kv) != {"steps"}:
        raise ValueError(f"{m}.shots.{k}: expected exactly {{\"steps\": ...}}.")
      if not isinstance(kv["steps"], Mapping) or not kv["steps"]:
        raise ValueError(f"{m}.shots.{k}.steps: expected a non-empty object.")
      for s, cell in kv["steps"].items():
        _check_int_key(s, f"{m}.shots.{k}.steps")
        validate_cell(cell, f"{m}.shots.{k}.steps.{s}")
  ref = obj["reference"]
  if not isinstance(ref, Mapping):
    raise ValueError("reference: expected an object.")
  if "real" not in ref:
    raise ValueError("reference: missing 'real' (the real-vs-real ceiling).")
  for k, v in ref.items():
    if k in CEILINGS:
      validate_cell(v, f"reference.{k}")
    elif k == "settings":
      if not isinstance(v, Mapping):
        raise ValueError("reference.settings: expected an object.")
    else:
      raise ValueError(f"reference.{k}: unknown key; allowed "
                       f"{list(CEILINGS) + ['settings']}.")
