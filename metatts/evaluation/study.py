"""The meta-learning claim as tables: a report's clips, per held-out split.

``python -m metatts.evaluation.study WORKDIR`` reads ``WORKDIR/report/
clips.json`` (written by ``python -m metatts.evaluation``) and prints, per
held-out split, in Markdown:

1. every method and step count at ``--shots`` clips beside the real and
   Griffin-Lim ceilings: SECS, MCD and WER with 95% Student-t intervals over
   speakers, EER pooled over the cell's trials;
2. the Meta-TTS comparison, each meta-learner after ``--meta-steps`` against
   ``--baseline`` after ``--baseline-steps``, paired per speaker (the same
   held-out speakers and sentences on both sides): the mean difference with
   its 95% interval, the paired t-test and the Wilcoxon signed-rank p-values;
   for EER, which has no per-speaker value, a bootstrap over speakers of the
   pooled EER difference;
3. the step-efficiency ratio (the steps the baseline needs to reach the
   meta-learner's SECS after ``--meta-steps``), with a 95% bootstrap interval
   over speakers, said in plain words when the baseline is already there
   at its first step count or never gets there.

Differences are "meta minus baseline"; for SECS higher is better, for EER,
MCD and WER lower is. A claim "at least as good" holds here when the
interval of the difference does not lie wholly on the worse side.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from metatts.evaluation import curves

PER_SPEAKER = ("secs", "mcd", "wer")
N_BOOT = 2000


def load_rows(workdir: str) -> List[dict]:
  """The judged clip rows of ``WORKDIR/report/clips.json`` (or of a report
  folder given directly); failed clips are dropped."""
  path = workdir if workdir.endswith(".json") else os.path.join(
      workdir, "clips.json")
  if not os.path.isfile(path):
    path = os.path.join(workdir, "report", "clips.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"No clips.json in {workdir} or {workdir}/report: judge the run first "
        f"(python -m metatts.evaluation {workdir}).")
  with open(path, encoding="utf-8") as f:
    return [r for r in json.load(f) if "error" not in r]


def _cell_rows(rows, method, shots, steps):
  return [r for r in rows if r["method"] == method
          and int(r["shots"]) == shots and int(r["steps"]) == steps]


def _per_speaker(rows, method, shots, steps, metric) -> Dict[str, float]:
  table = curves.table_from_clips(_cell_rows(rows, method, shots, steps),
                                  [metric])
  return table.get(method, {}).get(shots, {}).get(steps, {}).get(metric, {})


def _eer(rows) -> float:
  from metatts.evaluation import eer  # pylint: disable=g-import-not-at-top
  value = eer.pooled_eer(rows)
  return float("nan") if value is None else value


class Paired(dict):
  """``{"metric", "n", "diff", "low", "high", "p_t", "p_wilcoxon", "a", "b"}``."""


def paired(a: Mapping[str, float], b: Mapping[str, float], metric: str
           ) -> Paired:
  """Per-speaker paired comparison of ``a - b`` over their common speakers.

  Returns the mean difference with its 95% Student-t interval, the two-sided
  paired t-test and Wilcoxon signed-rank p-values (scipy), and the two means.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  common = sorted(set(a) & set(b))
  x = np.asarray([a[s] for s in common], np.float64)
  y = np.asarray([b[s] for s in common], np.float64)
  d = x - y
  ci = curves.mean_ci(d)
  p_t = p_w = float("nan")
  if len(common) >= 2 and np.any(d != 0):
    p_t = float(stats.ttest_rel(x, y).pvalue)
    p_w = float(stats.wilcoxon(x, y).pvalue)
  return Paired(metric=metric, n=len(common), diff=ci.mean,
                low=ci.mean - ci.half_width, high=ci.mean + ci.half_width,
                p_t=p_t, p_wilcoxon=p_w,
                a=float(x.mean()) if x.size else float("nan"),
                b=float(y.mean()) if y.size else float("nan"))


def eer_difference(rows_a: List[dict], rows_b: List[dict], *,
                   n_boot: int = N_BOOT, seed: int = 0) -> Paired:
  """Pooled EER of ``rows_a`` minus ``rows_b``, with a 95% percentile
  interval from resampling speakers (the same draw on both sides)."""
  speakers = sorted({r["speaker"] for r in rows_a} & {r["speaker"]
                                                      for r in rows_b})
  by_a = {s: [r for r in rows_a if r["speaker"] == s] for s in speakers}
  by_b = {s: [r for r in rows_b if r["speaker"] == s] for s in speakers}
  ea = _eer([r for s in speakers for r in by_a[s]])
  eb = _eer([r for s in speakers for r in by_b[s]])
  rng = np.random.default_rng(seed)
  diffs = []
  for _ in range(n_boot if len(speakers) >= 2 else 0):
    draw = rng.choice(len(speakers), len(speakers), replace=True)
    diffs.append(_eer([r for i in draw for r in by_a[speakers[i]]])
                 - _eer([r for i in draw for r in by_b[speakers[i]]]))
  low, high = (np.nanpercentile(diffs, [2.5, 97.5]) if diffs
               else (float("nan"), float("nan")))
  return Paired(metric="eer", n=len(speakers), diff=ea - eb, low=float(low),
                high=float(high), p_t=float("nan"), p_wilcoxon=float("nan"),
                a=ea, b=eb)


def step_ratio(rows: List[dict], meta: str, baseline: str, shots: int,
               meta_steps: int = 5, *, n_boot: int = N_BOOT, seed: int = 0
               ) -> dict:
  """Steps ``baseline`` needs to reach ``meta``'s SECS after ``meta_steps``.

  Returns ``{"steps", "ratio", "low", "high", "reached_fraction",
  "first_step", "max_steps", "text"}``: the interpolated step count on the
  speaker-mean curves (``curves.steps_to_reach``), its ratio to
  ``meta_steps``, the 95% percentile interval of the step count over
  speaker resamples (``high`` is ``inf`` when more than 2.5% of them never
  get there), and a plain-words sentence.
  """
  table = curves.table_from_clips(
      [r for r in rows if r["method"] in (meta, baseline)
       and int(r["shots"]) == shots], ["secs"])
  mcell = table.get(meta, {}).get(shots, {}).get(meta_steps, {}).get("secs")
  bcells = table.get(baseline, {}).get(shots, {})
  steps = sorted(s for s, c in bcells.items() if "secs" in c)
  if not mcell or not steps:
    raise ValueError(f"No SECS for {meta}@{meta_steps} or {baseline} at "
                     f"{shots} shots.")
  speakers = sorted(set(mcell).intersection(*[bcells[s]["secs"]
                                              for s in steps]))

  def reach(idx):
    spk = [speakers[i] for i in idx]
    target = float(np.mean([mcell[s] for s in spk]))
    curve = [float(np.mean([bcells[st]["secs"][s] for s in spk]))
             for st in steps]
    return curves.steps_to_reach(steps, curve, target, True), target

  got, target = reach(range(len(speakers)))
  rng = np.random.default_rng(seed)
  boot = [reach(rng.choice(len(speakers), len(speakers), replace=True))[0]
          for _ in range(n_boot)]
  reached = np.asarray([b for b in boot if b is not None], np.float64)
  frac = reached.size / max(len(boot), 1)
  low = float(np.percentile(reached, 2.5)) if reached.size else math.inf
  high = (float(np.percentile(np.concatenate(
      [reached, np.full(len(boot) - reached.size, np.inf)]), 97.5,
      method="higher"))
          if boot else math.nan)
  first, last = steps[0], steps[-1]
  if got is None:
    text = (f"{baseline} does not reach {meta}'s {meta_steps}-step SECS "
            f"({target:.3f}, {shots} clips) within {last} steps")
  elif got <= first:
    text = (f"{baseline} is already at or above {meta}'s {meta_steps}-step "
            f"SECS ({target:.3f}, {shots} clips) after {first} steps: "
            "meta-learning saves no steps here")
  else:
    hi = "never (within the steps run)" if math.isinf(high) else f"{high:.0f}"
    text = (f"{baseline} reaches {meta}'s {meta_steps}-step SECS "
            f"({target:.3f}, {shots} clips) after {got:.0f} steps, {got / meta_steps:.1f}x as "
            f"many (95% interval over speakers: {low:.0f} to {hi} steps)")
  return {"steps": got, "ratio": None if got is None else got / meta_steps,
          "low": low, "high": high, "reached_fraction": frac,
          "first_step": first, "max_steps": last, "text": text}


def _fmt(v, ci=None, digits=3):
  if v is None or (isinstance(v, float) and not np.isfinite(v)):
    return "-"
  s = f"{v:.{digits}f}"
  if ci is not None and np.isfinite(ci):
    s += f" ± {ci:.{digits}f}"
  return s


def _fmt_p(p):
  if p is None or not np.isfinite(p):
    return "-"
  return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _splits(rows) -> List[str]:
  return sorted({r["split"] for r in rows if r.get("split")})


def _mean_ci(values):
  mc = curves.mean_ci(values.values())
  return mc.mean, mc.half_width


def tables(rows: List[dict], *, shots: int = 5, meta_steps: int = 5,
           baseline: str = "transfer", baseline_steps: int = 100,
           steps: Optional[Sequence[int]] = None) -> str:
  """The Markdown tables of the module docstring."""
  from metatts import methods as methods_lib  # pylint: disable=g-import-not-at-top
  out = []
  names = sorted({r["method"] for r in rows} - {"real", "griffin_lim",
                                                 "vocoded"})
  metas = [m for m in names if m in methods_lib.METHODS
           and methods_lib.METHODS[m].meta_learned]
  speakers_of = {}
  for r in rows:
    if r.get("split"):
      speakers_of[r["speaker"]] = r["split"]
  for split in _splits(rows):
    sr = [r for r in rows if speakers_of.get(r["speaker"]) == split]
    n = len({r["speaker"] for r in sr})
    out.append(f"\n### {split} ({n} speakers, {shots} clips)\n")
    out.append("| row | SECS | EER | MCD (dB) | WER |")
    out.append("|---|---|---|---|---|")
    for ceil in ("real", "griffin_lim", "vocoded"):
      cr = [r for r in sr if r["method"] == ceil]
      if cr:
        vals = [_mean_ci(curves.table_from_clips(cr, [m]).get(ceil, {}).get(
            0, {}).get(0, {}).get(m, {})) for m in PER_SPEAKER]
        out.append(f"| {ceil} | {_fmt(*vals[0])} | - | {_fmt(*vals[1], 2)} | "
                   f"{_fmt(*vals[2])} |")
    for m in names:
      have = sorted({int(r["steps"]) for r in sr if r["method"] == m
                     and int(r["shots"]) == shots})
      for st in (have if steps is None else [s for s in steps if s in have]):
        vals = [_mean_ci(_per_speaker(sr, m, shots, st, k))
                for k in PER_SPEAKER]
        e = _eer(_cell_rows(sr, m, shots, st))
        out.append(f"| {m} @{st} | {_fmt(*vals[0])} | {_fmt(e)} | "
                   f"{_fmt(*vals[1], 2)} | {_fmt(*vals[2])} |")
    if baseline not in names:
      continue
    out.append(f"\n{split}: each meta-learner after {meta_steps} steps minus "
               f"{baseline} after {baseline_steps} (paired per speaker; "
               "better = SECS up, the others down)\n")
    out.append("| method | metric | meta | baseline | difference (95% CI) | "
               "paired t p | Wilcoxon p | n |")
    out.append("|---|---|---|---|---|---|---|---|")
    for m in metas:
      for k in PER_SPEAKER:
        a = _per_speaker(sr, m, shots, meta_steps, k)
        b = _per_speaker(sr, baseline, shots, baseline_steps, k)
        if not a or not b:
          continue
        p = paired(a, b, k)
        out.append(f"| {m} | {k} | {_fmt(p['a'])} | {_fmt(p['b'])} | "
                   f"{_fmt(p['diff'])} [{_fmt(p['low'])}, {_fmt(p['high'])}]"
                   f" | {_fmt_p(p['p_t'])} | {_fmt_p(p['p_wilcoxon'])} | "
                   f"{p['n']} |")
      ra = _cell_rows(sr, m, shots, meta_steps)
      rb = _cell_rows(sr, baseline, shots, baseline_steps)
      if ra and rb:
        p = eer_difference(ra, rb)
        out.append(f"| {m} | eer (pooled) | {_fmt(p['a'])} | {_fmt(p['b'])}"
                   f" | {_fmt(p['diff'])} [{_fmt(p['low'])}, "
                   f"{_fmt(p['high'])}] (bootstrap) | - | - | {p['n']} |")
    out.append("")
    for m in metas:
      try:
        out.append(f"* {split}: " + step_ratio(sr, m, baseline, shots,
                                                meta_steps)["text"] + ".")
      except ValueError as e:
        out.append(f"* {split}: {e}")
  return "\n".join(out) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(
      prog="python -m metatts.evaluation.study",
      description="Per-split tables of a judged run: ceilings, every method's "
                  "curve, meta@K vs baseline@N paired per speaker, and the "
                  "step-efficiency ratio with its interval.")
  p.add_argument("workdir", help="the run's WORKDIR (or its report folder)")
  p.add_argument("--shots", type=int, default=5)
  p.add_argument("--meta-steps", type=int, default=5)
  p.add_argument("--baseline", default="transfer")
  p.add_argument("--baseline-steps", type=int, default=100)
  p.add_argument("--steps", default="",
                 help="comma-separated step counts to list (default: all)")
  args = p.parse_args(argv)
  try:
    rows = load_rows(args.workdir)
    steps = ([int(s) for s in args.steps.split(",") if s.strip()]
             if args.steps else None)
    print(tables(rows, shots=args.shots, meta_steps=args.meta_steps,
                 baseline=args.baseline, baseline_steps=args.baseline_steps,
                 steps=steps), end="")
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
