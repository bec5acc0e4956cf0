"""Tests of the RAD-TTS-style aligner against independent references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from metatts.models import aligner


def _compositions(total, parts):
  """All tuples of ``parts`` positive ints summing to ``total``."""
  for cuts in itertools.combinations(range(1, total), parts - 1):
    edges = (0,) + cuts + (total,)
    yield tuple(edges[i + 1] - edges[i] for i in range(parts))


def _brute_force_best_path(log_p, n, t):
  """Max-score monotonic path (every symbol >= 1 frame) by enumeration."""
  best, best_d = -np.inf, None
  for d in _compositions(t, n):
    tokens = np.repeat(np.arange(n), d)
    score = log_p[np.arange(t), tokens].sum()
    if score > best:
      best, best_d = score, d
  return np.asarray(best_d)


@pytest.mark.parametrize("seed", range(4))
def test_mas_matches_brute_force(seed):
  rng = np.random.default_rng(seed)
  b, t_pad, l_pad = 3, 9, 4
  log_p = rng.normal(size=(b, t_pad, l_pad)).astype(np.float32)
  tl = np.array([4, 3, 2], np.int32)
  ml = np.array([9, 7, 5], np.int32)
  hard = np.asarray(jax.jit(aligner.monotonic_alignment_search)(
      jnp.asarray(log_p), tl, ml))
  for i in range(b):
    want = _brute_force_best_path(log_p[i].astype(np.float64), tl[i], ml[i])
    got = hard[i].sum(0)
    np.testing.assert_array_equal(got[:tl[i]], want)
    assert np.all(got[tl[i]:] == 0)
    assert np.all(hard[i, ml[i]:] == 0)  # padded frames unassigned
    np.testing.assert_array_equal(hard[i].sum(1)[:ml[i]], 1)
    # The numpy host version gives the same path.
    np.testing.assert_array_equal(aligner.mas_numpy(log_p[i], tl[i], ml[i]),
                                  hard[i])


def test_mas_durations_sum_to_lengths_even_when_too_few_frames():
  rng = np.random.default_rng(0)
  log_p = jnp.asarray(rng.normal(size=(2, 6, 8)), jnp.float32)
  tl = jnp.asarray([8, 3], jnp.int32)
  ml = jnp.asarray([5, 6], jnp.int32)  # 5 frames for 8 symbols: infeasible
  d = aligner.durations_from_alignment(
      aligner.monotonic_alignment_search(log_p, tl, ml))
  np.testing.assert_array_equal(np.asarray(d).sum(1), [5, 6])
  assert np.all(np.asarray(d) >= 0)
  assert np.all(np.asarray(d)[1, :3] >= 1)


def _ctc_brute_force(log_attn, n, t, blank):
  """-log sum over all CTC paths emitting 1..n (blank = class 0) / n."""
  logits = np.concatenate([np.full((t, 1), blank), log_attn[:t, :n]], 1)
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  total = 0.0
  for path in itertools.product(range(n + 1), repeat=t):
    collapsed = [k for i, k in enumerate(path)
                 if k != 0 and (i == 0 or path[i - 1] != k)]
    if collapsed == list(range(1, n + 1)):
      total += np.exp(sum(logp[i, k] for i, k in enumerate(path)))
  return -np.log(total) / n


def test_forward_sum_loss_matches_enumeration():
  rng = np.random.default_rng(1)
  log_attn = rng.normal(size=(2, 5, 3)).astype(np.float32)
  tl = np.array([3, 2], np.int32)
  ml = np.array([5, 4], np.int32)
  got = float(aligner.forward_sum_loss(jnp.asarray(log_attn), tl, ml, -1.0))
  want = np.mean([_ctc_brute_force(log_attn[i].astype(np.float64), tl[i],
                                   ml[i], -1.0) for i in range(2)])
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_beta_binomial_prior_matches_scipy():
  tl = np.array([5, 3], np.int32)
  ml = np.array([7, 4], np.int32)
  got = np.asarray(aligner.beta_binomial_log_prior(
      jnp.asarray(tl), jnp.asarray(ml), 8, 6, scaling=1.5))
  for b in range(2):
    n, t = tl[b], ml[b]
    for f in range(t):
      want = stats.betabinom.logpmf(np.arange(n), n - 1, 1.5 * (f + 1),
                                    1.5 * (t - f))
      np.testing.assert_allclose(got[b, f, :n], want, rtol=1e-4, atol=1e-4)
      assert np.all(got[b, f, n:] < -1e8)


def test_binarization_loss_hand_computed():
  soft = jnp.asarray([[[0.5, 0.5], [0.25, 0.75]]])
  hard = jnp.asarray([[[1.0, 0.0], [0.0, 1.0]]])
  want = -(np.log(0.5) + np.log(0.75)) / 2
  np.testing.assert_allclose(float(aligner.binarization_loss(hard, soft)),
                             want, rtol=1e-6)


def test_aligner_module_outputs():
  mod = aligner.Aligner(8, 10, 16, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  text = jnp.asarray(rng.normal(size=(2, 6, 8)), jnp.float32)
  mels = jnp.asarray(rng.normal(size=(2, 20, 10)), jnp.float32)
  tl = jnp.asarray([6, 4], jnp.int32)
  ml = jnp.asarray([20, 13], jnp.int32)
  out = mod(text, tl, mels, ml)
  np.testing.assert_array_equal(np.asarray(out.durations).sum(1), [20, 13])
  assert np.all(np.asarray(out.durations)[0, :6] >= 1)
  assert np.all(np.asarray(out.durations)[1, :4] >= 1)
  soft = np.asarray(out.soft)
  np.testing.assert_allclose(soft[0].sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(soft[1, :13].sum(-1), 1.0, rtol=1e-5)
  assert np.all(soft[1, 13:] == 0) and np.all(soft[1, :, 4:] == 0)
