"""The smoke run with the duration Tacotron on phonemes (its own file so that
pytest-xdist's ``--dist loadfile`` runs it beside ``test_tts_experiment.py``).

* every method trains and exports the duration Tacotron;
* the meta-learner starts half-way through ``transfer``
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

from tts_smoke import check_evaluation_equals_api as _check_evaluation_equals_api
from tts_smoke import final_params as _final_params
from tts_smoke import smoke_config as _smoke_config


@pytest.fixture(scope="module")
def duration_smoke(tmp_path_factory):
  """The smoke run with the duration Tacotron on phonemes, the
  meta-learner started from the transfer export."""
  tmp = str(tmp_path_factory.mktemp("tts_duration"))
  config = _smoke_config(tmp)
  config.model = {"name": "duration_tacotron", "size": "tiny",
                  "embed_dim": 16, "encoder_dim": 16, "encoder_num_convs": 1,
                  "aligner_dim": 16, "duration_dim": 16, "decoder_dim": 16,
                  "decoder_num_convs": 2, "postnet_dim": 16,
                  "postnet_num_convs": 2, "speaker_dim": 8,
                  "max_frames": 320}
  config.data.features.symbols = "phonemes"
  config.train.init_from = "transfer"
  # The meta-learner starts from transfer's step-2 export and trains for the
  # other half of the budget; two processes adapt the two methods.
  config.train.init_from_fraction = 0.5
  config.adapt.workers = 2
  config.vocoder.enabled = False
  # One support size and no untrained baseline: each extra support size
  # compiles every adaptation program again (the smoke run covers both).
  config.adapt.shots = (2,)
  config.adapt.scratch = False
  workdir = os.path.join(tmp, "run")
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    result = tts.run(config, workdir)
  return types.SimpleNamespace(tmp=tmp, config=config, workdir=workdir,
                               result=result, stdout=out.getvalue())


@pytest.mark.slow
def test_duration_model_runs_end_to_end(duration_smoke, tmp_path):
  """The duration model's path: every method trains and exports the
  duration Tacotron, the meta-learner starts from the transfer export, and
  the evaluation's audio is the API's, sample for sample."""
  w = duration_smoke.workdir
  for method in ("transfer", "meta-fomaml"):
    params, info = _final_params(os.path.join(w, method))
    assert info["model"] == "duration_tacotron", info["model"]
    assert {"aligner", "duration", "decoder", "speaker"} <= set(params)
  run = json.load(open(os.path.join(w, "run.json")))
  assert run["methods"] == ["transfer", "meta-fomaml"]
  # One budget: transfer's passes up to its step 2 plus meta-fomaml's own
  # are transfer's 4 steps' passes.
  c = duration_smoke.config
  assert run["training"]["transfer"]["steps"] == 4
  assert (tts.clip_passes("transfer", c.train, 2) + run["budget"]["meta-fomaml"]
          == run["budget"]["transfer"])
  source = os.path.join(w, "transfer", "model_at_2")
  _, info = _final_params(os.path.join(w, "transfer"))
  assert info["train_steps"] == 4
  from metatts.training import export  # pylint: disable=g-import-not-at-top
  assert export.read_model_json(source)["train_steps"] == 2
  assert (f"[meta-fomaml] initialized from {source} (transfer, step 2)."
          in duration_smoke.stdout), duration_smoke.stdout[-2000:]
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
