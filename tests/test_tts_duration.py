"""The ``base.py`` study at the smoke sizes: the duration Tacotron on phonemes
through every method, in one run that the tests below share (their own file
so that pytest-xdist's ``--dist loadfile`` runs it beside
``test_tts_experiment.py``; it is the longest fixture of the suite).

* every method of the study trains and exports the duration Tacotron;
* the methods that start from transfer start part-way through it
  (``config.train.init_from_fraction``), on one budget;
* two processes adapt the methods (``config.adapt.workers``) and their audio
  is the API's in this process, sample for sample; a rerun adapts nothing.
"""

import contextlib
import io
import json
import os
import types

import pytest

from metatts.experiments import adaptation
from metatts.experiments import tts

from test_configs import build_case, check_run
from tts_smoke import check_evaluation_equals_api as _check_evaluation_equals_api
from tts_smoke import final_params as _final_params

@pytest.fixture(scope="module")
def study(tmp_path_factory):
  """``base.py`` (the study) with the smoke corpus and sizes, 2 training
  steps per method and one support size (``test_configs.build_case``)."""
  tmp = str(tmp_path_factory.mktemp("base_study"))
  config = build_case("base-tiny", tmp, write=False)
  workdir = os.path.join(tmp, "run")
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    result = tts.run(config, workdir)
  return types.SimpleNamespace(tmp=tmp, config=config, workdir=workdir,
                               result=result, stdout=out.getvalue())


@pytest.mark.slow
def test_base_study_runs_every_method(study):
  c, workdir = study.config, study.workdir
  methods = tuple(c.methods)
  assert c.name == "base-study" and len(methods) == 6
  assert set(methods) == {"transfer", "multitask", "zeroshot", "meta-maml",
                          "meta-fomaml", "meta-reptile"}
  assert c.train.init_from == "transfer" and not c.vocoder.enabled
  assert int(c.adapt.workers) == 2
  with open(os.path.join(workdir, "samples", "manifest.json")) as f:
    manifest = json.load(f)
  unseen = sorted(s for s, v in manifest["speakers"].items()
                  if v == "heldout_unseen")
  seen = sorted(s for s, v in manifest["speakers"].items()
                if v == "heldout_seen")
  assert unseen and seen
  run = check_run(c, workdir, study.result, methods, unseen, seen)
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
      # Trained in a worker process: the record is run.json's.
      assert run["training"][m]["initialized_from"] == {
          "export": source, "method": "transfer", "step": 1}, m
    else:
      assert run["training"][m]["initialized_from"] is None, m
      assert first + run["budget"][m] <= run["budget"]["transfer"] + (
          tts.clip_passes(m, c.train, 1)), m
  # The methods were adapted in two processes, each one once.
  for m in methods + ("scratch",):
    assert os.path.isfile(os.path.join(workdir, "samples", m,
                                       "adapted.json")), m


@pytest.mark.slow
def test_duration_model_runs_end_to_end(study, tmp_path):
  """The duration model's path: every method exports the duration
  Tacotron, and the evaluation's audio (adapted in two worker processes) is
  the API's in this process, sample for sample; a rerun adapts nothing."""
  w, c = study.workdir, study.config
  for method in c.methods:
    params, info = _final_params(os.path.join(w, method))
    assert info["model"] == "duration_tacotron", (method, info["model"])
    assert {"aligner", "duration", "decoder", "speaker"} <= set(params)
  run = json.load(open(os.path.join(w, "run.json")))
  from metatts.training import export  # pylint: disable=g-import-not-at-top
  _, info = _final_params(os.path.join(w, "transfer"))
  assert info["train_steps"] == 2
  assert export.read_model_json(
      os.path.join(w, "transfer", "model_at_1"))["train_steps"] == 1
  # Adapted in two worker processes: the same audio as the API in this one.
  _check_evaluation_equals_api(c, w, tmp_path, ("transfer", "meta-fomaml"))
  # A rerun of the adaptation stage adapts nothing again.
  data = tts.prepare_data(c, progress=False)
  protocol, speakers = tts.evaluation_clips(c, data)
  exports = {m: os.path.join(w, m, "model") for m in run["methods"]}
  again = adaptation.run_methods(exports, speakers,
                                 os.path.join(w, "samples"), protocol,
                                 int(c.adapt.griffin_lim_iters), progress=False)
  assert again["_adapted"] == []
  assert again["meta-fomaml"] == json.load(open(os.path.join(
      w, "samples", "protocol.json")))["meta-fomaml"]
