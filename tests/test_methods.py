"""Tests of the method registry ``metatts.methods``.

* every method of the configs resolves, says how a new voice starts and
  which learner trains it; an unknown name fails with the list;
* no code outside the registry branches on a method's name;
* the ``multitask`` method's loss is the acoustic model's loss plus the
  weighted speaker cross-entropy of the pooled generated mel plus the L2 of
  the trunk, computed here by hand from the same parameters;
* the compute budget and the mean new-voice row;
* ``zeroshot`` started from an ``init_from`` export takes every acoustic
  parameter that export has, and only those.
"""

import os
import re
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from metatts import functional
from metatts import methods
from metatts.methods import base
from metatts.models import layers
from metatts.types import TTSBatch

from test_api import FEATURES, random_params  # noqa: E402  pylint: disable=g-import-not-at-top

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "metatts")


def test_registry_names_learners_and_new_voices():
  assert set(methods.METHODS) == {
      "transfer", "multitask", "zeroshot", "meta-maml", "meta-fomaml",
      "meta-metasgd", "meta-reptile", "meta-imaml", "meta-maml-encoder",
      "meta-fomaml-encoder", "scratch"}
  for name, m in methods.METHODS.items():
    assert m.name == name
    assert m.new_voice in base.NEW_VOICE
  assert methods.get("meta-reptile").learner_name == "reptile"
  assert methods.get("transfer").new_voice == "mean_row"
  assert methods.get("zeroshot").new_voice == "encoder"
  assert methods.get("meta-fomaml").slot_tasks
  assert methods.get("meta-maml-encoder").new_voice == "encoder"
  assert not methods.get("scratch").trains
  assert set(methods.trained()) == set(methods.METHODS) - {"scratch"}
  with pytest.raises(ValueError, match="meta-foo.*known methods"):
    methods.get("meta-foo")


def test_no_method_name_branches_outside_the_registry():
  names = "|".join(re.escape(n) for n in methods.METHODS)
  pattern = re.compile(
      rf"""(==|!=)\s*["']({names})["']|["']({names})["']\s*(==|!=)"""
      r"""|startswith\(["']meta-["']\)|\bis_meta\b""")
  found = []
  for root, _, files in os.walk(PACKAGE):
    if os.path.basename(root) == "methods":
      continue
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(root, f)
        with open(path, encoding="utf-8") as fh:
          for i, line in enumerate(fh, 1):
            if pattern.search(line):
              found.append(f"{path}:{i}: {line.strip()}")
  assert not found, found


def _context(num_speakers=3):
  config, params = random_params(0, num_speakers=num_speakers + 1)
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from metatts.models import build_model  # pylint: disable=g-import-not-at-top
  graphdef, _, rest = functional.split(
      nnx.eval_shape(lambda: build_model("tacotron", config, 0)))
  cfg = ml_collections.ConfigDict({
      "seed": 0, "train": {"multitask_weight": 0.3, "multitask_l2": 1e-3}})
  data = types.SimpleNamespace(feature_config=FEATURES,
                               speakers=[f"s{i}" for i in range(num_speakers)])
  ctx = base.Context(cfg, data, "/nonexistent", "tacotron", config, graphdef,
                     rest, params, lambda slot: None)
  return ctx, params


def _batch(rng, b=3, l=9, t=24, m=20):
  return TTSBatch(
      tokens=jnp.asarray(rng.integers(1, 30, (b, l)), jnp.int32),
      token_lengths=jnp.asarray([9, 7, 5], jnp.int32),
      mels=jnp.asarray(rng.standard_normal((b, t, m)), jnp.float32),
      mel_lengths=jnp.asarray([24, 20, 13], jnp.int32),
      speaker_ids=jnp.asarray([0, 2, 1], jnp.int32), seeds=None)


def _pooled_ce_and_l2(mel_after, batch, head, params):
  """By hand in float64: the speaker cross-entropy of a linear softmax
  classifier on the mel averaged over valid frames, and the params' L2."""
  mask = np.asarray(layers.length_mask(batch.mel_lengths,
                                       mel_after.shape[1]), np.float64)
  mel = np.asarray(mel_after, np.float64)
  pooled = (mel * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  logits = pooled @ np.asarray(head["kernel"], np.float64) + np.asarray(
      head["bias"], np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ids = np.asarray(batch.speaker_ids)
  ce = -np.mean(logp[np.arange(len(ids)), ids])
  l2 = sum(float(np.sum(np.square(np.asarray(x, np.float64))))
           for x in jax.tree_util.tree_leaves(params))
  return ce, l2


def test_multitask_loss_matches_hand_computation():
  ctx, params = _context()
  setup = methods.get("multitask").setup(ctx, params)
  p = setup.params
  head = p["heads"]["speaker"]["classifier"]["linear"]
  assert head["kernel"].shape == (FEATURES.n_mels, 3)
  for a, b in zip(jax.tree_util.tree_leaves(p["trunk"]["acoustic"]),
                  jax.tree_util.tree_leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  batch = _batch(np.random.default_rng(0))
  loss, aux = jax.jit(setup.loss_fn)(p, batch)
  # By hand: the Tacotron's loss, its post-net mel averaged over valid
  # frames, a linear softmax classifier, the L2 of the Tacotron's params.
  model = functional.merge(ctx.graphdef, params, ctx.rest)
  mel_loss, _ = model.loss(batch)
  ce, l2 = _pooled_ce_and_l2(model(batch).mel_after, batch, head, params)
  want = float(mel_loss) + 0.3 * ce + 1e-3 * l2
  np.testing.assert_allclose(float(loss), want, rtol=2e-5)
  np.testing.assert_allclose(float(aux["speaker_ce"]), ce, rtol=2e-5)
  # Only the trunk is exported, its new-voice row set to the trained mean.
  exported = methods.get("multitask").trained_params(ctx, p)
  table = np.asarray(exported["speaker"]["table"]["embedding"])
  np.testing.assert_allclose(table[3], table[:3].mean(0), rtol=1e-6)


def test_multitask_pools_the_duration_models_teacher_forced_mel():
  """With the duration Tacotron (no forward pass of its own) the speaker
  head pools the loss's teacher-forced post-net mel: the same total as by
  hand from ``model.loss``."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from metatts.models import build_model  # pylint: disable=g-import-not-at-top
  cfg = {"size": "tiny", "num_symbols": 40, "num_mels": 20,
         "num_speakers": 4, "embed_dim": 16, "encoder_dim": 16,
         "encoder_num_convs": 1, "aligner_dim": 16, "duration_dim": 16,
         "decoder_dim": 16, "decoder_num_convs": 2, "postnet_dim": 16,
         "postnet_num_convs": 2, "speaker_dim": 8, "max_frames": 64}
  graphdef, params, rest = functional.split(nnx.jit(
      lambda: build_model("duration_tacotron", cfg, nnx.Rngs(0)))())
  ctx, _ = _context()
  ctx = ctx._replace(model_name="duration_tacotron", graphdef=graphdef,
                     rest=rest, params0=params)
  setup = methods.get("multitask").setup(ctx, params)
  head = setup.params["heads"]["speaker"]["classifier"]["linear"]
  batch = _batch(np.random.default_rng(1))
  loss, aux = jax.jit(setup.loss_fn)(setup.params, batch)
  assert "mel_after" not in aux and "speaker_ce" in aux
  model = functional.merge(graphdef, params, rest)
  mel_loss, maux = model.loss(batch)
  ce, l2 = _pooled_ce_and_l2(maux["mel_after"], batch, head, params)
  np.testing.assert_allclose(float(aux["speaker_ce"]), ce, rtol=2e-5)
  np.testing.assert_allclose(float(loss),
                             float(mel_loss) + 0.3 * ce + 1e-3 * l2,
                             rtol=2e-5)


def test_multitask_names_a_model_without_a_teacher_forced_forward(
    monkeypatch):
  ctx, params = _context()
  ctx = ctx._replace(model_name="no_forward")

  class NoForward:  # an acoustic model with only loss / infer
    pass

  from metatts.methods import multitask  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(multitask.functional, "merge",
                      lambda *args: NoForward())
  with pytest.raises(ValueError, match="no_forward.*mel_after"):
    methods.get("multitask").setup(ctx, params)


def test_zeroshot_warm_start_takes_every_fitting_acoustic_parameter():
  ctx, params = _context()
  ctx.config.train.speaker_encoder_size = "tiny"
  z = methods.get("zeroshot")
  assert z.uses_init_from
  cold = z.setup(ctx, ctx.params0).params  # no init_from: random
  source = jax.tree.map(lambda x: x + 1.0, params)  # an "export"
  warm = z.setup(ctx, source).params
  src = {jax.tree_util.keystr(k): v
         for k, v in jax.tree_util.tree_leaves_with_path(source)}
  taken = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(warm["acoustic"]):
    key = jax.tree_util.keystr(path)
    ref = dict(jax.tree_util.tree_leaves_with_path(cold["acoustic"]))[path]
    if "'proj'" in key:  # the encoder-vector projection: no counterpart
      assert key not in src
      np.testing.assert_array_equal(np.asarray(leaf), np.asarray(ref))
    else:
      np.testing.assert_array_equal(np.asarray(leaf), np.asarray(src[key]))
      taken += 1
  # All of the export but its speaker table.
  assert taken == len(src) - 1, (taken, len(src))
  assert "table" not in warm["acoustic"]["speaker"]
  for a, b in zip(jax.tree_util.tree_leaves(warm["speaker_encoder"]),
                  jax.tree_util.tree_leaves(cold["speaker_encoder"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_meta_outer_lr_sets_only_the_meta_learners_outer_adam():
  """Adam's first update moves every parameter by its rate (g / |g|)."""
  from metatts.types import Task  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 3, 4)).astype(np.float32)
  y = rng.normal(size=(2, 3, 1)).astype(np.float32)
  tasks = Task(support=(x, y), query=(x, y))
  params = {"w": np.ones((4, 1), np.float32)}

  def loss(p, batch):
    return jnp.mean((batch[0] @ p["w"] - batch[1]) ** 2), {}

  def moved(learner_name, meta_outer_lr):
    t = ml_collections.ConfigDict({
        "inner_lr": 0.01, "outer_lr": 1e-3, "meta_outer_lr": meta_outer_lr,
        "inner_steps": {}, "reptile_epsilon": 0.5})
    learner = base.learner_for(learner_name, t, "all")
    state = learner.init(params)
    new, _ = learner.step(state, tasks, loss)
    return np.abs(np.asarray(new.params["w"]) - 1.0)

  np.testing.assert_allclose(moved("fomaml", 1e-4), 1e-4, rtol=1e-3)
  # Reptile: epsilon * (theta - phi) by default; through Adam (the first
  # step moves every entry by the rate) with reptile_outer="adam".
  t = ml_collections.ConfigDict({
      "inner_lr": 0.01, "outer_lr": 1e-3, "meta_outer_lr": 1e-4,
      "inner_steps": {"reptile": 2}, "reptile_epsilon": 0.5,
      "reptile_outer": "adam"})
  learner = base.learner_for("reptile", t, "all")
  new, _ = learner.step(learner.init(params), tasks, loss)
  np.testing.assert_allclose(np.abs(np.asarray(new.params["w"]) - 1.0), 1e-4,
                             rtol=1e-3)
  t.reptile_outer = "sgd"
  learner = base.learner_for("reptile", t, "all")
  new, _ = learner.step(learner.init(params), tasks, loss)
  phis = []
  for xb, yb in zip(x, y):  # each task's 2 inner SGD steps, by hand
    phi = params["w"].astype(np.float64)
    for _ in range(2):
      phi = phi - 0.01 * 2 * xb.T @ (xb @ phi - yb) / yb.size
    phis.append(phi)
  np.testing.assert_allclose(np.asarray(new.params["w"]),
                             1.0 + 0.5 * (np.mean(phis, 0) - 1.0), rtol=1e-5)
  np.testing.assert_allclose(moved("maml", 1e-4), 1e-4, rtol=1e-3)
  np.testing.assert_allclose(moved("fomaml", 0.0), 1e-3, rtol=1e-3)
  np.testing.assert_allclose(moved("pretrain", 1e-4), 1e-3, rtol=1e-3)


def test_budget_counts_clip_passes():
  t = ml_collections.ConfigDict({
      "num_steps": 150, "num_tasks": 4, "num_support": 5, "num_query": 5,
      "equal_budget": True, "inner_steps": {"fomaml": 5, "reptile": 3}})
  assert methods.get("transfer").clip_passes(t, 10) == 10 * 4 * 10
  assert methods.get("meta-fomaml").clip_passes(t, 1) == 4 * (5 * 5 + 5)
  assert methods.get("meta-reptile").clip_passes(t, 1) == 4 * 5 * 3
  # 150 * 40 passes of transfer = 50 steps of 5-inner-step FOMAML.
  assert methods.get("meta-fomaml").steps_for_budget(t) == 50
  assert methods.get("scratch").steps_for_budget(t) == 0


def test_init_from_fraction_splits_one_budget_between_source_and_method():
  t = ml_collections.ConfigDict({
      "num_steps": 150, "num_tasks": 4, "num_support": 5, "num_query": 5,
      "equal_budget": True, "inner_steps": {"fomaml": 5, "reptile": 3},
      "init_from": "transfer", "init_from_fraction": 2 / 3})
  assert base.init_source(t) == ("transfer", 100, pytest.approx(1 / 3))
  assert methods.get("transfer").steps_for_budget(t) == 150
  assert methods.get("multitask").steps_for_budget(t) == 150  # no init_from
  # 50 pre-training steps' passes (50 * 40) = 16.7 FOMAML steps of 120.
  assert methods.get("meta-fomaml").steps_for_budget(t) == 17
  assert methods.get("meta-reptile").steps_for_budget(t) == 33  # 2000 / 60
  assert methods.get("zeroshot").steps_for_budget(t) == 50
  # Source passes up to step 100 + own passes = the whole budget (+ rounding).
  total = (methods.get("transfer").clip_passes(t, 100) +
           methods.get("meta-fomaml").clip_passes(t, 17))
  assert abs(total - 150 * 40) <= methods.get("meta-fomaml").clip_passes(t, 1)
  ctx = types.SimpleNamespace(config=ml_collections.ConfigDict(
      {"train": t, "methods": ("transfer", "meta-fomaml", "multitask")}))
  assert methods.get("transfer").init_exports(ctx) == (100,)
  assert methods.get("meta-fomaml").init_exports(ctx) == ()
  # Nobody of this run starts from it: still made, for a later run of the
  # workdir with more methods (it cannot be made after step 100).
  ctx.config.methods = ("transfer", "multitask")
  assert methods.get("transfer").init_exports(ctx) == (100,)
  t.init_from_fraction = 0.0  # the final export: every method's own budget
  assert base.init_source(t) is None
  assert methods.get("meta-fomaml").steps_for_budget(t) == 50
  t.init_from_fraction = 1.0
  with pytest.raises(ValueError, match="init_from_fraction=1.0.*in \\[0, 1\\)"):
    base.init_source(t)
  t.init_from_fraction, t.init_from = 0.5, "/some/export"
  with pytest.raises(ValueError, match="name a trained method"):
    base.init_source(t)


def _encoder_start(rng_seed=0):
  """``meta-fomaml-encoder``'s setup warm-started from a table export, with
  a random offset, and a batch of one speaker's clips (a task's)."""
  from metatts.methods import meta_encoder  # pylint: disable=g-import-not-at-top
  ctx, params = _context()
  ctx.config.train.speaker_encoder_size = "tiny"
  m = methods.get("meta-fomaml-encoder")
  setup = m.setup(ctx, jax.tree.map(lambda x: x + 0.5, params))
  rng = np.random.default_rng(rng_seed)
  p = dict(setup.params)
  p[meta_encoder.OFFSET] = jnp.asarray(
      rng.standard_normal(p[meta_encoder.OFFSET].shape), jnp.float32)
  batch = _batch(rng)._replace(speaker_ids=jnp.asarray([3, 3, 3], jnp.int32))
  return ctx, m, setup, p, batch


def test_meta_encoder_folds_its_offset_into_the_exported_projection():
  """The exported zero-shot model, given the encoder's vector, computes
  what the trained one computed with vector + offset."""
  from metatts.methods import meta_encoder  # pylint: disable=g-import-not-at-top
  from metatts.methods import zeroshot  # pylint: disable=g-import-not-at-top
  ctx, m, setup, p, batch = _encoder_start()
  assert m.new_voice == "encoder" and m.learner_name == "fomaml"
  assert set(setup.params) == {"acoustic", "speaker_encoder",
                               meta_encoder.OFFSET}
  np.testing.assert_array_equal(np.asarray(setup.params[meta_encoder.OFFSET]),
                                0.0)
  graphdef, rest, egd, erest, _ = zeroshot.build(ctx, 0)
  plain = zeroshot.ZeroShotLoss(graphdef, rest, egd, erest)
  trained, _ = setup.loss_fn(p, batch)
  folded = meta_encoder.fold_offset(p)
  assert set(folded) == {"acoustic", "speaker_encoder"}
  exported, _ = plain(folded, batch)
  np.testing.assert_allclose(float(exported), float(trained), rtol=1e-5)
  # The offset matters (so the equality above is not vacuous).
  unfolded, _ = plain({k: p[k] for k in folded}, batch)
  assert abs(float(unfolded) - float(trained)) > 1e-3 * abs(float(trained))


def test_meta_encoder_inner_loop_adapts_offset_and_filter_not_the_encoder():
  from metatts.methods import meta_encoder  # pylint: disable=g-import-not-at-top
  ctx, m, setup, p, batch = _encoder_start(1)
  t = ml_collections.ConfigDict({
      "inner_lr": 1e-5, "outer_lr": 1e-3, "inner_steps": {"fomaml": 1},
      "reptile_epsilon": 0.5})
  learner = m.learner(t, "speaker+decoder")
  state = learner.init(p)
  adapted, losses = learner.adapt(state, batch, setup.loss_fn, num_steps=2)
  assert float(losses[-1]) < float(losses[0])
  moved = {jax.tree_util.keystr(k): not np.array_equal(np.asarray(a),
                                                       np.asarray(b))
           for (k, a), b in zip(jax.tree_util.tree_leaves_with_path(p),
                                jax.tree_util.tree_leaves(adapted))}
  enc = [k for k in moved if k.startswith("['speaker_encoder']")]
  assert enc and not any(moved[k] for k in enc)
  assert moved[f"['{meta_encoder.OFFSET}']"]
  assert any(v for k, v in moved.items() if "['decoder']" in k)
  assert any(v for k, v in moved.items() if "['proj']" in k)
  text = [k for k in moved if k.startswith("['acoustic']['encoder']")]
  assert text and not any(moved[k] for k in text)
