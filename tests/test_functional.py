"""Tests of metatts.functional (the NNX <-> pytree boundary) on Tacotron.

References: the model called directly, central finite differences of the
loss and of its gradient (for the Hessian-vector product), per-task calls
(for vmap), and hand-written parameter paths (for the filters). The tiny
Tacotron has both a speaker table and an external speaker vector.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metatts import functional as F
from metatts.models import MODELS, build_model
from metatts.types import TTSBatch

# The layer shapes of tests/test_tacotron.py (so that, in one pytest process,
# eager parameter initialization reuses its compiled kernels), plus an
# external speaker vector.
MICRO = dict(size="tiny", num_mels=16, num_symbols=12, num_speakers=2,
             external_speaker_dim=3)


def _batch(seed):
  rng = np.random.default_rng(seed)
  tts = TTSBatch(
      tokens=jnp.array([[1, 2, 3], [4, 5, 0]], jnp.int32),
      token_lengths=jnp.array([3, 2], jnp.int32),
      mels=jnp.asarray(rng.normal(size=(2, 6, 16)), jnp.float32),
      mel_lengths=jnp.array([6, 4], jnp.int32),
      speaker_ids=jnp.array([0, 1], jnp.int32))
  vectors = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
  return tts, vectors


def _loss(model, batch):
  # A custom loss for make_loss_fn: the batch carries speaker vectors.
  tts, vectors = batch
  return model.loss(tts, vectors)


@pytest.fixture(scope="module")
def env():
  model = build_model("tacotron", MICRO, nnx.Rngs(3))
  graphdef, params, rest = F.split(model)
  loss_fn = F.make_loss_fn(graphdef, rest, _loss)
  # The model called directly (the reference for loss_fn).
  direct = nnx.jit(lambda m, b: m.loss(*b))
  return dict(model=model, graphdef=graphdef, params=params, rest=rest,
              loss_fn=loss_fn, direct=direct, batch=_batch(0))


def _paths(params, mask):
  return {F.path_keys(p) for (p, m) in
          jax.tree_util.tree_leaves_with_path(mask) if m}


# ---------------------------------------------------------------------------
# split / merge / make_loss_fn.


def test_split_gives_plain_param_dicts(env):
  params = env["params"]
  assert isinstance(params, dict)
  assert set(params) == {"encoder", "speaker", "attention", "decoder",
                         "postnet"}
  leaves = jax.tree.leaves(params)
  assert all(isinstance(x, jax.Array) for x in leaves)
  want = sum(x.size for x in jax.tree.leaves(nnx.state(env["model"],
                                                       nnx.Param)))
  assert F.count(params) == want
  assert jax.tree.leaves(env["rest"]) == []  # Tacotron keeps no other state


def test_merge_round_trip(env):
  params = jax.tree.map(lambda x: np.asarray(x) + 1.0, env["params"])
  model = F.merge(env["graphdef"], params, env["rest"])
  _, again, _ = F.split(model)
  same = jax.tree.map(lambda a, b: np.array_equal(a, np.asarray(b)), params,
                      again)
  assert all(jax.tree.leaves(same))
  # The original model is untouched.
  _, orig, _ = F.split(env["model"])
  same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a),
                                                  np.asarray(b)),
                      orig, env["params"])
  assert all(jax.tree.leaves(same))


def test_loss_fn_equals_model_loss_and_vmaps_over_tasks(env):
  # Two tasks with their own params and batches (leading task axis), as the
  # meta-learners use it.
  p2 = jax.tree.map(lambda x: x * 0.9, env["params"])
  b2 = _batch(1)
  params = jax.tree.map(lambda a, b: jnp.stack([a, b]), env["params"], p2)
  batches = jax.tree.map(lambda a, b: jnp.stack([a, b]), env["batch"], b2)
  losses, aux = jax.jit(jax.vmap(env["loss_fn"]))(params, batches)
  assert losses.shape == (2,) and aux["alignment"].shape[0] == 2
  model2 = F.merge(env["graphdef"], p2, env["rest"])
  for i, (model, batch) in enumerate(((env["model"], env["batch"]),
                                      (model2, b2))):
    loss, daux = env["direct"](model, batch)
    np.testing.assert_allclose(float(losses[i]), float(loss), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(aux["alignment"][i]),
                               np.asarray(daux["alignment"]), atol=1e-6)
  assert abs(float(losses[0]) - float(losses[1])) > 1e-3


# ---------------------------------------------------------------------------
# Filters.


def test_filters_select_the_named_groups(env):
  params = env["params"]
  speaker = _paths(params, F.mask_from_filter(params, F.filter_for("speaker")))
  assert speaker == {("speaker", "table", "embedding"),
                     ("speaker", "proj", "kernel"), ("speaker", "proj", "bias")}
  decoder = _paths(params, F.mask_from_filter(params, F.filter_for("decoder")))
  # The outer key wins: the attention LSTM belongs to the decoder.
  assert ("decoder", "attention_rnn", "gates", "kernel") in decoder
  assert all(p[0] == "decoder" for p in decoder)
  attention = _paths(params, F.mask_from_filter(params,
                                                F.filter_for("attention")))
  assert ("attention", "location_conv", "conv", "kernel") in attention
  assert all(p[0] == "attention" for p in attention)
  groups = ("speaker", "encoder", "decoder", "postnet", "attention")
  counts = {g: F.count(params, F.mask_from_filter(params, F.filter_for(g)))
            for g in groups}
  # The groups partition the parameters.
  assert sum(counts.values()) == F.count(params)
  assert F.count(params, F.mask_from_filter(params, F.filter_for("all"))) == (
      F.count(params))
  combo = F.mask_from_filter(params, F.filter_for("speaker+decoder"))
  assert F.count(params, combo) == counts["speaker"] + counts["decoder"]
  # Hand-computed size of the speaker group: table 3x4, proj 3x4 + 4.
  assert counts["speaker"] == 2 * 16 + 3 * 16 + 16


def test_filter_predicate_accepts_jax_key_paths_and_prefixes():
  pred = F.filter_for("speaker+postnet")
  assert pred(("speaker_embedding", "embedding"), None)  # prefix rule
  assert pred((jax.tree_util.DictKey("postnet"), jax.tree_util.SequenceKey(0)),
              None)
  assert pred(("acoustic", "speaker", "table"), None)  # wrapper models
  assert not pred(("speakers",), None)  # not a '_' prefix
  assert not pred(("decoder", "speaker_gate"), None)  # outer key wins


def test_bad_filters_raise(env):
  with pytest.raises(ValueError, match="'speaker', 'encoder'"):
    F.filter_for("speeker")
  with pytest.raises(ValueError, match="valid names"):
    F.filter_for("speaker+dec")
  with pytest.raises(ValueError, match="empty"):
    F.filter_for("")
  no_speaker = {"encoder": {"w": jnp.ones(2)}, "decoder": {"w": jnp.ones(3)}}
  with pytest.raises(ValueError, match="selects no parameter.*'decoder'"):
    F.filter_for("speaker", no_speaker)
  with pytest.raises(ValueError, match="selects no parameter"):
    F.mask_from_filter(no_speaker, F.filter_for("postnet"))
  with pytest.raises(ValueError, match="no named parameter groups; use 'all'"):
    F.filter_for("decoder", {"convs": [jnp.ones(2)]})


def test_registry():
  import importlib
  assert {"tacotron", "wavenet", "speaker_encoder"} <= set(MODELS)
  for entry in MODELS.values():  # every entry resolves (typos fail here)
    module = importlib.import_module(entry.module)
    assert callable(getattr(module, entry.config_fn))
    assert isinstance(getattr(module, entry.cls), type)
  with pytest.raises(ValueError, match="registered models"):
    build_model("tacotron2", "tiny", 0)
  with pytest.raises(ValueError, match="num_melz"):
    build_model("tacotron", {"size": "tiny", "num_melz": 3}, 0)


# ---------------------------------------------------------------------------
# Gradients: filtered subset, finite differences, second order.


def _partition(params, mask):
  sel = jax.tree.map(lambda x, m: x if m else None, params, mask)
  frozen = jax.tree.map(lambda x, m: None if m else x, params, mask)
  return sel, frozen


def _combine(sel, frozen):
  return jax.tree.map(lambda s, f: f if s is None else s, sel, frozen,
                      is_leaf=lambda x: x is None)


def _smooth_loss(model, batch):
  # L1 terms have kinks, which finite differences of the gradient (the
  # Hessian reference below) cannot resolve: use the twice-differentiable
  # terms of the same loss.
  _, aux = _loss(model, batch)
  loss = (aux["l2_before"] + aux["l2_after"] + aux["stop"] +
          aux["guided_attention"])
  return loss, aux


@pytest.fixture(scope="module")
def speaker_grad(env):
  mask = F.mask_from_filter(env["params"], F.filter_for("speaker"))
  sel, frozen = _partition(env["params"], mask)
  smooth_fn = F.make_loss_fn(env["graphdef"], env["rest"], _smooth_loss)

  def sub_loss(sel, batch):
    return smooth_fn(_combine(sel, frozen), batch)[0]

  return dict(mask=mask, sel=sel, frozen=frozen, sub_loss=sub_loss,
              value_and_grad=jax.jit(jax.value_and_grad(sub_loss)))


def test_grad_wrt_filtered_subset_matches_finite_differences(env, speaker_grad):
  sel, vg = speaker_grad["sel"], speaker_grad["value_and_grad"]
  _, g = vg(sel, env["batch"])
  # Only the speaker leaves are differentiated.
  assert {F.path_keys(p)[0] for p, _ in
          jax.tree_util.tree_leaves_with_path(g)} == {"speaker"}
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g))
  eps = 1e-2
  for key, idx in ((("table", "embedding"), (1, 5)),
                   (("proj", "kernel"), (0, 3)), (("proj", "bias"), (2,))):
    def shifted(delta, key=key, idx=idx):
      s = jax.tree.map(lambda x: x, sel)
      leaf = s["speaker"][key[0]][key[1]]
      s["speaker"][key[0]][key[1]] = leaf.at[idx].add(delta)
      return float(vg(s, env["batch"])[0])
    fd = (shifted(eps) - shifted(-eps)) / (2 * eps)
    got = float(g["speaker"][key[0]][key[1]][idx])
    np.testing.assert_allclose(got, fd, rtol=2e-2, atol=2e-4, err_msg=str(key))


def test_second_order_hvp_through_loss_fn(env, speaker_grad):
  """Hessian-vector product as ``grad`` of a function of ``grad``."""
  sel, sub_loss = speaker_grad["sel"], speaker_grad["sub_loss"]
  v = jax.tree.map(lambda x: jnp.asarray(
      np.random.default_rng(x.size).normal(size=x.shape), x.dtype), sel)

  @jax.jit
  def hvp(s, b):
    gv = lambda q: sum(  # noqa: E731
        jnp.vdot(a, c) for a, c in zip(jax.tree.leaves(jax.grad(sub_loss)(q, b)),
                                       jax.tree.leaves(v)))
    return jax.grad(gv)(s)

  h = hvp(sel, env["batch"])
  eps = 1e-2
  plus = jax.tree.map(lambda x, d: x + eps * d, sel, v)
  minus = jax.tree.map(lambda x, d: x - eps * d, sel, v)
  _, gp = speaker_grad["value_and_grad"](plus, env["batch"])
  _, gm = speaker_grad["value_and_grad"](minus, env["batch"])
  fd = jax.tree.map(lambda a, b: (a - b) / (2 * eps), gp, gm)
  got = np.concatenate([np.ravel(x) for x in jax.tree.leaves(h)])
  ref = np.concatenate([np.ravel(x) for x in jax.tree.leaves(fd)])
  assert np.abs(ref).max() > 1e-3  # the speaker block has curvature
  np.testing.assert_allclose(got, ref, rtol=5e-2,
                             atol=5e-2 * np.abs(ref).max())
