"""Tests of the WaveNet-style vocoder (metatts.models.wavenet)."""

import math

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
import pytest
from flax import nnx
from scipy.special import expit

from metatts import functional
from metatts.models import wavenet as wn
from metatts.types import VocoderBatch

N_MELS = 8
HOP = 10


def _cfg(**kw):
  base = dict(n_mels=N_MELS, hop_length=HOP, upsample_factors=(2, 5))
  base.update(kw)
  return wn.wavenet_config("tiny", **base)


@pytest.fixture(scope="module")
def model():
  return wn.WaveNet(_cfg(), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def mels():
  return jax.random.normal(jax.random.key(1), (2, 10, N_MELS))  # S = 100


@pytest.fixture(scope="module")
def forward(model):
  return nnx.jit(lambda m, x, c: m(x, c))


# One jitted loss shared by the tests (one compile per model structure).
loss_jit = nnx.jit(wn.wavenet_loss)


def test_output_shapes(model, mels, forward):
  out = forward(model, jnp.zeros((2, 100)), mels)
  assert out.shape == (2, 100, 256) and out.dtype == jnp.float32
  mol = wn.WaveNet(_cfg(output="mol", num_mixtures=3), rngs=nnx.Rngs(0))
  # Shape only: trace without compiling.
  out = jax.eval_shape(lambda x, c: mol(x, c), jnp.zeros((2, 100)), mels)
  assert out.shape == (2, 100, 9)


def test_causality_exact(model, mels, forward):
  audio = 0.5 * jax.random.uniform(jax.random.key(2), (2, 100), minval=-1.)
  t = 57
  noisy = audio.at[:, t:].add(jax.random.normal(jax.random.key(3), (2, 43)))
  out_a = forward(model, model.shift_inputs(audio), mels)
  out_b = forward(model, model.shift_inputs(noisy), mels)
  # Outputs at <= t predict samples <= t from samples < t: unchanged exactly.
  np.testing.assert_array_equal(np.asarray(out_a[:, :t + 1]),
                                np.asarray(out_b[:, :t + 1]))
  # ... and the perturbation is visible right after (the check can fail).
  assert np.abs(np.asarray(out_a[:, t + 1] - out_b[:, t + 1])).max() > 1e-4


def test_receptive_field_closed_form(model, mels):
  cfg = model.config
  r = cfg.receptive_field
  per_layer = sum((cfg.kernel_size - 1) * layer.conv.dilation
                  for layer in model.layers)
  assert r == per_layer + 1 == 31
  assert wn.wavenet_config("full").receptive_field == 3 * 1023 + 1
  assert wn.wavenet_config("tiny", kernel_size=3).receptive_field == 61
  cond = model.condition(mels)[:1]
  t = 80
  inputs = jax.random.normal(jax.random.key(4), (1, 100))
  jac = nnx.jit(jax.grad(lambda x: model.stack(x, cond, None)[0, t].sum()))(
      inputs)
  nz = np.nonzero(np.asarray(jac[0]))[0]
  # Output t depends on inputs t-R+1..t, i.e. on samples t-R..t-1.
  np.testing.assert_array_equal(nz, np.arange(t - r + 1, t + 1))


def test_mu_law_against_librosa():
  x = np.linspace(-1, 1, 2001).astype(np.float32)
  encode, decode = jax.jit(wn.mu_law_encode), jax.jit(wn.mu_law_decode)
  q = np.asarray(encode(jnp.asarray(x)))
  comp = librosa.mu_compress(x, mu=255, quantize=False)
  np.testing.assert_array_equal(q, np.round((comp + 1) / 2 * 255))
  levels = np.arange(256)
  ref = librosa.mu_expand(2 * levels / 255 - 1, mu=255, quantize=False)
  np.testing.assert_allclose(np.asarray(decode(jnp.asarray(levels))), ref,
                             atol=1e-6)
  # Round trip error is below half a level in the companded domain.
  back = np.asarray(decode(jnp.asarray(q)))
  err = np.abs(librosa.mu_compress(back, mu=255, quantize=False) - comp)
  assert err.max() <= 1 / 255 + 1e-6


@pytest.mark.parametrize("bins", [256, 65536])
def test_mixture_of_logistics_sums_to_one(bins):
  k = 3
  params = jnp.array([0.3, -1.0, 0.5,  # mixture logits
                      -0.2, 0.4, 0.97,  # means
                      -3.0, -6.5, -1.0])  # log-scales
  centers = jnp.linspace(-1.0, 1.0, bins)
  logp = jax.jit(wn.discretized_mol_log_prob, static_argnums=2)(
      jnp.broadcast_to(params, (bins, 3 * k)), centers, bins)
  assert abs(float(jax.nn.logsumexp(logp))) < 2e-4
  # Closed form in float64: masses are CDF differences at the bin edges.
  p = np.asarray(params, np.float64)
  pi = np.exp(p[:3] - p[:3].max())
  pi /= pi.sum()
  edges = np.concatenate([[-np.inf], np.linspace(-1, 1, bins)[:-1] +
                          1 / (bins - 1), [np.inf]])
  cdf = expit((edges[:, None] - p[3:6]) / np.exp(p[6:]))
  mass = (np.diff(cdf, axis=0) * pi).sum(-1)
  idx = np.argsort(mass)[-50:]  # compare where the mass is not negligible
  np.testing.assert_allclose(np.exp(np.asarray(logp, np.float64))[idx],
                             mass[idx], rtol=2e-3)


def _batch(model, mels, audio, lengths):
  return VocoderBatch(mels=mels, audio=audio, audio_lengths=lengths,
                      speaker_ids=jnp.zeros(mels.shape[0], jnp.int32))


def test_padding_does_not_change_loss(model, mels):
  audio = 0.5 * jnp.sin(jnp.arange(100) * 0.3)[None].repeat(2, 0)
  lengths = jnp.array([100, 53])
  loss_fn = loss_jit
  l1, aux = loss_fn(model, _batch(model, mels, audio, lengths))
  # Garbage after sample 53 of row 1 (and in the mel frames starting there).
  audio2 = audio.at[1, 53:].set(0.9)
  mels2 = mels.at[1, 6:].set(7.0)
  l2, _ = loss_fn(model, _batch(model, mels2, audio2, lengths))
  assert float(l1) == float(l2)
  assert int(aux["num_samples"]) == 153
  l3, _ = loss_fn(model, _batch(model, mels2, audio2, jnp.array([100, 100])))
  assert float(l3) != float(l1)


def _check_fast_equals_naive(model, mels, **kw):
  key = jax.random.key(7)
  fast = np.asarray(wn.generate_jit(model, mels, key, **kw))
  naive = np.asarray(wn.generate_naive_jit(model, mels, key, **kw))
  assert fast.shape == (mels.shape[0], mels.shape[1] * HOP)
  np.testing.assert_array_equal(fast, naive)
  # Different keys give different samples (the comparison can fail).
  other = np.asarray(wn.generate_jit(model, mels, jax.random.key(8), **kw))
  assert (other != fast).mean() > 0.5


def test_fast_generation_equals_naive_mu_law_with_speaker_table(mels):
  m = wn.WaveNet(_cfg(speaker_source="table", n_speakers=3, speaker_dim=4),
                 rngs=nnx.Rngs(5))
  _check_fast_equals_naive(m, mels, speaker_ids=jnp.array([0, 2]))


def test_fast_generation_equals_naive_mixture_kernel3(mels):
  m = wn.WaveNet(_cfg(output="mol", kernel_size=3, layers_per_stack=2),
                 rngs=nnx.Rngs(6))
  _check_fast_equals_naive(m, mels)


@pytest.fixture(scope="module")
def sine_training():
  """Tiny WaveNet (hop 200 at 16 kHz), 0.05 s of a 400 Hz sine, Adam step.

  The step is a plain ``jax.jit`` over the flattened parameter vector of
  ``metatts.functional.split`` (merge inside the loss), with a trace counter
  to detect recompiles.
  """
  cfg = wn.wavenet_config("tiny", n_mels=N_MELS)
  model = wn.WaveNet(cfg, rngs=nnx.Rngs(0))
  graphdef, params, rest = functional.split(model)
  flat, unravel = ravel_pytree(params)
  tx = optax.adam(1e-2)
  traces = []
  model_loss = functional.make_loss_fn(graphdef, rest)  # model.loss(batch)

  def loss_fn(flat, batch):
    return model_loss(unravel(flat), batch)

  @jax.jit
  def step(flat, opt_state, batch):
    traces.append(1)  # runs only while tracing
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(flat,
                                                                   batch)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(flat, updates), opt_state, loss, aux

  t = np.arange(800) / 16000.0
  audio = jnp.asarray(0.6 * np.sin(2 * np.pi * 400 * t), jnp.float32)[None]
  batch = VocoderBatch(mels=jnp.zeros((1, 4, N_MELS)), audio=audio,
                       audio_lengths=jnp.array([800]),
                       speaker_ids=jnp.zeros(1, jnp.int32))
  return step, flat, tx.init(flat), batch, traces


def test_overfits_short_sine(sine_training):
  """NLL of a periodic wave falls far below the uniform log(256)."""
  step, flat, opt_state, batch, _ = sine_training
  losses = []
  for _ in range(60):
    flat, opt_state, loss, _ = step(flat, opt_state, batch)
    losses.append(float(loss))
  assert losses[0] > 0.9 * math.log(256)
  assert losses[-1] < 0.1 * math.log(256), losses[::10]


def test_train_step_does_not_recompile(sine_training, model):
  step, flat, opt_state, batch, traces = sine_training
  n = len(traces)
  flat, opt_state, _, _ = step(flat, opt_state, batch)
  assert len(traces) == max(n, 1)
  # New values, same shapes: no new trace.
  batch2 = batch._replace(audio=-batch.audio, mels=batch.mels + 1.0,
                          audio_lengths=jnp.array([700]))
  _, _, loss, aux = step(flat, opt_state, batch2)
  assert len(traces) == max(n, 1) and np.isfinite(float(loss))
  assert int(aux["num_samples"]) == 700
  # The model keeps no state besides its Params (safe for functional.split).
  assert not jax.tree.leaves(
      nnx.state(model, lambda path, v: not isinstance(v, nnx.Param)))


def test_bfloat16_option_runs(mels):
  # A 2-layer model keeps the two extra compiles cheap.
  small = dict(stacks=1, layers_per_stack=2)
  m = wn.WaveNet(_cfg(dtype="bfloat16", **small), rngs=nnx.Rngs(0))
  m32 = wn.WaveNet(_cfg(**small), rngs=nnx.Rngs(0))
  params = nnx.state(m, nnx.Param)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  audio = 0.3 * jnp.sin(jnp.arange(100) * 0.2)[None].repeat(2, 0)
  lengths = jnp.array([100, 100])
  loss, _ = loss_jit(m, _batch(m, mels, audio, lengths))
  loss32, _ = loss_jit(m32, _batch(m32, mels, audio, lengths))
  assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
  # Same parameters, bf16 compute: close to, but not exactly, the f32 loss.
  assert 0 < abs(float(loss) - float(loss32)) < 0.05


def test_bad_inputs_raise(model):
  with pytest.raises(ValueError, match=r"5 mel bins.*n_mels=8"):
    model.condition(jnp.zeros((1, 4, 5)))
  with pytest.raises(ValueError, match="0 frames"):
    model.condition(jnp.zeros((1, 0, N_MELS)))
  with pytest.raises(ValueError, match="max_frames=2000"):
    model.condition(jnp.zeros((1, 2001, N_MELS)))
  with pytest.raises(ValueError, match="hop_length 10"):
    wn.wavenet_loss(model, VocoderBatch(
        jnp.zeros((1, 4, N_MELS)), jnp.zeros((1, 41)), jnp.array([41]),
        jnp.zeros(1, jnp.int32)))
  with pytest.raises(ValueError, match="upsample_factors"):
    wn.wavenet_config("tiny", hop_length=256)
  with pytest.raises(ValueError, match="Unknown WaveNetConfig field"):
    wn.wavenet_config("tiny", n_mel=80)


def test_random_window_aligned_and_seeded():
  f, hop = 30, 10
  mel = np.arange(f)[:, None] * np.ones((1, N_MELS), np.float32)
  audio = np.repeat(np.arange(f), hop).astype(np.float32)[:295]  # 5 short
  a = wn.random_window(np.random.default_rng(3), mel, audio, 8, hop)
  b = wn.random_window(np.random.default_rng(3), mel, audio, 8, hop)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  m_win, a_win, n = a
  f0 = int(m_win[0, 0])
  np.testing.assert_array_equal(m_win[:, 0], np.arange(f0, f0 + 8))
  # Sample s of the window belongs to frame s // hop of the window.
  valid = a_win[:n]
  np.testing.assert_array_equal(valid, f0 + np.arange(n) // hop)
  assert n == min(80, 295 - f0 * hop)
  # JAX-key version: same alignment, traced start.
  m_j, a_j, n_j = jax.jit(
      lambda k: wn.random_window(k, jnp.asarray(mel), jnp.asarray(audio), 8,
                                 hop))(jax.random.key(0))
  f0 = int(m_j[0, 0])
  np.testing.assert_array_equal(np.asarray(a_j[:int(n_j)]),
                                f0 + np.arange(int(n_j)) // hop)
  batch = wn.make_vocoder_batch(np.random.default_rng(0),
                                [(mel, audio), (mel[:3], audio[:25])], 8, hop)
  assert batch.mels.shape == (2, 8, N_MELS) and batch.audio.shape == (2, 80)
  assert int(batch.audio_lengths[1]) == 25


def test_builds_abstractly_and_under_jit_with_the_same_values():
  """Export/restore builds the model under nnx.eval_shape; jit must agree."""
  import jax
  import numpy as np
  from flax import nnx
  from metatts.models import wavenet as wn
  cfg = wn.wavenet_config("tiny")
  abstract = nnx.eval_shape(lambda: wn.WaveNet(cfg, rngs=nnx.Rngs(0)))
  eager = nnx.split(wn.WaveNet(cfg, rngs=nnx.Rngs(0)))[1]
  jitted = jax.jit(lambda: nnx.split(wn.WaveNet(cfg, rngs=nnx.Rngs(0)))[1])()
  shapes = [x.shape for x in jax.tree_util.tree_leaves(nnx.split(abstract)[1])]
  assert shapes == [x.shape for x in jax.tree_util.tree_leaves(eager)]
  for a, b in zip(jax.tree_util.tree_leaves(eager), jax.tree_util.tree_leaves(jitted)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
