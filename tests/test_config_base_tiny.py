"""The ``base.py`` study end to end at the smoke sizes: every method.

The run of ``test_configs.py``'s ``run_case`` (a subprocess, the session's
XLA cache, the smoke sizes with the study's duration Tacotron on phonemes);
a file of its own because it is the longest test of the suite and
``--dist loadfile`` schedules files, not tests.
"""

import json
import os

import pytest

from metatts.experiments import tts

from test_configs import check_run, compile_cache, run_case  # noqa: F401  pylint: disable=unused-import


@pytest.mark.slow
def test_base_study_runs_every_method(tmp_path, compile_cache):
  c, result, stdout = run_case("base-tiny", str(tmp_path), compile_cache)
  methods = tuple(c.methods)
  assert c.name == "base-study" and len(methods) == 6
  assert set(methods) == {"transfer", "multitask", "zeroshot", "meta-maml",
                          "meta-fomaml", "meta-reptile"}
  assert c.train.init_from == "transfer" and not c.vocoder.enabled
  assert int(c.adapt.workers) == 2
  workdir = str(tmp_path / "run")
  with open(os.path.join(workdir, "samples", "manifest.json")) as f:
    manifest = json.load(f)
  unseen = sorted(s for s, v in manifest["speakers"].items()
                  if v == "heldout_unseen")
  seen = sorted(s for s, v in manifest["speakers"].items()
                if v == "heldout_seen")
  assert unseen and seen
  run = check_run(c, workdir, result, methods, unseen, seen)
  assert run["model"] == "duration_tacotron"
  # One budget: the methods that start from transfer's step-1 export add
  # their own passes to transfer's first step's.
  source = os.path.join(workdir, "transfer", "model_at_1")
  first = tts.clip_passes("transfer", c.train, 1)
  for m in methods:
    steps = tts.steps_for_budget(m, c.train)
    assert run["training"][m]["steps"] == steps, m
    assert os.path.isdir(os.path.join(workdir, m, "checkpoints",
                                      str(steps))), m
    if m not in ("transfer", "multitask"):
      assert f"[{m}] initialized from {source} (transfer, step 1)." in stdout, m
      assert first + run["budget"][m] <= run["budget"]["transfer"] + (
          tts.clip_passes(m, c.train, 1)), m
  # The methods were adapted in two processes, each one once.
  for m in methods + ("scratch",):
    assert os.path.isfile(os.path.join(workdir, "samples", m,
                                       "adapted.json")), m
