"""Metric logging: TensorBoard event files, ``metrics.json`` and a progress bar.

``MetricLogger`` writes every logged scalar three ways:

* TensorBoard event files in the work directory (tensorboardX
  ``SummaryWriter``), so ``tensorboard --logdir WORKDIR`` shows curves;
* ``WORKDIR/metrics.json``: ``{"history": [{"step": s, name: value, ...}, ...],
  "summary": {...}}``, rewritten atomically after each log so a killed job
  leaves a valid file;
* a tqdm progress bar whose postfix shows the latest values.

On a resumed run the history entries beyond the resume step (logged after the
checkpoint the run restarted from) are dropped, so the history has one entry
per step even across crashes.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Mapping, Optional

import numpy as np
import tqdm

METRICS_FILE = "metrics.json"


def _to_float(value: Any) -> float:
  return float(np.asarray(value))


def _json_safe(value: float) -> Any:
  # JSON has no NaN/Inf; write them as strings that json.load reads back.
  return value if math.isfinite(value) else str(value)


class MetricLogger:
  """Logs scalars to TensorBoard, ``metrics.json`` and a progress bar."""

  def __init__(self, workdir: str, *, total_steps: int, initial_step: int = 0,
               progress: bool = True, description: str = "train"):
    """Opens the writers.

    Args:
      workdir: directory for the event files and ``metrics.json`` (created).
      total_steps: number of steps of the whole run (progress bar length).
      initial_step: the step the run starts from (non-zero when resuming);
        history entries with a larger step are discarded.
      progress: show a tqdm progress bar.
      description: progress bar label.
    """
    os.makedirs(workdir, exist_ok=True)
    self.workdir = workdir
    self.metrics_path = os.path.join(workdir, METRICS_FILE)
    self._record: Dict[str, Any] = {"history": [], "summary": {}}
    if os.path.exists(self.metrics_path):
      try:
        with open(self.metrics_path) as f:
          self._record = json.load(f)
      except (OSError, json.JSONDecodeError) as e:
        raise ValueError(
            f"{self.metrics_path} exists but is not valid JSON ({e}); move it "
            "away or use a fresh --workdir.") from e
      self._record["history"] = [
          h for h in self._record.get("history", [])
          if h.get("step", 0) <= initial_step]
      self._record.setdefault("summary", {})
    # Imported here: tensorboardX imports torch when it is installed (~7 s),
    # which nothing else on the import path of metatts.experiments needs.
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self._writer = tensorboardX.SummaryWriter(logdir=workdir)
    self._bar: Optional[tqdm.tqdm] = None
    if progress:
      self._bar = tqdm.tqdm(total=total_steps, initial=initial_step,
                            desc=description, dynamic_ncols=True)

  @property
  def history(self) -> list:
    """The logged entries, oldest first."""
    return self._record["history"]

  def log(self, step: int, scalars: Mapping[str, Any]) -> Dict[str, float]:
    """Logs scalars of one step everywhere.

    Args:
      step: the step number (x axis).
      scalars: name -> scalar (python number, numpy or jax array).

    Returns:
      The scalars as python floats.
    """
    values = {k: _to_float(v) for k, v in scalars.items()}
    for name, value in values.items():
      self._writer.add_scalar(name, value, global_step=int(step))
    self._writer.flush()
    entry = {"step": int(step)}
    entry.update({k: _json_safe(v) for k, v in values.items()})
    self._record["history"].append(entry)
    self._write_json()
    if self._bar is not None:
      shown = {k: f"{v:.4g}" for k, v in values.items() if "/" not in k}
      self._bar.set_postfix(shown, refresh=False)
    return values

  def advance(self, num_steps: int = 1) -> None:
    """Moves the progress bar forward."""
    if self._bar is not None:
      self._bar.update(num_steps)

  def write(self, message: str) -> None:
    """Prints a message without breaking the progress bar."""
    if self._bar is not None:
      self._bar.write(message)
    else:
      print(message)

  def summary(self, values: Mapping[str, Any]) -> None:
    """Stores final results under ``"summary"`` in ``metrics.json``."""
    self._record["summary"].update(
        {k: (_json_safe(_to_float(v)) if np.ndim(v) == 0 and not isinstance(
            v, str) else v) for k, v in values.items()})
    self._write_json()

  def _write_json(self) -> None:
    tmp = self.metrics_path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self._record, f, indent=1)
    os.replace(tmp, self.metrics_path)  # Atomic: never a half-written file.

  def close(self) -> None:
    """Flushes and closes the event file and the progress bar."""
    self._writer.close()
    if self._bar is not None:
      self._bar.close()


EVAL_METRICS = ("secs", "eer", "mcd", "wer", "f0_rmse", "vde", "dnsmos")


def log_evaluation(workdir: str, metrics: Mapping[str, Any]) -> list:
  """Writes the evaluation's scalars to TensorBoard beside the training curves.

  For every method of ``metrics`` (the evaluation's ``metrics.json``
  object), one event folder ``WORKDIR/<method>/eval`` next to the method's
  training events, with the tag ``adapt/<metric>/<split>/shots_<K>`` (split
  ``all``, ``heldout_seen``, ``heldout_unseen``) at x = the adaptation step
  count, so ``tensorboard --logdir WORKDIR`` overlays every method's
  adaptation curve in one chart per metric, split and support size. The
  ceilings (real clips, Griffin-Lim, vocoded) go to
  ``WORKDIR/ceiling_<name>/eval`` as flat lines over the same steps.

  Args:
    workdir: the run folder.
    metrics: ``{method: {"shots": {K: {"steps": {S: cell}}}}, "reference":
      {...}}`` as written by ``metatts.evaluation.pipeline.evaluate``.

  Returns:
    The event folders written.
  """
  import tensorboardX  # pylint: disable=g-import-not-at-top

  def scalars(cell):
    out = {}
    for split, c in [("all", cell)] + sorted(cell.get("splits", {}).items()):
      for m in EVAL_METRICS:
        v = c.get(m) if isinstance(c, Mapping) else None
        if isinstance(v, (int, float)) and math.isfinite(float(v)):
          out[f"{m}/{split}"] = float(v)
    return out

  curves = {}  # run folder -> [(tag, value, step)]
  all_steps = set()
  for method, m in metrics.items():
    if method == "reference" or not isinstance(m, Mapping):
      continue
    for k, sk in m.get("shots", {}).items():
      for s, cell in sk.get("steps", {}).items():
        all_steps.add((k, int(s)))
        for name, v in scalars(cell).items():
          metric, split = name.split("/")
          curves.setdefault(os.path.join(workdir, method, "eval"), []).append(
              (f"adapt/{metric}/{split}/shots_{k}", v, int(s)))
  for name, cell in metrics.get("reference", {}).items():
    if name == "settings" or not isinstance(cell, Mapping):
      continue
    for tagname, v in scalars(cell).items():
      metric, split = tagname.split("/")
      for k, s in sorted(all_steps):
        curves.setdefault(os.path.join(workdir, f"ceiling_{name}", "eval"),
                          []).append((f"adapt/{metric}/{split}/shots_{k}", v,
                                      s))
  for folder, points in curves.items():
    if os.path.isdir(folder):  # a re-evaluation replaces, never duplicates
      for f in os.listdir(folder):
        if f.startswith("events.out.tfevents"):
          os.remove(os.path.join(folder, f))
    writer = tensorboardX.SummaryWriter(logdir=folder)
    for tag, v, s in sorted(points, key=lambda p: (p[0], p[2])):
      writer.add_scalar(tag, v, global_step=s)
    writer.close()
  return sorted(curves)
