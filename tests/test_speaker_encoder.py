"""Tests of the reference speaker encoder (metatts.models.speaker_encoder)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from metatts.models import speaker_encoder as se

N_MELS = 8


@pytest.fixture(scope="module")
def encoder():
  return se.SpeakerEncoder(se.speaker_encoder_config("tiny", n_mels=N_MELS),
                           rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def encode():
  return nnx.jit(lambda e, m, l: e(m, l))


@pytest.fixture(scope="module")
def clips():
  return jax.random.normal(jax.random.key(1), (4, 24, N_MELS))


def test_shapes_and_unit_norm(encoder, encode, clips):
  v = encode(encoder, clips, jnp.array([24, 20, 9, 1]))
  assert v.shape == (4, 16) and v.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(np.asarray(v), axis=-1), 1.0,
                             atol=1e-6)
  raw = se.SpeakerEncoder(
      se.speaker_encoder_config("tiny", n_mels=N_MELS, normalize=False),
      rngs=nnx.Rngs(0))
  r = encode(raw, clips, jnp.array([24, 20, 9, 1]))
  # Same parameters: the normalized vector is the raw one over its norm.
  np.testing.assert_allclose(
      np.asarray(v), np.asarray(r) / np.linalg.norm(np.asarray(r), axis=-1,
                                                    keepdims=True),
      atol=1e-6)


def test_padding_does_not_change_vector(encoder, encode, clips):
  lengths = jnp.array([24, 17, 9, 3])
  v = encode(encoder, clips, lengths)
  # Clips cropped to their length (no padding at all) give the same vectors.
  alone = encode(encoder, clips[2:4, :9], jnp.array([9, 3]))
  np.testing.assert_allclose(np.asarray(alone), np.asarray(v[2:]), atol=1e-6)
  # Garbage in the padding and more of it: same vectors.
  junk = jnp.concatenate([clips, 9.0 * jnp.ones((4, 8, N_MELS))], axis=1)
  junk = junk.at[1, 17:].set(-5.0)
  v2 = encode(encoder, junk, lengths)
  np.testing.assert_allclose(np.asarray(v2), np.asarray(v), atol=1e-6)
  # ...but a change inside a valid region does change it (test can fail).
  v3 = encode(encoder, clips.at[3, 1].add(1.0), lengths)
  assert np.abs(np.asarray(v3[3] - v[3])).max() > 1e-4


def test_speaker_vector_is_order_invariant_mean(encoder, encode, clips):
  lengths = jnp.array([24, 17, 9, 3])
  perm = jnp.array([2, 0, 3, 1])
  embed = nnx.jit(lambda e, m, l, c: e.embed_speakers(m, l, c))
  # Speaker 0: clips in order; 1: permuted; 2: only the first two clips.
  out = embed(encoder, jnp.stack([clips, clips[perm], clips]),
              jnp.stack([lengths, lengths[perm], lengths]),
              jnp.array([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]], bool))
  np.testing.assert_allclose(np.asarray(out[1]), np.asarray(out[0]),
                             atol=1e-6)
  # Hand computation: renormalized mean of the per-clip unit vectors.
  per_clip = np.asarray(encode(encoder, clips, lengths))
  for row, sel in ((0, slice(0, 4)), (2, slice(0, 2))):
    mean = per_clip[sel].mean(0)
    np.testing.assert_allclose(np.asarray(out[row]),
                               mean / np.linalg.norm(mean), atol=1e-6)
  # The one-speaker entry point agrees.
  v = nnx.jit(se.speaker_vector)(encoder, clips[perm], lengths[perm])
  np.testing.assert_allclose(np.asarray(v), np.asarray(out[0]), atol=1e-6)


def test_gradients_reach_every_parameter(encoder, clips):
  """The encoder is trainable end to end through a downstream loss."""
  graphdef, params, rest = nnx.split(encoder, nnx.Param, ...)
  target = jnp.ones((16,)) / 4.0

  @jax.jit
  def loss(p):
    v = se.speaker_vector(nnx.merge(graphdef, p, rest), clips,
                          jnp.array([24, 17, 9, 3]))
    return jnp.sum((v - target) ** 2)

  grads = jax.grad(loss)(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.abs(np.asarray(g)).max() > 0, path
  assert not jax.tree.leaves(
      nnx.state(encoder, lambda path, v: not isinstance(v, nnx.Param)))


def test_bad_inputs_raise(encoder):
  with pytest.raises(ValueError, match=r"5 mel bins.*n_mels=8"):
    encoder(jnp.zeros((1, 10, 5)), jnp.array([10]))
  with pytest.raises(ValueError, match="0 frames"):
    encoder(jnp.zeros((1, 0, N_MELS)), jnp.array([1]))
  with pytest.raises(ValueError, match="max_frames=2000"):
    encoder(jnp.zeros((1, 2001, N_MELS)), jnp.array([5]))
  with pytest.raises(ValueError, match=r"lengths \[0\] must be in \[1, 10\]"):
    encoder(jnp.zeros((1, 10, N_MELS)), jnp.array([0]))
  with pytest.raises(ValueError, match="Unknown SpeakerEncoderConfig"):
    se.speaker_encoder_config("tiny", embed_size=3)
