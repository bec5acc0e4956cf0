"""Adaptation curves: metrics against adaptation steps and shots, with 95% CIs.

A *table* holds per-speaker values::

  table[method][K][S][metric] = {speaker: value}

(``K`` shots, ``S`` steps, ints). A curve point is the mean over held-out
speakers with a two-sided 95% Student-t confidence interval,
``mean +- t_{0.975, n-1} * sd / sqrt(n)`` (``sd`` with ``n - 1`` in the
denominator); with one speaker the interval is undefined (NaN). Pooled metrics
(EER) have one value per cell, stored under the speaker key ``"*"``, and no CI.

References:
  Student (W. S. Gosset). The probable error of a mean. Biometrika 1908.
  Huang et al. Meta-TTS. IEEE/ACM TASLP 2022 (metrics against adaptation
  steps as the headline comparison).
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np

STEPS = (0, 1, 2, 5, 10, 20, 50, 100)
SHOTS = (1, 2, 5, 10)
# Direction of improvement of each metric.
HIGHER_IS_BETTER = {"secs": True, "eer": False, "mcd": False, "wer": False,
                    "f0_rmse": False, "vde": False, "dnsmos": True}
LABELS = {"secs": "speaker similarity (SECS, cosine)",
          "eer": "speaker-verification EER", "mcd": "MCD (dB)",
          "wer": "word error rate", "f0_rmse": "F0 RMSE (cents)",
          "vde": "voicing decision error", "dnsmos": "DNSMOS P.808 (proxy MOS)"}
POOLED = "*"


class MeanCI(NamedTuple):
  mean: float
  half_width: float  # 95% CI is mean +- half_width; NaN if n < 2
  n: int


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> MeanCI:
  """Mean and Student-t confidence half-width of finite values.

  Args:
    values: Per-speaker values; NaNs are dropped.
    confidence: Two-sided confidence level.

  Returns:
    ``MeanCI(mean, half_width, n)``; ``(nan, nan, 0)`` if nothing is finite.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  v = np.asarray([x for x in values if x is not None], dtype=np.float64)
  v = v[np.isfinite(v)]
  n = int(v.size)
  if n == 0:
    return MeanCI(float("nan"), float("nan"), 0)
  if n == 1:
    return MeanCI(float(v[0]), float("nan"), 1)
  t = stats.t.ppf(0.5 + confidence / 2.0, n - 1)
  return MeanCI(float(v.mean()), float(t * v.std(ddof=1) / math.sqrt(n)), n)


class Curve(NamedTuple):
  x: np.ndarray  # [P] steps or shots
  mean: np.ndarray  # [P]
  half_width: np.ndarray  # [P]
  n: np.ndarray  # [P] speakers per point


def curve_vs_steps(table: Mapping, method: str, metric: str, shots: int
                   ) -> Curve:
  """Metric of ``method`` against adaptation steps at ``shots`` clips."""
  cells = table.get(method, {}).get(shots, {})
  xs = sorted(s for s, c in cells.items() if metric in c)
  pts = [mean_ci(cells[s][metric].values()) for s in xs]
  return Curve(np.asarray(xs, np.float64), np.asarray([p.mean for p in pts]),
               np.asarray([p.half_width for p in pts]),
               np.asarray([p.n for p in pts], np.int64))


def curve_vs_shots(table: Mapping, method: str, metric: str, steps: int
                   ) -> Curve:
  """Metric of ``method`` against the number of shots at ``steps`` steps."""
  by_k = table.get(method, {})
  xs = sorted(k for k, c in by_k.items()
              if steps in c and metric in c[steps])
  pts = [mean_ci(by_k[k][steps][metric].values()) for k in xs]
  return Curve(np.asarray(xs, np.float64), np.asarray([p.mean for p in pts]),
               np.asarray([p.half_width for p in pts]),
               np.asarray([p.n for p in pts], np.int64))


def steps_to_reach(steps: Sequence[float], values: Sequence[float],
                   target: float, higher_is_better: bool = True
                   ) -> Optional[float]:
  """First (linearly interpolated) step count at which a curve reaches a target.

  Args:
    steps: Increasing step counts ``[P]``.
    values: Metric at those steps ``[P]`` (NaNs are skipped).
    target: Value to reach.
    higher_is_better: Whether reaching means ``>= target`` (SECS) or
      ``<= target`` (EER, MCD).

  Returns:
    The step count, interpolated between the last point short of the target
    and the first point reaching it; ``None`` if no point reaches it.
  """
  s = np.asarray(steps, dtype=np.float64)
  v = np.asarray(values, dtype=np.float64)
  ok = np.isfinite(v)
  s, v = s[ok], v[ok]
  if not higher_is_better:
    v, target = -v, -target
  hit = np.flatnonzero(v >= target)
  if hit.size == 0:
    return None
  i = int(hit[0])
  if i == 0:
    return float(s[0])
  frac = (target - v[i - 1]) / (v[i] - v[i - 1])
  return float(s[i - 1] + frac * (s[i] - s[i - 1]))


class StepRatio(NamedTuple):
  meta_method: str
  baseline: str
  shots: int
  metric: str
  meta_steps: int
  target: float  # the meta-learned model's value at meta_steps
  baseline_steps: Optional[float]  # None: not reached within max_steps
  max_steps: int
  ratio: Optional[float]  # baseline_steps / meta_steps

  def describe(self) -> str:
    if self.baseline_steps is None:
      return (f"{self.baseline} does not reach {self.meta_method}'s "
              f"{self.meta_steps}-step {self.metric} ({self.target:.3f}) "
              f"within {self.max_steps} steps ({self.shots} shots)")
    if self.baseline_steps <= 0:
      return (f"{self.baseline} is already at or above {self.meta_method}'s "
              f"{self.meta_steps}-step {self.metric} ({self.target:.3f}) "
              f"without adaptation ({self.shots} shots): meta-learning saves "
              "no steps here")
    return (f"{self.baseline} needs {self.baseline_steps:.1f} steps to reach "
            f"{self.meta_method}'s {self.meta_steps}-step {self.metric} "
            f"({self.target:.3f}): {self.ratio:.1f}x as many "
            f"({self.shots} shots)")


def step_ratio(table: Mapping, meta_method: str, baseline: str, shots: int,
               metric: str = "secs", meta_steps: int = 5) -> StepRatio:
  """How many steps the baseline needs to match the meta-learned model.

  Args:
    table: Per-speaker table (module docstring).
    meta_method: E.g. ``"meta-maml"``.
    baseline: E.g. ``"transfer"``.
    shots: Support clips ``K``.
    metric: Metric to match (``"secs"`` by default).
    meta_steps: Steps of the meta-learned model (5).

  Returns:
    ``StepRatio``; ``baseline_steps`` is ``None`` when the baseline's curve
    does not reach the target within its largest evaluated step count.

  Raises:
    ValueError: The meta-learned model has no value at ``meta_steps`` or the
      baseline has no curve at ``shots``.
  """
  meta = curve_vs_steps(table, meta_method, metric, shots)
  where = np.flatnonzero(meta.x == meta_steps)
  if where.size == 0 or not np.isfinite(meta.mean[where[0]]):
    raise ValueError(f"{meta_method} has no {metric} at shots_{shots}/"
                     f"steps_{meta_steps}; synthesize those samples first.")
  target = float(meta.mean[where[0]])
  base = curve_vs_steps(table, baseline, metric, shots)
  if base.x.size == 0:
    raise ValueError(f"{baseline} has no {metric} curve at shots_{shots}.")
  reached = steps_to_reach(base.x, base.mean, target,
                           HIGHER_IS_BETTER.get(metric, True))
  return StepRatio(meta_method, baseline, int(shots), metric, int(meta_steps),
                   target, reached, int(base.x.max()),
                   None if reached is None else reached / max(meta_steps, 1))


def _meta_learned(method: str) -> bool:
  """Whether a samples folder is a meta-learner's (``metatts.methods``)."""
  from metatts import methods  # pylint: disable=g-import-not-at-top
  m = methods.METHODS.get(method)
  return bool(m is not None and m.meta_learned)


def all_step_ratios(table: Mapping, metric: str = "secs", meta_steps: int = 5
                    ) -> List[StepRatio]:
  """Step ratios of every (meta method, baseline, shots) the table allows."""
  out = []
  metas = sorted(m for m in table if _meta_learned(m))
  bases = sorted(m for m in table if not _meta_learned(m))
  for mm in metas:
    for k in sorted(table[mm]):
      if meta_steps not in table[mm][k] or metric not in table[mm][k][meta_steps]:
        continue
      for b in bases:
        if k in table[b]:
          try:
            out.append(step_ratio(table, mm, b, k, metric, meta_steps))
          except ValueError:
            continue
  return out


def _method_style(i: int):
  markers = "osD^vP*X"
  return dict(marker=markers[i % len(markers)], linewidth=1.6, markersize=4)


def plot_curves(table: Mapping, metric: str, path: str, *, by: str = "steps",
                at: int = 5, methods: Optional[Sequence[str]] = None,
                reference: Optional[Mapping[str, float]] = None,
                title: Optional[str] = None) -> str:
  """Writes a PNG of a metric against steps (or shots) for every method.

  Args:
    table: Per-speaker table.
    metric: Metric key (``"secs"``, ``"eer"``, ...).
    path: Output ``.png`` path.
    by: ``"steps"`` (x = steps at ``at`` shots) or ``"shots"`` (x = shots at
      ``at`` steps).
    at: The fixed shots (or steps).
    methods: Methods to draw (default all in the table).
    reference: Horizontal ceilings to draw, ``{label: value}``.
    title: Figure title.

  Returns:
    ``path``.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  if by not in ("steps", "shots"):
    raise ValueError(f"by={by!r}; use 'steps' or 'shots'.")
  fig = Figure(figsize=(6.0, 4.0), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  drawn = 0
  for i, m in enumerate(methods or sorted(table)):
    c = (curve_vs_steps(table, m, metric, at) if by == "steps"
         else curve_vs_shots(table, m, metric, at))
    ok = np.isfinite(c.mean)
    if not ok.any():
      continue
    x = c.x[ok]
    xp = x + 1.0 if by == "steps" else x  # log axis: steps 0 drawn at 1
    line, = ax.plot(xp, c.mean[ok], label=m, **_method_style(i))
    hw = np.nan_to_num(c.half_width[ok], nan=0.0)
    ax.fill_between(xp, c.mean[ok] - hw, c.mean[ok] + hw,
                    color=line.get_color(), alpha=0.18, linewidth=0)
    drawn += 1
  for j, (label, value) in enumerate((reference or {}).items()):
    if value is not None and np.isfinite(value):
      ax.axhline(value, color="0.3", linestyle=("--", ":", "-.")[j % 3],
                 linewidth=1.0, label=label)
  if by == "steps":
    ax.set_xscale("log")
    ticks = [s for s in STEPS]
    ax.set_xticks([s + 1 for s in ticks])
    ax.set_xticklabels([str(s) for s in ticks])
    ax.set_xlabel(f"adaptation steps ({at} shots)")
  else:
    ax.set_xscale("log")
    ax.set_xticks(list(SHOTS))
    ax.set_xticklabels([str(s) for s in SHOTS])
    ax.set_xlabel(f"shots (support clips), {at} steps")
  ax.set_ylabel(LABELS.get(metric, metric))
  ax.grid(True, alpha=0.3)
  ax.set_title(title or f"{LABELS.get(metric, metric)} vs {by}"
               + ("" if drawn else " (no data)"))
  if drawn or reference:
    ax.legend(fontsize=8)
  fig.subplots_adjust(left=0.13, right=0.97, bottom=0.13, top=0.91)
  fig.savefig(path, format="png")
  return path


# Metrics pooled per speaker as a ratio of sums rather than a mean of ratios:
# a speaker's WER is its total word errors over its total reference words.
RATIO_METRICS = {"wer": ("wer_errors", "wer_words")}


def table_from_clips(clip_rows: Iterable[Mapping], metrics: Sequence[str]
                     ) -> Dict:
  """Builds a per-speaker table from per-clip rows.

  Args:
    clip_rows: Rows with keys ``method, shots, steps, speaker`` and metric
      values (None or NaN when not computed for that clip). For WER the rows
      carry ``wer_errors`` and ``wer_words``; a speaker's WER is
      ``sum(errors) / sum(words)`` over its clips.
    metrics: Metric keys to aggregate.

  Returns:
    ``table[method][K][S][metric] = {speaker: value}``; the value is the mean
    over the speaker's clips (ratio of sums for WER).
  """
  clip_rows = list(clip_rows)
  acc: Dict = {}
  for r in clip_rows:
    cell = acc.setdefault(r["method"], {}).setdefault(int(r["shots"]), {}
                                                      ).setdefault(
                                                          int(r["steps"]), {})
    for m in metrics:
      if m in RATIO_METRICS:
        num, den = (r.get(f) for f in RATIO_METRICS[m])
        if num is None or den is None:
          continue
        cell.setdefault(m, {}).setdefault(r["speaker"], []).append(
            (float(num), float(den)))
        continue
      v = r.get(m)
      if v is None or not np.isfinite(v):
        continue
      cell.setdefault(m, {}).setdefault(r["speaker"], []).append(float(v))

  def reduce(metric, vals):
    if metric in RATIO_METRICS:
      den = sum(d for _, d in vals)
      return float(sum(n for n, _ in vals) / den) if den else float("nan")
    return float(np.mean(vals))

  return {m: {k: {s: {met: {spk: reduce(met, v) for spk, v in d.items()}
                      for met, d in c.items()}
                  for s, c in ks.items()}
              for k, ks in mk.items()}
          for m, mk in acc.items()}
