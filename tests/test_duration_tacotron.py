"""Tests of the duration-based Tacotron (drop-in for ``tacotron.Tacotron``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metatts import functional
from metatts.models import build_model
from metatts.models import duration_tacotron as dt
from metatts.types import TTSBatch

M = 12
CFG = dict(num_mels=M, num_symbols=40, num_speakers=4, embed_dim=16,
           encoder_dim=16, aligner_dim=16, duration_dim=16, decoder_dim=16,
           decoder_num_convs=2, postnet_dim=16, postnet_num_convs=2,
           decoder_rnn_dim=16, prenet_dims=(16,), speaker_dim=8,
           max_frames=96, duration_init_frames=4.0)


def make_batch(seed=0, b=3, l=8, t=32):
  rng = np.random.default_rng(seed)
  tl = np.array([l, l - 2, l - 4][:b], np.int32)
  ml = np.array([t, t - 6, t - 12][:b], np.int32)
  tok = rng.integers(1, 40, (b, l)).astype(np.int32)
  tok[np.arange(l)[None, :] >= tl[:, None]] = 0
  mels = rng.normal(size=(b, t, M)).astype(np.float32)
  mels[np.arange(t)[None, :] >= ml[:, None]] = 0
  return TTSBatch(tok, tl, mels, ml, np.arange(b, dtype=np.int32) % 4, None)


def _with_duration_bias(model, bias):
  """The model with a constant duration prediction ``exp(bias) - 1``."""
  graphdef, params, rest = functional.split(model)
  proj = params["duration"]["proj"]
  proj["bias"] = jnp.full_like(proj["bias"], bias)
  proj["kernel"] = jnp.zeros_like(proj["kernel"])
  return functional.merge(graphdef, params, rest)


@pytest.fixture(scope="module")
def model():
  # Exactly 4 frames per symbol until trained (kernel zeroed).
  return _with_duration_bias(build_model("duration_tacotron", CFG, 0),
                             float(np.log(5.0)))


def test_loss_finite_grads_reach_every_group(model):
  graphdef, params, rest = functional.split(model)
  loss_fn = functional.make_loss_fn(graphdef, rest)
  batch = make_batch()
  (loss, aux), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
      params, batch)
  assert np.isfinite(float(loss))
  for k in ("mel_loss", "duration", "forward_sum", "binarization"):
    assert np.isfinite(float(aux[k])), k
  assert aux["alignment"].shape == (3, 32, 8)
  # Hard durations sum to the mel lengths; each valid symbol >= 1 frame.
  d = np.asarray(aux["alignment"]).sum(1)
  np.testing.assert_array_equal(d.sum(1), batch.mel_lengths)
  for i, n in enumerate(batch.token_lengths):
    assert np.all(d[i, :n] >= 1) and np.all(d[i, n:] == 0)
  for group in ("encoder", "speaker", "aligner", "duration", "decoder",
                "postnet"):
    norm = sum(float(jnp.sum(jnp.square(g))) for g in
               jax.tree.leaves(grads[group]))
    assert norm > 0, group
  mask = functional.mask_from_filter(params, functional.filter_for(
      "speaker+decoder"))
  assert any(jax.tree.leaves(mask))


@pytest.mark.slow
def test_vmap_over_tasks_matches_per_task(model):
  graphdef, params, rest = functional.split(model)
  loss_fn = functional.make_loss_fn(graphdef, rest)
  b1, b2 = make_batch(1), make_batch(2)
  tasks = jax.tree.map(lambda a, b: np.stack([a, b]), b1, b2)
  # Two compiles (vmapped and single), each giving the loss and gradient.
  grad_fn = jax.value_and_grad(lambda p, b: loss_fn(p, b)[0])
  losses, grads = jax.jit(jax.vmap(grad_fn, in_axes=(None, 0)))(params, tasks)
  l2, g2 = jax.jit(grad_fn)(params, b2)
  np.testing.assert_allclose(losses[1], l2, rtol=1e-4)
  np.testing.assert_allclose(grads["decoder"]["out"]["kernel"][1],
                             g2["decoder"]["out"]["kernel"], rtol=1e-3,
                             atol=1e-6)


def test_binarization_weight_is_an_argument(model):
  batch = make_batch()
  loss = nnx.jit(lambda m, b, w: m.loss(b, binarization_weight=w))
  l0, aux = loss(model, batch, 0.0)
  l1, _ = loss(model, batch, 2.0)
  np.testing.assert_allclose(float(l1 - l0), 2.0 * float(aux["binarization"]),
                             rtol=1e-4)


def test_infer_jits_once_and_pace_scales_length(model):
  batch = make_batch()
  out = dt.synthesize(model, batch.tokens, batch.token_lengths,
                      batch.speaker_ids, max_frames=96)
  other = make_batch(seed=7)
  out2 = dt.synthesize(model, other.tokens, other.token_lengths,
                       other.speaker_ids, max_frames=96, pace=2.0)
  traces = []
  real = dt.DurationTacotron._infer

  def counting(self, *a):
    traces.append(1)
    return real(self, *a)

  dt.DurationTacotron._infer = counting
  try:
    dt.synthesize(model, other.tokens, other.token_lengths,
                  other.speaker_ids, max_frames=96, pace=0.5)
  finally:
    dt.DurationTacotron._infer = real
  assert not traces, "third call with the same shapes recompiled"
  assert out.mel.shape == (3, 96, M) and out.alignment.shape == (3, 96, 8)
  # Untrained: duration_init_frames=4 frames per symbol.
  np.testing.assert_array_equal(np.asarray(out.lengths),
                                4 * batch.token_lengths)
  np.testing.assert_array_equal(np.asarray(out2.lengths),
                                8 * other.token_lengths)
  # Alignment rows sum to 1 on valid frames, zero after; mel zero after.
  a = np.asarray(out.alignment)
  for i, n in enumerate(np.asarray(out.lengths)):
    np.testing.assert_array_equal(a[i, :n].sum(1), 1)
    assert np.all(a[i, n:] == 0) and np.all(np.asarray(out.mel)[i, n:] == 0)
    assert float(out.stop_probs[i, n - 1]) == 1.0


def test_min_frames_is_a_floor(model):
  batch = make_batch()
  mf = np.array([50, 3, 40], np.int32)
  out = dt.synthesize(model, batch.tokens, batch.token_lengths,
                      batch.speaker_ids, max_frames=96, min_frames=mf)
  lengths = np.asarray(out.lengths)
  np.testing.assert_array_equal(lengths, np.maximum(
      4 * batch.token_lengths, mf + 1))


def test_bad_inputs_raise(model):
  batch = make_batch()
  with pytest.raises(ValueError, match="no symbols"):
    dt.synthesize(model, np.zeros((1, 0), np.int32), np.zeros((1,), np.int32))
  silent = _with_duration_bias(model, -5.0)
  with pytest.raises(ValueError, match="zero frames to every symbol"):
    dt.synthesize(silent, batch.tokens, batch.token_lengths, max_frames=96)
  with pytest.raises(ValueError, match="lower pace or split"):
    dt.synthesize(model, batch.tokens, batch.token_lengths, max_frames=96,
                  pace=4.0)
  with pytest.raises(ValueError, match="pace"):
    dt.synthesize(model, batch.tokens, batch.token_lengths, pace=0.0)
  with pytest.raises(ValueError, match="reduction_factor"):
    dt.duration_tacotron_config("tiny", reduction_factor=4)
  with pytest.raises(ValueError, match="decoder_type"):
    dt.duration_tacotron_config("tiny", decoder_type="attention")


@pytest.mark.slow
def test_init_under_nnx_jit_and_autoregressive_decoder():
  cfg = dt.duration_tacotron_config("tiny", **dict(
      CFG, decoder_type="autoregressive"))

  @nnx.jit
  def make():
    return dt.DurationTacotron(cfg, rngs=nnx.Rngs(0))

  model = _with_duration_bias(make(), float(np.log(5.0)))
  batch = make_batch(b=2)
  loss, _ = nnx.jit(lambda m, b: m.loss(b))(model, batch)
  assert np.isfinite(float(loss))
  out = dt.synthesize(model, batch.tokens, batch.token_lengths,
                      batch.speaker_ids, max_frames=96,
                      seeds=np.array([1, 2], np.uint32))
  np.testing.assert_array_equal(np.asarray(out.lengths),
                                4 * batch.token_lengths)


def test_alignment_from_durations_hand_computed():
  a = np.asarray(dt.alignment_from_durations(jnp.asarray([[2, 0, 1]]), 5))
  want = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
  np.testing.assert_array_equal(a[0], want)
  up = np.asarray(dt.upsample(jnp.asarray([[[1.0], [2.0], [3.0]]]),
                              jnp.asarray(a)))
  np.testing.assert_allclose(up[0, :, 0], [1, 1, 3, 0, 0])
  np.testing.assert_allclose(up[0, :, 1], [0.25, 0.75, 0.5, 0, 0])
