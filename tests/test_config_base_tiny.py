"""``base.py:tiny`` end to end: every method of the base study and the vocoder.

The run of ``test_configs.py``'s ``run_case`` (a subprocess, the session's
XLA cache, the smoke sizes); a file of its own because it is the longest
test of the suite (about 4.5 minutes on one of the two pytest-xdist workers,
2026-12-01) and ``--dist loadfile`` schedules files, not tests.
"""

import json
import os

import numpy as np
import pytest

from metatts.experiments import tts

from test_configs import check_run, compile_cache, run_case  # noqa: F401  pylint: disable=unused-import


@pytest.mark.slow
def test_base_tiny_runs_every_method(tmp_path, compile_cache):
  c, result, stdout = run_case("base-tiny", str(tmp_path), compile_cache)
  methods = tuple(c.methods)
  assert c.name == "base-tiny" and len(methods) == 7
  assert set(methods) == set(tts.METHODS) - {"zeroshot"}
  assert c.train.init_from == "transfer" and c.vocoder.enabled
  workdir = str(tmp_path / "run")
  with open(os.path.join(workdir, "samples", "manifest.json")) as f:
    manifest = json.load(f)
  unseen = sorted(s for s, v in manifest["speakers"].items()
                  if v == "heldout_unseen")
  seen = sorted(s for s, v in manifest["speakers"].items()
                if v == "heldout_seen")
  assert unseen and seen
  run = check_run(c, workdir, result, methods, unseen, seen)
  for m in methods:
    # Equal budget: multi-inner-step learners make fewer (>= 1) steps.
    steps = tts.steps_for_budget(m, c.train)
    assert run["training"][m]["steps"] == steps, m
    assert os.path.isdir(os.path.join(workdir, m, "checkpoints",
                                      str(steps))), m
    if m.startswith("meta-"):  # started from the transfer export
      source = os.path.join(workdir, "transfer", "model")
      assert f"[{m}] initialized from {source} (transfer)." in stdout, m
  # The vocoder was meta-trained, exported and judged on held-out speakers.
  for split in ("heldout_seen", "heldout_unseen"):
    for s in ("0", "2"):
      assert np.isfinite(run["vocoder"]["heldout_nll"][split]["1"][s])
  from metatts.training import export  # pylint: disable=g-import-not-at-top
  vmodel, _, vinfo, _ = export.load_exported(os.path.join(workdir, "vocoder"))
  assert vinfo["model"] == "wavenet"
  assert vmodel.config.n_mels == c.data.features.n_mels

