"""Tests of the Tacotron 2-style acoustic model (metatts.models.tacotron).

References are independent of the model code: numpy re-implementations of
the loss terms, the closed form of the guided-attention penalty, the
teacher-forced pass as reference for autoregressive inference, and hand-made
bad inputs. One jitted train step and one jitted forward are shared by the
tests (module fixtures) to keep compile time low.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from metatts import functional
from metatts.models import build_model
from metatts.models import tacotron as T
from metatts.types import TTSBatch

M = 16  # mel bins
NS = 12  # symbols (0 = padding)
R = 2  # reduction factor of the tiny size


def make_batch(seed=0):
  """2 utterances; symbol k is rendered as its own 3-frame mel pattern.

  A perfect alignment is therefore diagonal: symbol n covers frames
  3n..3n+2, i.e. decoder steps 1.5n..1.5n+1.5 (r = 2).
  """
  rng = np.random.default_rng(seed)
  patterns = rng.normal(size=(NS, 3, M)).astype(np.float32)
  seqs = [rng.permutation(np.arange(1, 11)), rng.permutation(np.arange(1, 11))[:8]]
  tokens = np.zeros((2, 10), np.int32)
  mels = np.zeros((2, 30, M), np.float32)
  for b, s in enumerate(seqs):
    tokens[b, :len(s)] = s
    mels[b, :3 * len(s)] = patterns[s].reshape(-1, M)
  return TTSBatch(tokens=jnp.asarray(tokens),
                  token_lengths=jnp.array([10, 8], jnp.int32),
                  mels=jnp.asarray(mels),
                  mel_lengths=jnp.array([30, 24], jnp.int32),
                  speaker_ids=jnp.array([0, 1], jnp.int32),
                  seeds=jnp.array([11, 12], jnp.uint32))


CONFIG = dict(size="tiny", num_mels=M, num_symbols=NS, num_speakers=2)


@pytest.fixture(scope="module")
def batch():
  return make_batch()


@pytest.fixture(scope="module")
def setup():
  model = build_model("tacotron", CONFIG, nnx.Rngs(0))
  graphdef, params, rest = functional.split(model)
  loss_fn = functional.make_loss_fn(graphdef, rest)

  @jax.jit
  def forward(params, batch):
    # Outputs, loss and aux in one compiled function.
    m = functional.merge(graphdef, params, rest)
    loss, aux = m.loss(batch)
    return m(batch), loss, aux

  return dict(model=model, graphdef=graphdef, params=params, rest=rest,
              loss_fn=loss_fn, forward=forward)


@pytest.fixture(scope="module")
def train_step(setup):
  opt = optax.adam(3e-3)
  traces = []

  @jax.jit
  def step(params, opt_state, batch, i):
    traces.append(1)  # runs once per trace (compile)
    batch = batch._replace(seeds=batch.seeds + i.astype(jnp.uint32) * 7)
    (loss, aux), grads = jax.value_and_grad(setup["loss_fn"], has_aux=True)(
        params, batch)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux

  return dict(step=step, opt=opt, traces=traces)


# ---------------------------------------------------------------------------
# Shapes, loss terms against numpy, masking.


def test_output_shapes(setup, batch):
  out, loss, aux = setup["forward"](setup["params"], batch)
  s = math.ceil(30 / R)
  assert out.mel_before.shape == (2, s * R, M)
  assert out.mel_after.shape == (2, s * R, M)
  assert out.stop_logits.shape == (2, s * R)
  assert out.alignment.shape == (2, s, 10)
  assert aux["alignment"].shape == (2, s, 10)
  assert loss.shape == () and np.isfinite(float(loss))
  a = np.asarray(out.alignment)
  # Rows are distributions over valid symbols only.
  np.testing.assert_allclose(a.sum(-1), 1.0, atol=1e-5)
  assert np.all(a[1, :, 8:] == 0.0)
  # Frames past the length are zero.
  assert np.all(np.asarray(out.mel_after)[1, 24:] == 0.0)


def _np_losses(out, batch, config):
  """Independent numpy version of Tacotron.loss."""
  mb, ma = np.asarray(out.mel_before), np.asarray(out.mel_after)
  target = np.zeros_like(mb)
  t = batch.mels.shape[1]
  target[:, :t] = np.asarray(batch.mels)
  ml = np.asarray(batch.mel_lengths)
  valid = np.arange(mb.shape[1])[None, :] < ml[:, None]  # [B, T']
  target *= valid[..., None]
  n = valid.sum() * mb.shape[-1]
  res = {
      "l1_before": np.abs(mb - target)[valid].sum() / n,
      "l1_after": np.abs(ma - target)[valid].sum() / n,
      "l2_before": np.square(mb - target)[valid].sum() / n,
      "l2_after": np.square(ma - target)[valid].sum() / n,
  }
  x = np.asarray(out.stop_logits, np.float64)
  y = (np.arange(x.shape[1])[None] == ml[:, None] - 1).astype(np.float64)
  p = 1 / (1 + np.exp(-x))
  bce = -(config.stop_pos_weight * y * np.log(p) + (1 - y) * np.log(1 - p))
  res["stop"] = bce[valid].mean()
  a = np.asarray(out.alignment, np.float64)
  tl = np.asarray(batch.token_lengths)
  sl = -(-ml // config.reduction_factor)
  tot, cnt = 0.0, 0
  for b in range(a.shape[0]):
    for s in range(sl[b]):
      for k in range(tl[b]):
        w = 1 - math.exp(-(k / tl[b] - s / sl[b]) ** 2 / (2 * 0.2 ** 2))
        tot += a[b, s, k] * w
        cnt += 1
  res["guided_attention"] = tot / cnt
  return res


def test_loss_terms_match_numpy(setup, batch):
  out, loss, aux = setup["forward"](setup["params"], batch)
  config = setup["model"].config
  ref = _np_losses(out, batch, config)
  for k, v in ref.items():
    np.testing.assert_allclose(float(aux[k]), v, rtol=2e-5, err_msg=k)
  total = (sum(ref[k] for k in ("l1_before", "l1_after", "l2_before",
                                "l2_after")) +
           config.stop_weight * ref["stop"] +
           config.guided_attention_weight * ref["guided_attention"])
  np.testing.assert_allclose(float(loss), total, rtol=2e-5)


def test_padding_does_not_change_loss(setup, batch):
  _, loss, aux = setup["forward"](setup["params"], batch)
  rng = np.random.default_rng(1)
  mels = np.array(batch.mels)
  mels[1, 24:] = rng.normal(size=mels[1, 24:].shape) * 10
  tokens = np.array(batch.tokens)
  tokens[1, 8:] = rng.integers(1, NS, size=2)
  changed = batch._replace(mels=jnp.asarray(mels), tokens=jnp.asarray(tokens))
  _, loss2, aux2 = setup["forward"](setup["params"], changed)
  np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-6)
  for k in aux:
    np.testing.assert_allclose(np.asarray(aux2[k]), np.asarray(aux[k]),
                               rtol=1e-6, atol=1e-7, err_msg=k)
  # Control: changing a *valid* frame does change the loss.
  mels[1, 3] += 1.0
  _, loss3, _ = setup["forward"](setup["params"],
                                 batch._replace(mels=jnp.asarray(mels)))
  assert abs(float(loss3) - float(loss)) > 1e-4


def test_guided_attention_closed_form():
  # N = 2 symbols, T = 2 steps, padded to L = 3, S = 3.
  a = np.zeros((1, 3, 3), np.float32)
  a[0, :2, :2] = [[0.3, 0.7], [0.6, 0.4]]
  a[0, 2] = [0.2, 0.3, 0.5]  # padded step: ignored
  ga = jax.jit(T.guided_attention_loss, static_argnames="g")
  loss = ga(jnp.asarray(a), jnp.array([2]), jnp.array([2]), g=0.2)
  w = 1 - math.exp(-0.25 / 0.08)  # (1/2 - 0)^2 / (2 * 0.2^2)
  np.testing.assert_allclose(float(loss), (0.7 * w + 0.6 * w) / 4, rtol=1e-6)
  # A perfectly diagonal alignment (square case) costs nothing.
  eye = np.zeros((1, 3, 3), np.float32)
  eye[0, :2, :2] = np.eye(2)
  assert float(ga(jnp.asarray(eye), jnp.array([2]), jnp.array([2]), g=0.2)) == 0.0


def test_stop_bce_hand_computed():
  logits = np.array([[0.0, 2.0, -1.0]], np.float32)
  targets = np.array([[0.0, 1.0, 0.0]], np.float32)
  mask = np.array([[1.0, 1.0, 0.0]], np.float32)
  got = jax.jit(T.stop_bce, static_argnames="pos_weight")(
      logits, targets, mask, pos_weight=3.0)
  want = (math.log(2.0) + 3.0 * math.log(1 + math.exp(-2.0))) / 2
  np.testing.assert_allclose(float(got), want, rtol=1e-6)


# ---------------------------------------------------------------------------
# Training: alignment, no recompile.


def _alignment_scores(alignment, token_lengths, mel_lengths, r=R):
  """(monotonic fraction, near-diagonal fraction) over all valid steps."""
  mono, diag, n = 0, 0, 0
  for b in range(alignment.shape[0]):
    steps = -(-int(mel_lengths[b]) // r)
    nsym = int(token_lengths[b])
    am = np.argmax(alignment[b, :steps, :nsym], -1)
    mono += np.sum(np.diff(am) >= 0)
    # Within 1.5 symbols of the diagonal n = t * N / T.
    diag += np.sum(np.abs(am - np.arange(steps) * nsym / steps) <= 1.5)
    n += steps
  return mono / (n - alignment.shape[0]), diag / n


def test_learns_monotonic_diagonal_alignment(setup, train_step, batch):
  step, opt = train_step["step"], train_step["opt"]
  params = setup["params"]
  opt_state = opt.init(params)
  _, _, aux0 = setup["forward"](params, batch)
  mono0, diag0 = _alignment_scores(np.asarray(aux0["alignment"]),
                                   batch.token_lengths, batch.mel_lengths)
  losses = []
  for i in range(200):
    params, opt_state, loss, aux = step(params, opt_state, batch, jnp.int32(i))
    losses.append(float(loss))
  mono, diag = _alignment_scores(np.asarray(aux["alignment"]),
                                 batch.token_lengths, batch.mel_lengths)
  assert np.isfinite(losses).all()
  assert losses[-1] < 0.6 * losses[0], (losses[0], losses[-1])
  assert mono >= 0.9, (mono0, mono)
  assert diag >= 0.8, (diag0, diag)
  assert diag > diag0
  assert float(aux["guided_attention"]) < 0.5 * float(aux0["guided_attention"])


def test_train_step_does_not_recompile(setup, train_step, batch):
  step, opt = train_step["step"], train_step["opt"]
  params = setup["params"]
  opt_state = opt.init(params)
  params, opt_state, _, _ = step(params, opt_state, batch, jnp.int32(0))
  n = len(train_step["traces"])
  other = make_batch(seed=5)  # same shapes, other values
  step(params, opt_state, other, jnp.int32(1))
  step(params, opt_state, batch, jnp.int32(2))
  assert len(train_step["traces"]) == n


# ---------------------------------------------------------------------------
# Inference.


def _with_stop_bias(setup, bias):
  params = jax.tree.map(lambda x: x, setup["params"])
  b = params["decoder"]["stop_proj"]["bias"]
  params["decoder"]["stop_proj"]["bias"] = jnp.full_like(b, bias)
  return functional.merge(setup["graphdef"], params, setup["rest"]), params


def test_inference_matches_teacher_forcing(setup, batch):
  # Stop never fires: all 30 frames are generated.
  model, params = _with_stop_bias(setup, -50.0)
  out = T.synthesize(model, batch.tokens, batch.token_lengths,
                     batch.speaker_ids, max_frames=30, seeds=batch.seeds)
  assert out.mel.shape == (2, 30, M)
  assert out.alignment.shape == (2, 15, 10)
  np.testing.assert_array_equal(np.asarray(out.lengths), [30, 30])
  # Feeding the generated frames back as teacher frames with the same
  # seeds reproduces them (same prenet dropout masks, same recurrences).
  tf = batch._replace(mels=out.mel_before,
                      mel_lengths=jnp.array([30, 30], jnp.int32))
  ref, _, _ = setup["forward"](params, tf)
  np.testing.assert_allclose(np.asarray(out.mel_before),
                             np.asarray(ref.mel_before), atol=2e-5)
  np.testing.assert_allclose(np.asarray(out.mel), np.asarray(ref.mel_after),
                             atol=2e-5)
  np.testing.assert_allclose(np.asarray(out.alignment),
                             np.asarray(ref.alignment), atol=2e-5)


def test_inference_stops_and_masks(setup, batch):
  model, _ = _with_stop_bias(setup, 50.0)  # stop fires on the first frame
  out = T.synthesize(model, batch.tokens, batch.token_lengths,
                     batch.speaker_ids, max_frames=30, seeds=batch.seeds)
  np.testing.assert_array_equal(np.asarray(out.lengths), [1, 1])
  mel = np.asarray(out.mel)
  assert np.all(mel[:, 1:] == 0.0) and np.any(mel[:, 0] != 0.0)
  a = np.asarray(out.alignment)
  np.testing.assert_allclose(a[:, 0].sum(-1), 1.0, atol=1e-5)
  assert np.all(a[:, 1:] == 0.0)


def test_inference_dropout_uses_seeds(setup, batch):
  model, _ = _with_stop_bias(setup, -50.0)
  args = (model, batch.tokens, batch.token_lengths, batch.speaker_ids)
  a = T.synthesize(*args, max_frames=30, seeds=batch.seeds)
  b = T.synthesize(*args, max_frames=30, seeds=batch.seeds)
  c = T.synthesize(*args, max_frames=30, seeds=batch.seeds + 1)
  np.testing.assert_array_equal(np.asarray(a.mel), np.asarray(b.mel))
  assert np.abs(np.asarray(a.mel) - np.asarray(c.mel)).max() > 1e-3


def _first_stop_lengths(stop_probs, min_frames, max_frames):
  """Reference lengths in numpy: first index >= min_frames with p > 0.5, +1."""
  out = []
  for p, mf in zip(np.asarray(stop_probs), min_frames):
    hits = np.nonzero(p[:max_frames] > 0.5)[0]
    hits = hits[hits >= mf]
    out.append(int(hits[0]) + 1 if hits.size else max_frames)
  return out


def _mixed_stop_model(setup, batch):
  """The model with the stop bias at minus its median stop logit."""
  model, _ = _with_stop_bias(setup, 0.0)
  full = T.synthesize(model, batch.tokens, batch.token_lengths,
                      batch.speaker_ids, max_frames=30, seeds=batch.seeds,
                      stop_threshold=2.0)
  p = np.asarray(full.stop_probs)[:, :30].astype(np.float64)
  return _with_stop_bias(setup, -float(np.median(np.log(p / (1 - p)))))


@pytest.fixture(scope="module")
def min_frames_runs(setup, batch):
  """Runs of one random model: never stopping, and with min_frames."""
  traces = []

  @jax.jit
  def infer(params, min_frames):
    traces.append(1)  # runs once per trace (compile)
    m = functional.merge(setup["graphdef"], params, setup["rest"])
    return m.infer(batch.tokens, batch.token_lengths, batch.speaker_ids,
                   max_frames=30, seeds=batch.seeds, min_frames=min_frames)

  return dict(infer=infer, traces=traces)


def test_min_frames_ignores_early_stops_like_the_two_pass_rule(
    setup, batch, min_frames_runs):
  infer = min_frames_runs["infer"]
  # A model whose stop fires on every frame: stops at min_frames exactly.
  model, params = _with_stop_bias(setup, 50.0)
  full = T.synthesize(model, batch.tokens, batch.token_lengths,
                      batch.speaker_ids, max_frames=30, seeds=batch.seeds,
                      stop_threshold=2.0)  # probabilities are <= 1: no stop
  np.testing.assert_array_equal(np.asarray(full.lengths), [30, 30])
  for mf in ([5, 12], [0, 29], [7, 40]):
    out = infer(params, jnp.asarray(mf, jnp.int32))
    want = _first_stop_lengths(full.stop_probs, mf, 30)
    np.testing.assert_array_equal(np.asarray(out.lengths), want)
    assert want == [min(m + 1, 30) for m in mf]
    # The frames up to the stop are the ones of the run without stopping.
    for b, n in enumerate(want):
      np.testing.assert_allclose(np.asarray(out.mel_before[b, :n]),
                                 np.asarray(full.mel_before[b, :n]),
                                 atol=1e-6)
      assert np.all(np.asarray(out.mel[b, n:]) == 0.0)
  # A model with mixed stop probabilities: the stop bias moves every stop
  # logit by the same amount (nothing else depends on it), so a bias of
  # minus the median logit puts half of the frames over 0.5.
  model0, params0 = _mixed_stop_model(setup, batch)
  full0 = T.synthesize(model0, batch.tokens, batch.token_lengths,
                       batch.speaker_ids, max_frames=30, seeds=batch.seeds,
                       stop_threshold=2.0)
  probs = np.asarray(full0.stop_probs)
  assert 0.2 < np.mean(probs[:, :30] > 0.5) < 0.8
  for mf in ([0, 0], [3, 9], [17, 25], [29, 29]):
    out = infer(params0, jnp.asarray(mf, jnp.int32))
    np.testing.assert_array_equal(np.asarray(out.lengths),
                                  _first_stop_lengths(probs, mf, 30))
  # No recompilation for other min_frames values (a traced argument).
  assert len(min_frames_runs["traces"]) == 1


def test_min_frames_none_keeps_the_plain_stop_rule(setup, batch):
  model, _ = _mixed_stop_model(setup, batch)
  args = (model, batch.tokens, batch.token_lengths, batch.speaker_ids)
  full = T.synthesize(*args, max_frames=30, seeds=batch.seeds,
                      stop_threshold=2.0)
  plain = T.synthesize(*args, max_frames=30, seeds=batch.seeds)
  zero = T.synthesize(*args, max_frames=30, seeds=batch.seeds,
                      min_frames=np.zeros(2, np.int32))
  want = _first_stop_lengths(full.stop_probs, [0, 0], 30)
  np.testing.assert_array_equal(np.asarray(plain.lengths), want)
  np.testing.assert_array_equal(np.asarray(zero.lengths), want)
  np.testing.assert_array_equal(np.asarray(plain.mel), np.asarray(zero.mel))
  with pytest.raises(ValueError, match="min_frames"):
    T.synthesize(*args, max_frames=30, min_frames=[3])


def test_min_synthesis_frames_hand_computed():
  # 0.02 s per symbol at 16 kHz / hop 200 = 1.6 frames per symbol.
  np.testing.assert_array_equal(
      T.min_synthesis_frames([1, 10, 11, 100], 16000, 200),
      [2, 16, 18, 160])
  np.testing.assert_array_equal(
      T.min_synthesis_frames([10, 100], 16000, 200, max_frames=50), [16, 49])
  # Exact where float arithmetic is not: 0.02 * 35 * 16000 / 200 = 56, which
  # math.ceil of the float product makes 57.
  assert math.ceil(0.02 * 35 * 16000 / 200) == 57
  np.testing.assert_array_equal(T.min_synthesis_frames([35], 16000, 200), [56])
  # 8 kHz, hop 80: one frame per 0.01 s, so 2 frames per symbol.
  np.testing.assert_array_equal(T.min_synthesis_frames(np.arange(1, 60), 8000,
                                                       80), 2 * np.arange(1, 60))
  assert T.min_synthesis_frames([5], 8000, 80).dtype == np.int32
  with pytest.raises(ValueError, match="hop_length"):
    T.min_synthesis_frames([5], 8000, 0)


# ---------------------------------------------------------------------------
# bf16.


def test_bfloat16_compute_runs(setup, batch):
  model = build_model("tacotron", dict(CONFIG, dtype="bfloat16"), nnx.Rngs(0))
  graphdef, params, rest = functional.split(model)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  loss_fn = functional.make_loss_fn(graphdef, rest)
  jaxpr = str(jax.make_jaxpr(loss_fn)(params, batch))
  assert "bf16" in jaxpr  # matmuls/convs really run in bfloat16
  loss, _ = jax.jit(loss_fn)(params, batch)
  _, loss32, _ = setup["forward"](setup["params"], batch)  # same init seed
  assert np.isfinite(float(loss))
  np.testing.assert_allclose(float(loss), float(loss32), rtol=0.05)


# ---------------------------------------------------------------------------
# Bad input and configs.


def test_bad_batches_raise(batch):
  c = T.tacotron_config("tiny", num_mels=M, num_symbols=NS, num_speakers=2,
                        max_tokens=10, max_frames=30)
  T.validate_batch(c, batch)  # the good batch passes
  tok = np.array(batch.tokens)
  tok[0, 3] = NS + 5
  with pytest.raises(ValueError, match=f"num_symbols={NS}"):
    T.validate_batch(c, batch._replace(tokens=jnp.asarray(tok)))
  with pytest.raises(ValueError, match="Zero-length text"):
    T.validate_batch(c, batch._replace(token_lengths=jnp.array([10, 0])))
  with pytest.raises(ValueError, match="Zero-length mel"):
    T.validate_batch(c, batch._replace(mel_lengths=jnp.array([0, 24])))
  with pytest.raises(ValueError, match=f"num_mels={M}"):
    T.validate_batch(c, batch._replace(mels=jnp.zeros((2, 30, M + 1))))
  short = T.tacotron_config("tiny", num_mels=M, num_symbols=NS,
                            num_speakers=2, max_tokens=9, max_frames=29)
  with pytest.raises(ValueError, match="max_tokens=9"):
    T.validate_batch(short, batch)
  with pytest.raises(ValueError, match="max_frames=29"):
    T.validate_batch(short, batch._replace(token_lengths=jnp.array([9, 8])))
  with pytest.raises(ValueError, match="num_speakers=2"):
    T.validate_batch(c, batch._replace(speaker_ids=jnp.array([0, 2])))


def test_synthesize_rejects_bad_text(setup, batch):
  model = setup["model"]
  with pytest.raises(ValueError, match="Unknown symbol ids \\[99\\]"):
    T.synthesize(model, [[1, 99]], [2])
  with pytest.raises(ValueError, match="Zero-length text"):
    T.synthesize(model, [[0, 0]], [0])
  with pytest.raises(ValueError, match="max_tokens=256"):
    T.synthesize(model, np.ones((1, 300), np.int32), [300])
  with pytest.raises(ValueError, match="max_frames"):
    T.synthesize(model, [[1, 2]], [2], max_frames=10**6)


def test_bad_configs_raise():
  with pytest.raises(ValueError, match="'tiny'"):
    T.tacotron_config("huge")
  with pytest.raises(ValueError, match="num_melz"):
    T.tacotron_config("tiny", num_melz=80)
  with pytest.raises(ValueError, match="even"):
    T.tacotron_config("tiny", encoder_dim=33)
  with pytest.raises(ValueError, match="tacotron"):
    build_model("tacotronn", "tiny", 0)


def test_sizes_are_the_documented_ones():
  full = T.tacotron_config("full")
  assert (full.embed_dim, full.encoder_dim, full.attention_rnn_dim,
          full.decoder_rnn_dim, full.postnet_dim, full.prenet_dims) == (
              512, 512, 1024, 1024, 512, (256, 256))
  tiny = T.tacotron_config("tiny")
  assert (tiny.embed_dim, tiny.encoder_dim, tiny.attention_dim,
          tiny.decoder_rnn_dim, tiny.postnet_dim, tiny.reduction_factor) == (
              32, 32, 32, 64, 32, 2)


# ---------------------------------------------------------------------------
# Shared layers.


def test_bilstm_padding_equals_unpadded_and_directions():
  from metatts.models import layers
  bl = layers.BiLSTM(3, 4, rngs=nnx.Rngs(0))
  x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
  mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool)
  run = nnx.jit(lambda m, x, k: m(x, k))
  y = np.asarray(run(bl, x, mask))
  # Entry 1 equals the same utterance without padding ...
  alone = np.asarray(run(bl, x[1:, :3], np.ones((1, 3), bool)))
  np.testing.assert_allclose(y[1, :3], alone[0], atol=1e-6)
  assert np.all(y[1, 3:] == 0.0)
  # ... and the backward half is the forward cell's math on reversed time.
  fw = np.asarray(layers.lstm_scan(bl.backward.cell, x[:1, ::-1])[0])
  np.testing.assert_allclose(y[0, :, 4:], fw[0, ::-1], atol=1e-6)


def test_conv1d_causal_and_same_padding():
  from metatts.models import layers
  causal = layers.Conv1D(2, 3, 4, padding="causal", dilation=2,
                         rngs=nnx.Rngs(0))
  same = layers.Conv1D(2, 3, 5, padding="same", rngs=nnx.Rngs(1))
  x = np.random.default_rng(0).normal(size=(1, 12, 2)).astype(np.float32)
  x2 = x.copy()
  x2[0, 7] += 1.0
  run = nnx.jit(lambda m, x: m(x))
  a, b = np.asarray(run(causal, x)), np.asarray(run(causal, x2))
  assert a.shape == (1, 12, 3)
  np.testing.assert_array_equal(a[0, :7], b[0, :7])  # no look-ahead
  assert np.abs(a[0, 7] - b[0, 7]).max() > 0
  # 'same' with k = 5 sees exactly t-2..t+2.
  c, d = np.asarray(run(same, x)), np.asarray(run(same, x2))
  changed = np.nonzero(np.abs(c - d).max(-1)[0] > 0)[0]
  np.testing.assert_array_equal(changed, [5, 6, 7, 8, 9])
  with pytest.raises(ValueError, match="'same', 'causal'"):
    layers.Conv1D(2, 3, 4, padding="valid", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="'matmul', 'conv'"):
    layers.Conv1D(2, 3, 4, lowering="fft", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("k,dilation,padding", [(1, 1, "same"), (4, 1, "same"),
                                                (5, 1, "same"),
                                                (2, 4, "causal"),
                                                (3, 2, "causal")])
def test_conv1d_matmul_form_equals_a_direct_convolution(k, dilation, padding):
  """Conv1D is written as one matmul over shifted copies of its input; it
  equals a direct numpy sum over taps and ``lax.conv_general_dilated`` (what
  ``nnx.Conv`` runs), and so do its first and second derivatives."""
  from metatts.models import layers
  conv = layers.Conv1D(3, 4, k, padding=padding, dilation=dilation,
                       rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 9, 3)).astype(np.float32)
  kernel = np.asarray(conv.conv.kernel[...])
  bias = np.asarray(conv.conv.bias[...])
  total = (k - 1) * dilation
  left = total // 2 if padding == "same" else total
  padded = np.pad(x, ((0, 0), (left, total - left), (0, 0)))
  direct = bias + sum(padded[:, i * dilation:i * dilation + 9] @ kernel[i]
                      for i in range(k))
  np.testing.assert_allclose(np.asarray(conv(x)), direct, atol=1e-5)
  np.testing.assert_allclose(np.asarray(conv(x)), np.asarray(conv.conv(x)),
                             atol=1e-5)
  # The lax.conv lowering (an option for first-order learners) is the same
  # function of the same parameters.
  as_conv = layers.Conv1D(3, 4, k, padding=padding, dilation=dilation,
                          lowering="conv", rngs=nnx.Rngs(0))
  np.testing.assert_allclose(np.asarray(as_conv(x)), direct, atol=1e-5)

  def loss(kern, apply):  # a second-order quantity, as MAML differentiates
    def inner(kk):
      return jnp.sum(jnp.tanh(apply(kk, x)) ** 2)
    return jnp.sum(jax.grad(inner)(kern) ** 2)

  graphdef, params, rest = functional.split(conv)

  def ours(kk, xx):
    new = {"conv": dict(params["conv"], kernel=kk)}
    return functional.merge(graphdef, new, rest)(xx)

  def lax_conv(kk, xx):
    return jax.lax.conv_general_dilated(
        xx, kk, (1,), [(left, total - left)], rhs_dilation=(dilation,),
        dimension_numbers=("NWC", "WIO", "NWC")) + bias

  kern = jnp.asarray(kernel)
  g_ours = jax.grad(lambda kk: loss(kk, ours))(kern)
  g_ref = jax.grad(lambda kk: loss(kk, lax_conv))(kern)
  np.testing.assert_allclose(np.asarray(g_ours), np.asarray(g_ref),
                             rtol=1e-4, atol=1e-5)
