"""Adaptation curves, confidence intervals, step ratios, metrics.json schema."""

import copy
import math

import numpy as np
import pytest

from metatts.evaluation import curves, schema

# Student t quantiles t_{0.975, df} from printed tables (Fisher & Yates).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262}


@pytest.mark.parametrize("values", [[1.0, 2.0, 3.0, 4.0], [0.2, 0.9],
                                    [5.0, 5.5, 6.0, 4.0, 7.0, 6.5, 5.2, 5.9,
                                     6.1, 4.4]])
def test_mean_ci_closed_form(values):
  n = len(values)
  m = sum(values) / n
  sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
  got = curves.mean_ci(values)
  assert got.n == n and got.mean == pytest.approx(m)
  assert got.half_width == pytest.approx(T975[n - 1] * sd / math.sqrt(n),
                                         rel=2e-4)


def test_mean_ci_edge_cases():
  one = curves.mean_ci([0.7])
  assert one.mean == 0.7 and math.isnan(one.half_width) and one.n == 1
  none = curves.mean_ci([float("nan"), None])
  assert none.n == 0 and math.isnan(none.mean)
  assert curves.mean_ci([1.0, float("nan"), 3.0]).mean == 2.0


def test_steps_to_reach_interpolates():
  steps = [0, 5, 10, 20]
  assert curves.steps_to_reach(steps, [0.5, 0.6, 0.8, 0.9], 0.7) == (
      pytest.approx(7.5))
  assert curves.steps_to_reach(steps, [0.5, 0.6, 0.8, 0.9], 0.4) == 0.0
  assert curves.steps_to_reach(steps, [0.5, 0.6, 0.8, 0.9], 0.95) is None
  # Lower is better (EER): 0.3 -> 0.1 between 10 and 20 reaches 0.15 at 17.5.
  assert curves.steps_to_reach(steps, [0.5, 0.4, 0.3, 0.1], 0.15,
                               higher_is_better=False) == pytest.approx(17.5)


def _table():
  # Two speakers; meta-maml reaches 0.8 mean SECS at 5 steps.
  t = {"meta-maml": {5: {0: {"secs": {"a": 0.5, "b": 0.5}},
                         5: {"secs": {"a": 0.75, "b": 0.85}}}},
       "transfer": {5: {0: {"secs": {"a": 0.5, "b": 0.5}},
                        10: {"secs": {"a": 0.6, "b": 0.6}},
                        20: {"secs": {"a": 0.85, "b": 0.95}},
                        100: {"secs": {"a": 0.95, "b": 0.95}}}},
       "scratch": {5: {0: {"secs": {"a": 0.1, "b": 0.2}},
                       100: {"secs": {"a": 0.3, "b": 0.4}}}}}
  return t


def test_step_ratio_by_hand():
  r = curves.step_ratio(_table(), "meta-maml", "transfer", 5)
  # transfer: 0.6 at 10, 0.9 at 20 -> 0.8 at 10 + 10 * 0.2 / 0.3.
  assert r.target == pytest.approx(0.8)
  assert r.baseline_steps == pytest.approx(10 + 20 / 3)
  assert r.ratio == pytest.approx((10 + 20 / 3) / 5)
  assert "16.7 steps" in r.describe()
  never = curves.step_ratio(_table(), "meta-maml", "scratch", 5)
  assert never.baseline_steps is None and never.ratio is None
  assert "within 100 steps" in never.describe()
  # A baseline already there without adaptation is said in plain words.
  ahead = _table()
  ahead["transfer"][5][0]["secs"] = {"a": 0.9, "b": 0.9}
  r = curves.step_ratio(ahead, "meta-maml", "transfer", 5)
  assert r.baseline_steps == 0 and "already at or above" in r.describe()
  assert "0.0x" not in r.describe() and "needs" not in r.describe()
  assert len(curves.all_step_ratios(_table())) == 2
  with pytest.raises(ValueError, match="steps_5"):
    curves.step_ratio(_table(), "meta-maml", "transfer", 1)


def test_curves_vs_steps_and_shots():
  t = _table()
  c = curves.curve_vs_steps(t, "transfer", "secs", 5)
  np.testing.assert_array_equal(c.x, [0, 10, 20, 100])
  np.testing.assert_allclose(c.mean, [0.5, 0.6, 0.9, 0.95])
  assert c.half_width[0] == 0.0
  assert c.half_width[2] == pytest.approx(T975[1] * math.sqrt(0.005) /
                                          math.sqrt(2), rel=2e-4)
  t["transfer"][1] = {10: {"secs": {"a": 0.4, "b": 0.5}}}
  s = curves.curve_vs_shots(t, "transfer", "secs", 10)
  np.testing.assert_array_equal(s.x, [1, 5])
  np.testing.assert_allclose(s.mean, [0.45, 0.6])


def test_table_from_clips_pools_wer_as_ratio_of_sums():
  rows = [dict(method="transfer", shots=5, steps=0, speaker="a", secs=0.5,
               wer_errors=1, wer_words=10),
          dict(method="transfer", shots=5, steps=0, speaker="a", secs=0.7,
               wer_errors=3, wer_words=2),
          dict(method="transfer", shots=5, steps=0, speaker="b",
               secs=float("nan"), wer_errors=0, wer_words=4)]
  t = curves.table_from_clips(rows, ["secs", "wer"])
  cell = t["transfer"][5][0]
  assert cell["secs"] == {"a": pytest.approx(0.6)}
  assert cell["wer"] == {"a": pytest.approx(4 / 12), "b": 0.0}


def test_plot_curves_writes_png(tmp_path):
  import matplotlib.image as mpimg
  path = curves.plot_curves(_table(), "secs", str(tmp_path / "c.png"),
                            reference={"real vs real": 0.9})
  img = mpimg.imread(path)
  assert img.shape[:2] == (400, 600)
  assert img[..., :3].std() > 0.01  # not a blank canvas
  with pytest.raises(ValueError, match="by="):
    curves.plot_curves(_table(), "secs", str(tmp_path / "d.png"), by="x")


def _cell(**kw):
  c = {"secs": 0.8, "eer": 0.1, "mcd": 7.0, "wer": 0.2, "f0_rmse": 50.0,
       "n": 3}
  c.update(kw)
  return c


def _metrics():
  return {"meta-maml": {"shots": {"5": {"steps": {"0": _cell(),
                                                  "5": _cell(eer=None)}}}},
          "transfer": {"shots": {"1": {"steps": {"100": _cell(
              ci95={"secs": 0.01, "eer": None},
              splits={"heldout_unseen": _cell()})}}}},
          "reference": {"real": _cell(mcd=None), "griffin_lim": _cell(),
                        "settings": {"sample_rate": 16000}}}


def test_schema_accepts_valid_metrics():
  schema.validate_metrics(_metrics())


@pytest.mark.parametrize("mutate,msg", [
    (lambda m: m.pop("reference"), "reference"),
    (lambda m: m.update({"maml": m.pop("meta-maml")}), "unknown method"),
    (lambda m: m["meta-maml"]["shots"].update({"five": {}}), "integer"),
    (lambda m: m["meta-maml"]["shots"]["5"]["steps"]["0"].pop("secs"),
     "missing key 'secs'"),
    (lambda m: m["meta-maml"]["shots"]["5"]["steps"]["0"].update(
        secs=float("nan")), "finite number"),
    (lambda m: m["meta-maml"]["shots"]["5"]["steps"]["0"].update(n=-1),
     "non-negative int"),
    (lambda m: m["meta-maml"]["shots"]["5"]["steps"]["0"].update(bogus=1),
     "unknown key"),
    (lambda m: m["transfer"]["shots"]["1"]["steps"]["100"]["splits"].update(
        heldout_other=_cell()), "split must be"),
    (lambda m: m["reference"].pop("real"), "real"),
])
def test_schema_rejects_bad_metrics(mutate, msg):
  m = copy.deepcopy(_metrics())
  mutate(m)
  with pytest.raises(ValueError, match=msg):
    schema.validate_metrics(m)
