"""metatts.evaluation.study: the study's tables from judged clip rows.

Rows are built by hand (two splits, four speakers each, two clips per cell),
so every figure has a closed form or an independent reference (scipy's
paired t-test and Wilcoxon test, the EER of the pooled trials).
"""

import json

import numpy as np
import pytest
from scipy import stats

from metatts.evaluation import eer as eer_lib
from metatts.evaluation import study

SPEAKERS = {"heldout_seen": ["a", "b", "c", "d"],
            "heldout_unseen": ["e", "f", "g", "h"]}
# SECS of transfer rises linearly from 0.5 (0 steps) to 0.8 (100 steps);
# meta-fomaml after 5 steps is at 0.65 + a per-speaker offset.
OFFSET = {"a": 0.01, "b": -0.02, "c": 0.03, "d": 0.0,
          "e": -0.01, "f": 0.02, "g": 0.04, "h": -0.03}


def _rows():
  rows = []
  for split, spk in SPEAKERS.items():
    for s in spk:
      for clip in range(2):
        jitter = 0.002 * clip
        for method, steps, secs in [
            ("transfer", 0, 0.5), ("transfer", 50, 0.65),
            ("transfer", 100, 0.8), ("meta-fomaml", 5, 0.65 + OFFSET[s])]:
          rows.append({
              "method": method, "shots": 5, "steps": steps, "speaker": s,
              "split": split, "utt_id": f"{s}_{clip}",
              "secs": secs + jitter, "mcd": 8.0 - secs,
              "nontarget": [secs - 0.3 + 0.1 * k for k in range(4)],
              "wer_errors": 2 + clip, "wer_words": 10})
        rows.append({"method": "real", "shots": 0, "steps": 0, "speaker": s,
                     "utt_id": f"{s}_{clip}", "secs": 0.9, "wer_errors": 1,
                     "wer_words": 10})
  return rows


def test_paired_comparison_matches_scipy():
  rows = [r for r in _rows() if r.get("split") == "heldout_seen"]
  a = study._per_speaker(rows, "meta-fomaml", 5, 5, "secs")  # pylint: disable=protected-access
  b = study._per_speaker(rows, "transfer", 5, 100, "secs")  # pylint: disable=protected-access
  p = study.paired(a, b, "secs")
  x = np.array([a[s] for s in sorted(a)])
  y = np.array([b[s] for s in sorted(a)])
  d = x - y
  assert p["n"] == 4
  np.testing.assert_allclose(p["diff"], d.mean(), rtol=1e-12)
  half = stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2.0
  np.testing.assert_allclose([p["low"], p["high"]],
                             [d.mean() - half, d.mean() + half], rtol=1e-12)
  np.testing.assert_allclose(p["p_t"], stats.ttest_rel(x, y).pvalue)
  np.testing.assert_allclose(p["p_wilcoxon"], stats.wilcoxon(x, y).pvalue)
  # 0.65 + offsets against 0.80 (+ the same clip jitter on both sides).
  np.testing.assert_allclose(p["diff"], -0.15 + np.mean([0.01, -0.02, 0.03, 0]),
                             atol=1e-12)


def test_eer_difference_is_the_pooled_eers_and_its_interval_covers_it():
  rows = [r for r in _rows() if r.get("split") == "heldout_unseen"]
  ra = [r for r in rows if r["method"] == "meta-fomaml"]
  rb = [r for r in rows if r["method"] == "transfer" and r["steps"] == 100]
  p = study.eer_difference(ra, rb, n_boot=300)

  def pooled(rr):
    return eer_lib.equal_error_rate(
        [r["secs"] for r in rr], [x for r in rr for x in r["nontarget"]]).eer
  assert p["diff"] == pytest.approx(pooled(ra) - pooled(rb))
  assert p["low"] <= p["diff"] <= p["high"] and p["n"] == 4


def test_step_ratio_interpolates_and_says_plain_words():
  rows = _rows()
  seen = [r for r in rows if r.get("split") == "heldout_seen"]
  r = study.step_ratio(seen, "meta-fomaml", "transfer", 5, n_boot=200)
  # The target is 0.65 + mean offset (+ mean jitter 0.001) on a curve
  # 0.5 -> 0.65 -> 0.8 at 0/50/100 steps: linear, 1000 steps per unit.
  target = 0.65 + np.mean([0.01, -0.02, 0.03, 0.0]) + 0.001
  want = 50 + (target - 0.651) / 0.15 * 50
  assert r["steps"] == pytest.approx(want, rel=1e-9)
  assert r["ratio"] == pytest.approx(want / 5)
  assert r["low"] <= r["steps"] <= r["high"] and r["reached_fraction"] == 1.0
  assert f"after {want:.0f} steps" in r["text"]
  # A baseline already there at its first step count is said so.
  ahead = [dict(x, secs=x["secs"] + 0.5) if x["method"] == "transfer" else x
           for x in seen]
  r = study.step_ratio(ahead, "meta-fomaml", "transfer", 5, n_boot=50)
  assert r["steps"] == 0 and "already at or above" in r["text"]
  assert "saves no steps" in r["text"] and "0.0x" not in r["text"]
  # One that never gets there, too.
  behind = [dict(x, secs=x["secs"] - 0.5) if x["method"] == "transfer"
            else x for x in seen]
  r = study.step_ratio(behind, "meta-fomaml", "transfer", 5, n_boot=50)
  assert r["steps"] is None and "does not reach" in r["text"]
  assert "within 100 steps" in r["text"]


def test_tables_and_cli(tmp_path, capsys):
  report = tmp_path / "report"
  report.mkdir()
  (report / "clips.json").write_text(json.dumps(_rows()))
  assert study.main([str(tmp_path), "--steps", "0,5,100"]) == 0
  out = capsys.readouterr().out
  assert "### heldout_seen (4 speakers, 5 clips)" in out
  assert "### heldout_unseen (4 speakers, 5 clips)" in out
  assert "| real | 0.900" in out
  assert "| transfer @100 | 0.801 ± " in out
  assert "| transfer @50 |" not in out  # --steps
  assert "| meta-fomaml | secs | " in out and "eer (pooled)" in out
  assert out.count("transfer reaches meta-fomaml's 5-step SECS") == 2
  # WER is a ratio of sums per speaker: (2 + 3) / 20.
  assert "| meta-fomaml @5 | " in out and "| 0.250 ± 0.000 |" in out
  assert study.main([str(tmp_path / "missing")]) == 2
  assert "judge the run first" in capsys.readouterr().err
