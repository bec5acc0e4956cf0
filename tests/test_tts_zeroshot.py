"""Tests of the ``zeroshot`` method of metatts.experiments.tts.

One module fixture builds the smoke corpus (``quickstart.py:smoke``) and
trains ``zeroshot`` on it; the tests check that

* the joint loss goes down on a fixed batch and its gradient reaches the
  speaker encoder (it is trained through reconstruction);
* the leave-one-out reference vectors equal a hand computation from the
  encoder's clip vectors;
* the 0-step adaptation is conditioned on the encoder's vector of the support
  clips (other clips -> another vector -> another mel) and the protocol's
  steps adapt that vector;
* samples are written in the shared layout under ``zeroshot`` and the export
  loads back with the trained parameters.
"""

import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatts import clips
from metatts import functional
from metatts import methods
from metatts import voice
from metatts.experiments import adaptation
from metatts.experiments import tts
from metatts.methods import zeroshot

from tts_smoke import smoke_config


def _smoke_config(tmp):
  c = smoke_config(tmp)
  c.methods = ("zeroshot",)
  c.train.num_steps = 6
  c.train.outer_lr = 3e-3
  return c


@pytest.fixture(scope="module")
def zs(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp("zeroshot"))
  config = _smoke_config(tmp)
  data = tts.prepare_data(config, progress=False)
  workdir = os.path.join(tmp, "run")
  ctx = tts.context(config, data, workdir)
  graphdef, rest, egd, erest, params0 = zeroshot.build(ctx, int(config.seed))
  trained = methods.get("zeroshot").train(ctx)
  loss_fn = zeroshot.ZeroShotLoss(graphdef, rest, egd, erest)
  task = next(tts.task_factory(data, config, None)(np.array([0, 0]), 0))
  batch = jax.tree.map(lambda x: jnp.asarray(x[0]), task.support)
  return types.SimpleNamespace(config=config, data=data, graphdef=graphdef,
                               rest=rest, egd=egd, erest=erest,
                               params0=params0, trained=trained,
                               raw_loss=loss_fn,
                               batch=batch, task=task, workdir=workdir)


@pytest.mark.slow
def test_training_lowers_loss_and_trains_the_encoder(zs):
  value_and_grad = jax.jit(jax.value_and_grad(
      lambda p, b: zs.raw_loss(p, b)[0]))
  # Trained parameters come back committed to the device (as restored ones
  # do); placed the same way, the initial ones must hit the same program.
  params0 = jax.device_put(zs.params0, jax.local_devices()[0])
  before, grads = value_and_grad(params0, zs.batch)
  after, _ = value_and_grad(zs.trained["params"], zs.batch)
  assert value_and_grad._cache_size() == 1  # pylint: disable=protected-access
  assert np.isfinite(float(before)) and float(after) < float(before)
  enc_norm = sum(float(jnp.sum(g * g)) for g in
                 jax.tree_util.tree_leaves(grads["speaker_encoder"]))
  assert enc_norm > 0.0
  # The trained encoder differs from its initialization.
  moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree_util.tree_leaves(zs.params0["speaker_encoder"]),
      jax.tree_util.tree_leaves(zs.trained["params"]["speaker_encoder"]))]
  assert max(moved) > 0.0
  # Same budget as transfer: N (K + Q) clip passes per step.
  t = zs.config.train
  assert zs.trained["clip_passes"] == 6 * t.num_tasks * (t.num_support +
                                                         t.num_query)


@pytest.mark.slow
def test_leave_one_out_vectors_match_hand_computation(zs):
  # Four clips: three of speaker 3, one alone (speaker 7).
  sup = zs.task.support
  b = jax.tree.map(lambda x: jnp.asarray(x.reshape((-1,) + x.shape[2:])),
                   sup)
  n = b.mels.shape[0]
  assert n == 4
  ids = np.array([3, 3, 3, 7])
  b = b._replace(speaker_ids=jnp.asarray(ids))
  v = np.asarray(zs.raw_loss.vectors(zs.params0["speaker_encoder"], b))
  enc = functional.merge(zs.egd, zs.params0["speaker_encoder"], zs.erest)
  e = np.asarray(enc(b.mels, b.mel_lengths))
  for i in range(n):
    others = [j for j in range(n) if j != i and ids[j] == ids[i]]
    want = e[others].mean(0) if others else e[i]
    want = want / np.linalg.norm(want)
    np.testing.assert_allclose(v[i], want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_adaptation_starts_from_the_encoder_vector_and_writes_samples(zs):
  c, data = zs.config, zs.data
  slot = len(data.speakers)
  protocol = adaptation.protocol_from_config(c.adapt, slot)
  lim_t, lim_f = data.buckets.tokens[-1], data.buckets.frames[-1]
  fits = lambda e: len(e.tokens) <= lim_t and e.mel.shape[0] <= lim_f  # noqa: E731
  speakers = adaptation.select_clips(data.heldout, protocol, 2, fits)
  assert speakers
  model = adaptation.load_model(
      os.path.join(zs.workdir, "zeroshot", "model"), 4)
  assert model.zeroshot and model.speaker_slot == slot
  sc = speakers[0]
  other = [e for e in data.train[data.speakers[0]] if fits(e)]

  def support(exs):
    return model.make_batch([clips.from_example(e) for e in exs])

  sup_a, sup_b = support(sc.support[:1]), support(other[:1])
  curve_a = voice.adapt(model, voice.start(model, sup_a), sup_a,
                        protocol.steps).params
  curve_b = voice.adapt(model, voice.start(model, sup_b), sup_b,
                        protocol.steps).params
  params = zs.trained["params"]
  enc = functional.merge(zs.egd, params["speaker_encoder"], zs.erest)
  from metatts.models import speaker_encoder  # pylint: disable=g-import-not-at-top
  want = speaker_encoder.speaker_vector(enc, sup_a.mels, sup_a.mel_lengths)
  np.testing.assert_allclose(np.asarray(curve_a[0]["speaker_vector"]),
                             np.asarray(want), rtol=1e-5, atol=1e-6)
  assert not np.allclose(curve_a[0]["speaker_vector"],
                         curve_b[0]["speaker_vector"])
  # One compilation per support shape.
  shapes = {sup_a.mels.shape, sup_b.mels.shape}
  assert model._encode_jit._cache_size() == len(shapes)  # pylint: disable=protected-access
  text = sc.evaluation[0].text
  mel_a = voice.synthesize(model, curve_a[0], slot, text).mel
  mel_b = voice.synthesize(model, curve_b[0], slot, text).mel
  assert (mel_a.shape != mel_b.shape or
          np.max(np.abs(mel_a - mel_b)) > 1e-6)
  # S > 0 steps move the vector (filter speaker+decoder) from its start.
  s = max(protocol.steps)
  assert s > 0
  assert not np.allclose(curve_a[s]["speaker_vector"],
                         curve_a[0]["speaker_vector"])
  # Samples in the shared layout.
  samples = os.path.join(zs.workdir, "samples")
  adaptation.run_method(model, "zeroshot", speakers[:1], samples, protocol,
                        progress=False)
  for k in protocol.shots:
    for st in protocol.steps:
      folder = os.path.join(samples, "zeroshot", f"shots_{k}", f"steps_{st}",
                            sc.speaker)
      for e in sc.evaluation:
        assert os.path.isfile(os.path.join(folder, e.utt_id + ".wav"))


@pytest.mark.slow
def test_export_loads_back(zs):
  model, encoder, params, info = zeroshot.load_zeroshot(
      os.path.join(zs.workdir, "zeroshot", "model"))
  assert info["method"] == "zeroshot"
  assert model.config.external_speaker_dim == encoder.config.embed_dim
  assert not model.config.use_speaker_table
  for a, b in zip(jax.tree_util.tree_leaves(params),
                  jax.tree_util.tree_leaves(zs.trained["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(FileNotFoundError, match="not a zeroshot export"):
    from metatts.training import export  # pylint: disable=g-import-not-at-top
    d = os.path.join(zs.workdir, "plain")
    export.export_model(
        d, method="x", model_name="tacotron", model_config=model.config,
        params=params["acoustic"], feature_config=zs.data.feature_config,
        symbols=zs.data.feature_config.symbols, speakers=zs.data.speakers,
        adapt=info["adapt"])
    zeroshot.load_zeroshot(d)


@pytest.mark.slow
def test_meta_encoder_trains_from_the_zeroshot_export_and_loads_as_one(zs):
  """``meta-fomaml-encoder`` started from the zeroshot export: it takes
  the export's encoder and acoustic model, trains both, and its export is
  a zeroshot export whose projection carries the folded offset."""
  from metatts.methods import meta_encoder  # pylint: disable=g-import-not-at-top
  c = zs.config.copy_and_resolve_references()
  c.methods = ("meta-fomaml-encoder",)
  c.train.init_from = os.path.join(zs.workdir, "zeroshot", "model")
  c.train.init_from_fraction = 0.0
  c.train.num_steps = 2
  c.train.equal_budget = False
  c.train.inner_steps.fomaml = 1
  ctx = tts.context(c, zs.data, zs.workdir)
  m = methods.get("meta-fomaml-encoder")
  start, source = m._initial(ctx)  # pylint: disable=protected-access
  assert source["method"] == "zeroshot"
  for a, b in zip(jax.tree_util.tree_leaves(start),
                  jax.tree_util.tree_leaves(zs.trained["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  out = m.train(ctx)
  p = out["params"]
  assert set(p) == {"acoustic", "speaker_encoder", meta_encoder.OFFSET}
  moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree_util.tree_leaves(p["speaker_encoder"]),
      jax.tree_util.tree_leaves(zs.trained["params"]["speaker_encoder"])))
  assert moved > 0.0  # the encoder learns through the query loss
  model = adaptation.load_model(out["export"], 4)
  assert model.zeroshot and model.info["method"] == "meta-fomaml-encoder"
  assert model.info["new_voice"] == "encoder"
  _, _, loaded, _ = zeroshot.load_zeroshot(out["export"])
  for a, b in zip(jax.tree_util.tree_leaves(loaded),
                  jax.tree_util.tree_leaves(meta_encoder.fold_offset(p))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6,
                               atol=1e-7)
