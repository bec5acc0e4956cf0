"""Tests of metatts.training.export: round trip, validation, clear errors."""

import json
import os

import jax
import numpy as np
import pytest

from metatts import functional
from metatts.data.features import FeatureConfig
from metatts.models import tacotron
from metatts.training import export

ADAPT = dict(filter="speaker+decoder", optimizer="sgd", lr=0.01,
             default_steps=20, speaker_slot=4)


@pytest.fixture(scope="module")
def tiny():
  """A tiny Tacotron config and random params of its exact structure."""
  config = tacotron.tacotron_config("tiny", num_speakers=5, num_mels=20)
  model, _ = export.build_from_config(
      "tacotron", export.config_to_dict(config), abstract=True)
  _, shapes, _ = functional.split(model)
  leaves, treedef = jax.tree_util.tree_flatten(shapes)
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_unflatten(
      treedef, [rng.standard_normal(x.shape).astype(np.float32)
                for x in leaves])
  return config, params


def _export(directory, config, params, **kw):
  args = dict(method="meta-metasgd", model_name="tacotron",
              model_config=config, params=params,
              feature_config=FeatureConfig(n_mels=20), symbols="characters",
              speakers=["s0", "s1", "s2", "s3"], adapt=ADAPT)
  args.update(kw)
  return export.export_model(directory, **args)


def test_round_trip_params_info_and_extra(tiny, tmp_path):
  config, params = tiny
  extra = [np.full((3, 2), 0.1, np.float32), np.full((), 0.2, np.float32)]
  d = _export(str(tmp_path / "meta-metasgd" / "model"), config, params,
              extra=extra, info={"train_steps": 7})
  # Loading from the method folder finds model/ inside it.
  model, loaded, info, ex = export.load_exported(str(tmp_path /
                                                     "meta-metasgd"))
  assert info["directory"] == d
  for a, b in zip(jax.tree_util.tree_leaves(params),
                  jax.tree_util.tree_leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (jax.tree_util.tree_structure(params)
          == jax.tree_util.tree_structure(loaded))
  assert model.config == config
  # The merged model carries the restored values.
  _, merged, _ = functional.split(model)
  np.testing.assert_array_equal(
      np.asarray(merged["speaker"]["table"]["embedding"]),
      params["speaker"]["table"]["embedding"])
  assert info["format"] == "metatts-model" and info["version"] == 1
  assert info["adapt"] == ADAPT and info["speakers"] == ["s0", "s1", "s2",
                                                          "s3"]
  assert info["feature_config"]["n_mels"] == 20
  assert info["learned_lrs"] and info["train_steps"] == 7
  assert len(ex) == 2
  np.testing.assert_array_equal(ex[0], extra[0])
  np.testing.assert_array_equal(ex[1], extra[1])


def test_overwrite_replaces_and_no_extra(tiny, tmp_path):
  config, params = tiny
  d = str(tmp_path / "transfer" / "model")
  _export(d, config, params, extra=[np.ones((2,), np.float32)])
  params2 = jax.tree.map(lambda x: x + 1.0, params)
  _export(d, config, params2, method="transfer")
  _, loaded, info, ex = export.load_exported(d)
  assert ex is None and not info["learned_lrs"] and info["method"] == "transfer"
  for a, b in zip(jax.tree_util.tree_leaves(params2),
                  jax.tree_util.tree_leaves(loaded)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # No temporary folders are left next to the export.
  assert sorted(os.listdir(tmp_path / "transfer")) == ["model"]


def test_retrained_weights_change_the_samples_fingerprint(tiny, tmp_path):
  """Two exports with the same config and different weights must not share
  adapted samples: model.json carries a digest of the weights (the adaptation
  fingerprint hashes model.json), and equal weights give equal digests."""
  from metatts.experiments import adaptation
  config, params = tiny
  a = _export(str(tmp_path / "a" / "model"), config, params,
              method="transfer")
  b = _export(str(tmp_path / "b" / "model"), config, params,
              method="transfer")
  nudged = jax.tree.map(lambda x: x, params)
  nudged["speaker"]["table"]["embedding"] = (
      params["speaker"]["table"]["embedding"] + np.float32(1e-3))
  c = _export(str(tmp_path / "c" / "model"), config, nudged,
              method="transfer")
  digests = [export.read_model_json(d)["params_sha256"] for d in (a, b, c)]
  assert digests[0] == digests[1] != digests[2]
  assert digests[0] == export.params_digest(params, None)
  protocol = adaptation.Protocol(
      filter="speaker+decoder", optimizer="sgd", lr=0.01, steps=(0,),
      shots=(1,), num_eval=1, seed=0, speaker_slot=4)
  keys = [adaptation.fingerprint(d, [], protocol, 4) for d in (a, b, c)]
  assert keys[0] == keys[1] != keys[2]


def test_bad_inputs_raise_clear_errors(tiny, tmp_path):
  config, params = tiny
  with pytest.raises(FileNotFoundError, match="model.json is missing"):
    export.load_exported(str(tmp_path / "nothing"))
  with pytest.raises(ValueError, match="optimizer"):
    _export(str(tmp_path / "a"), config, params,
            adapt=dict(ADAPT, optimizer="rmsprop"))
  with pytest.raises(ValueError, match="lacks"):
    _export(str(tmp_path / "a"), config, params, adapt={"filter": "all"})
  bad = dict(params)
  bad["speaker"] = {"table": {"embedding": np.zeros((9, 16), np.float32)}}
  with pytest.raises(ValueError, match="shape"):
    _export(str(tmp_path / "a"), config, bad)
  d = _export(str(tmp_path / "b"), config, params)
  with open(os.path.join(d, "model.json"), "w") as f:
    f.write("{not json")
  with pytest.raises(export.ExportError, match="unreadable"):
    export.load_exported(d)
  with open(os.path.join(d, "model.json"), "w") as f:
    json.dump({"format": "something-else"}, f)
  with pytest.raises(export.ExportError, match="not a metatts model"):
    export.load_exported(d)
  d = _export(str(tmp_path / "c"), config, params)
  for root, _, files in os.walk(os.path.join(d, "params")):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  with pytest.raises((export.ExportError, FileNotFoundError),
                     match="Re-run training"):
    export.load_exported(d)
