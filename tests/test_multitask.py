"""Tests of the multi-task building block (metatts.models.multitask)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metatts import functional
from metatts.models import multitask as mt
from metatts.models import layers

M, C, SPK = 6, 8, 3
# Block-wise normal draws (fast to initialize; see layers.block_normal).
_KERNEL_INIT = layers.normal_init()


class Encoder(nnx.Module):
  """A small shared trunk: batch dict -> (features [B, T, C], mask [B, T])."""

  def __init__(self, rngs):
    self.proj = nnx.Linear(M, C, kernel_init=_KERNEL_INIT, rngs=rngs)

  def __call__(self, batch):
    mask = jnp.arange(batch["mels"].shape[1])[None] < batch["lengths"][:, None]
    return jnp.tanh(self.proj(batch["mels"])), mask


def _recon_loss(out, batch):
  mask = (jnp.arange(batch["mels"].shape[1])[None] <
          batch["lengths"][:, None])[..., None]
  err = jnp.where(mask, (out - batch["mels"]) ** 2, 0.0)
  return err.sum() / (mask.sum() * M)


class ReconHead(nnx.Module):

  def __init__(self, rngs):
    self.lin = nnx.Linear(C, M, kernel_init=_KERNEL_INIT, rngs=rngs)

  def __call__(self, trunk_out):
    return self.lin(trunk_out[0])


@pytest.fixture(scope="module")
def setup():
  rngs = nnx.Rngs(0)
  model = mt.MultiTaskModel(
      Encoder(rngs),
      {"recon": ReconHead(rngs),
       "speaker": mt.PooledClassifierHead(C, SPK, rngs=rngs),
       # A parameter-free callable head.
       "energy": lambda out: (out[0] ** 2).mean((1, 2))})
  key = jax.random.key(3)
  batch = {"mels": jax.random.normal(key, (4, 10, M)),
           "lengths": jnp.array([10, 7, 4, 9]),
           "speaker_ids": jnp.array([0, 1, 2, 1])}
  return model, batch


def _objective(**kw):
  losses = {"recon": _recon_loss,
            "speaker": lambda logits, b: mt.classification_loss(
                logits, b["speaker_ids"]),
            "energy": lambda e, b: e.mean()}
  return mt.MultiTaskObjective(task_losses=losses, **kw)


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_loss_is_weighted_sum_plus_hand_computed_regularizer(setup, kind):
  model, batch = setup
  weights = {"recon": 0.7, "speaker": 0.2, "energy": 1.5}
  lam = 0.03
  loss, aux = _objective(weights=weights, kind=kind, reg_weight=lam)(
      model, batch)
  trunk = model.trunk.proj
  w, b = np.asarray(trunk.kernel[...]), np.asarray(trunk.bias[...])
  reg = (np.abs(w).sum() + np.abs(b).sum() if kind == "l1" else
         (w ** 2).sum() + (b ** 2).sum())
  np.testing.assert_allclose(float(aux["regularizer"]), reg, rtol=1e-6)
  # Heads' parameters are not in R: adding them would change the number.
  head = model.heads["recon"].lin.kernel[...]
  assert abs(float(np.abs(np.asarray(head)).sum())) > 1e-3
  # Independent task losses, by hand.
  feats = np.tanh(np.asarray(batch["mels"]) @ w + b)
  mask = np.arange(10)[None] < np.asarray(batch["lengths"])[:, None]
  recon = feats @ np.asarray(head) + np.asarray(model.heads["recon"].lin.bias[...])
  recon_loss = (((recon - np.asarray(batch["mels"])) ** 2) * mask[..., None]
                ).sum() / (mask.sum() * M)
  pooled = (feats * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  sp = model.heads["speaker"].linear
  logits = pooled @ np.asarray(sp.kernel[...]) + np.asarray(sp.bias[...])
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -logp[np.arange(4), np.asarray(batch["speaker_ids"])].mean()
  energy = (feats ** 2).mean((1, 2)).mean()
  np.testing.assert_allclose(float(aux["loss/recon"]), recon_loss, rtol=1e-5)
  np.testing.assert_allclose(float(aux["loss/speaker"]), ce, rtol=1e-5)
  np.testing.assert_allclose(
      float(loss), 0.7 * recon_loss + 0.2 * ce + 1.5 * energy + lam * reg,
      rtol=1e-5)


def test_head_gradients_do_not_leak(setup):
  model, batch = setup
  graphdef, params, rest = functional.split(model)
  only_recon = mt.MultiTaskObjective(task_losses={"recon": _recon_loss})
  grads = jax.jit(jax.grad(lambda p: functional.make_loss_fn(
      graphdef, rest, only_recon)(p, batch)[0]))(params)
  assert all(np.all(np.asarray(g) == 0)
             for g in jax.tree.leaves(grads["heads"]["speaker"]))
  assert all(np.abs(np.asarray(g)).max() > 0
             for g in jax.tree.leaves(grads["heads"]["recon"]))
  assert all(np.abs(np.asarray(g)).max() > 0
             for g in jax.tree.leaves(grads["trunk"]))


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_regularizer_gradient_is_closed_form_on_trunk_only(setup, kind):
  model, batch = setup
  graphdef, params, rest = functional.split(model)
  lam = 0.5
  obj = _objective(weights={"recon": 0.0, "speaker": 0.0, "energy": 0.0},
                   kind=kind, reg_weight=lam)
  # Move every parameter away from 0, where |x| has no derivative.
  params = jax.tree.map(lambda p: p + 0.05, params)
  grads = jax.jit(jax.grad(lambda p: functional.make_loss_fn(
      graphdef, rest, obj)(p, batch)[0]))(params)
  for g in jax.tree.leaves(grads["heads"]):
    assert np.all(np.asarray(g) == 0)
  for g, p in zip(jax.tree.leaves(grads["trunk"]),
                  jax.tree.leaves(params["trunk"])):
    want = lam * (np.sign(p) if kind == "l1" else 2.0 * np.asarray(p))
    np.testing.assert_allclose(np.asarray(g), want, rtol=1e-6, atol=1e-7)


def test_callable_trunk_and_bad_inputs():
  model = mt.MultiTaskModel(lambda x: x * 2.0,
                            {"sum": lambda f: f.sum(), "id": lambda f: f})
  obj = mt.MultiTaskObjective(task_losses={"sum": lambda o, b: o},
                              kind="l1", reg_weight=1.0)
  loss, aux = obj(model, jnp.arange(3.0))
  assert float(loss) == 6.0 and float(aux["regularizer"]) == 0.0
  with pytest.raises(ValueError, match="Unknown task"):
    model(jnp.ones(2), tasks=["nope"])
  with pytest.raises(ValueError, match="Unknown regularizer 'l3'"):
    mt.MultiTaskObjective(task_losses={"sum": lambda o, b: o}, kind="l3")
  with pytest.raises(ValueError, match="without a loss"):
    mt.MultiTaskObjective(task_losses={"sum": lambda o, b: o},
                          weights={"typo": 1.0})
  with pytest.raises(ValueError, match="at least one head"):
    mt.MultiTaskModel(lambda x: x, {})
