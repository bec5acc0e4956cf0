"""Tests of the source-filter WaveNet vocoder (metatts.models.nsf)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from metatts import functional
from metatts import vocoders
from metatts.audio import features as afeat
from metatts.data.features import FeatureConfig
from metatts.models import nsf
from metatts.models import wavenet
from metatts.training import export
from metatts.types import VocoderBatch

SR = 16000
HOP = 80
N_MELS = 8


def _cfg(**kw):
  base = dict(n_mels=N_MELS, sample_rate=SR, hop_length=HOP,
              upsample_factors=(8, 10), n_fft=256, win_length=200,
              fmin=0.0, fmax=None,
              stft_resolutions=((128, 32, 128), (64, 16, 64)))
  base.update(kw)
  return nsf.nsf_config("tiny", **base)


def test_excitation_is_the_closed_form_harmonic_sum():
  """Noise-free excitation = sum of sines at k * F0 with the drawn phases."""
  f0 = jnp.array([[100.0, 100.0, 0.0, 7000.0]])
  e = nsf.excitation(f0, jax.random.key(0), hop_length=HOP, sample_rate=SR,
                     harmonics=3, sine_amp=0.1, noise_std=0.0)
  assert e.shape == (1, 4 * HOP, 3)
  e = np.asarray(e)
  # Voiced frames at 100 Hz: column k-1 is 0.1 sin(2 pi k 100 n / SR + phi),
  # i.e. it obeys x[n+1] + x[n-1] = 2 cos(2 pi k 100 / SR) x[n] exactly and
  # reaches its amplitude within the period (160 samples).
  for k in range(1, 4):
    x = e[0, :2 * HOP, k - 1]
    assert 0.099 < np.max(np.abs(x)) <= 0.1 + 1e-6
    c = np.cos(2 * np.pi * k * 100 / SR)
    np.testing.assert_allclose(x[2:] + x[:-2], 2 * c * x[1:-1], atol=1e-5)
  # Unvoiced frame (F0 = 0): no sine; its noise has std sine_amp / 3
  # whatever noise_std is.
  unvoiced = e[0, 2 * HOP:3 * HOP]
  assert np.allclose(unvoiced, unvoiced[:, :1])  # the same noise in every column
  assert 0.02 < unvoiced[:, 0].std() < 0.05
  # 7 kHz: the second and third harmonics are above Nyquist (8 kHz): zero.
  high = e[0, 3 * HOP:, :]
  assert np.abs(high[:, 0]).max() > 0.05
  np.testing.assert_array_equal(high[:, 1:], 0.0)


def test_shaped_excitation_has_the_target_mel():
  """Harmonics (voiced) or noise (unvoiced) shaped by a mel come back with
  that mel: within 0.3 nats per bin, against ~1 nat before whitening."""
  mc = afeat.MelConfig(n_mels=40)
  frames, hop = 40, mc.hop_length
  t = np.arange(frames * hop) / mc.sample_rate
  x = sum(0.3 / k * np.sin(2 * np.pi * 150 * k * t) for k in range(1, 30))
  x[:20 * hop] = 0.05 * np.random.default_rng(0).normal(size=20 * hop)
  mel = afeat.log_mel_spectrogram(jnp.asarray(x, jnp.float32), mc)[:frames]
  f0 = np.where(np.arange(frames) >= 20, 150.0, 0.0).astype(np.float32)
  y = nsf.shaped_excitation(mel[None], jnp.asarray(f0)[None],
                            jax.random.key(0), mc, 64)[0]
  assert y.shape == (frames * hop,)
  back = afeat.log_mel_spectrogram(y, mc)[:frames]
  d = np.abs(np.asarray(back - mel))
  assert d[24:36].mean() < 0.3, d[24:36].mean()  # voiced, away from edges
  assert d[4:16].mean() < 0.4, d[4:16].mean()  # unvoiced


def test_f0_decoding_is_the_local_weighted_mean_of_the_bins():
  """Closed forms: one dominant bin decodes to its centre; two equal bins to
  the geometric mean of their centres; a far-away bin is ignored (CREPE's
  local average); a negative voicing logit decodes to 0 (unvoiced)."""
  cfg = _cfg()
  c = cfg.f0_bin_log_hz()
  assert c.shape == (cfg.f0_bins,)
  np.testing.assert_allclose(np.exp(c[[0, -1]]), [cfg.f0_min, cfg.f0_max],
                             rtol=1e-5)
  logits = np.full((4, 1 + cfg.f0_bins), -50.0, np.float32)
  logits[:, 0] = [3.0, 3.0, 3.0, -3.0]
  logits[0, 1 + 10] = 20.0                       # one bin
  logits[1, 1 + 10] = logits[1, 1 + 11] = 20.0   # two equal neighbours
  logits[2, 1 + 10] = 20.0                       # ...and a far one, equal
  logits[2, 1 + 25] = 20.0
  logits[3, 1 + 10] = 20.0                       # unvoiced
  hz = np.asarray(nsf.f0_from_prediction(jnp.asarray(logits), cfg))
  np.testing.assert_allclose(
      hz, [np.exp(c[10]), np.exp((c[10] + c[11]) / 2), np.exp(c[10]), 0.0],
      rtol=1e-4)


def test_fitted_f0_predictor_tracks_the_pitch_of_harmonic_tones():
  """fit_f0_predictor on mels of harmonic tones at known F0s: afterwards
  tones at F0s it never saw are tracked (median error far below the
  untrained predictor's), silence is unvoiced, and the filter's parameters
  are untouched."""
  cfg = _cfg(n_mels=40, fmax=None, f0_bins=48, frame_channels=32,
             f0_dilations=(1, 2))
  mc = cfg.mel_config()
  rng = np.random.default_rng(0)

  def clip(f0_hz):
    frames = 24
    t = np.arange(frames * HOP) / SR
    x = sum(0.3 / k * np.sin(2 * np.pi * f0_hz * k * t + rng.uniform(0, 6))
            for k in range(1, int(SR / 2 / f0_hz)))
    x[:8 * HOP] = 0.0  # silence first
    mel = np.asarray(afeat.log_mel_spectrogram(jnp.asarray(x, jnp.float32),
                                               mc))[:frames]
    f0 = np.where(np.arange(frames) >= 9, f0_hz, 0.0).astype(np.float32)
    return mel, f0

  train = [clip(f) for f in np.geomspace(70, 400, 24)]
  test = [clip(f) for f in (83.0, 131.0, 207.0, 333.0)]
  model = nsf.NSFWaveNet(cfg, rngs=nnx.Rngs(0))
  before = jax.tree.map(np.asarray, nnx.state(model.layers, nnx.Param))

  def cents_error():
    errs = []
    for mel, f0 in test:
      hz = np.asarray(model.predict_f0(jnp.asarray(mel)[None]))[0]
      v = f0 > 0
      errs.append(np.abs(1200 * np.log2(np.maximum(hz[v], 1.0) / f0[v])))
    return float(np.median(np.concatenate(errs)))

  untrained = cents_error()
  out = nsf.fit_f0_predictor(model, train, steps=150, window_frames=16,
                             batch_size=16, learning_rate=3e-3)
  assert set(out) >= {"loss", "f0_ce", "vuv_error", "f0_cents"}
  trained = cents_error()
  assert trained < 100 and trained < untrained / 4, (untrained, trained)
  silent = np.asarray(model.predict_f0(jnp.asarray(test[0][0][None, :6])))
  np.testing.assert_array_equal(silent, 0.0)
  after = jax.tree.map(np.asarray, nnx.state(model.layers, nnx.Param))
  jax.tree.map(np.testing.assert_array_equal, before, after)


def test_untrained_model_is_the_dsp_vocoder():
  """The filter's last layer starts at zero: output = gain (1) x shaped, by
  convolution (the sizes' default) or STFT reshaping (older exports)."""
  batch = _batch()
  key = jax.random.key(4)
  for shaping in ("convolution", "stft"):
    cfg = _cfg(n_fft=256, win_length=200, shaping=shaping)
    model = nsf.NSFWaveNet(cfg, rngs=nnx.Rngs(0))
    out = model.filter(batch.mels, batch.f0, key)
    if shaping == "convolution":
      shaped = nsf.convolved_excitation(batch.mels, batch.f0,
                                        jax.random.fold_in(key, 1),
                                        cfg.mel_config())
    else:
      shaped = nsf.shaped_excitation(batch.mels, batch.f0,
                                     jax.random.fold_in(key, 1),
                                     cfg.mel_config(), cfg.harmonics)
    np.testing.assert_allclose(np.asarray(out), np.asarray(shaped),
                               atol=1e-6)
  assert nsf.NSFConfig().shaping == "stft"  # an export without the field
  with pytest.raises(ValueError, match="shaping"):
    _cfg(shaping="fft")
  plain = nsf.NSFWaveNet(_cfg(envelope=False), rngs=nnx.Rngs(0))
  assert plain.gain is None and plain.input_proj.kernel.shape[0] == 1


def test_pulse_excitation_is_the_harmonic_sum_of_one_density():
  """Voiced: sqrt(2 F0 / sr) x the sum of every cosine k F0 below Nyquist
  (summed directly here); unvoiced: noise of variance 1/2. Each has power
  ~1/2, i.e. a spectral density of 1/sr, whatever F0."""
  frames = 40
  for hz in (61.0, 123.0, 397.0):
    f0 = np.full((1, frames), hz, np.float32)
    f0[0, 30:] = 0.0
    got = np.asarray(nsf.pulse_excitation(
        f0, jax.random.key(0), hop_length=HOP, sample_rate=SR))[0]
    # The model's own phase (float32 running sum), summed directly here.
    _, cycles = nsf._sample_f0_and_cycles(f0, HOP, SR)  # pylint: disable=protected-access
    cycles = np.asarray(cycles, np.float64)[0]
    count = int(np.ceil(SR / (2 * hz)) - 1)
    assert count * hz < SR / 2 <= (count + 1) * hz
    want = np.sqrt(2 * hz / SR) * sum(
        np.cos(2 * np.pi * k * cycles) for k in range(1, count + 1))
    voiced = slice(0, 30 * HOP)
    peak = np.max(np.abs(want[voiced]))
    np.testing.assert_allclose(got[voiced], want[voiced], atol=2e-3 * peak)
    assert abs(np.mean(got[voiced] ** 2) - 0.5) < 0.03, hz
    assert abs(np.var(got[30 * HOP:]) - 0.5) < 0.1


def _direct_envelope_filter(x, mels, mc):
  """envelope_filter written directly: np.convolve per frame, loop OLA."""
  hop, n = mc.hop_length, mc.n_fft
  frames = mels.shape[0]
  unit = np.sqrt(np.sum(np.square(afeat.stft_window(mc))) / 2)
  env = np.asarray(afeat.mel_to_linear(jnp.asarray(mels), mc),
                   np.float64) / unit
  hann = np.sin(np.pi * np.arange(2 * hop) / (2 * hop)) ** 2
  padded = np.concatenate([np.zeros(hop), x, np.zeros(hop)])
  out = np.zeros(frames * hop + 2 * hop + n)
  for t in range(frames):
    h = np.fft.fftshift(np.fft.irfft(env[t], n=n))
    seg = padded[t * hop:t * hop + 2 * hop] * hann
    y = np.convolve(seg, h)  # length 2 hop + n - 1
    out[t * hop:t * hop + len(y)] += y
  return out[hop + n // 2:hop + n // 2 + frames * hop]


def test_envelope_filter_is_linear_convolution_by_frame():
  """Against direct convolution, and: unit-density noise through a flat
  log-mel L comes out with a mel of about L (Rayleigh magnitudes: the mean
  |X| is sqrt(pi) / 2 of the RMS)."""
  mc = afeat.MelConfig(sample_rate=SR, n_fft=256, win_length=200,
                       hop_length=HOP, n_mels=N_MELS, fmin=0.0, fmax=None)
  frames = 60
  rng = np.random.default_rng(0)
  x = rng.normal(0, np.sqrt(0.5), frames * HOP).astype(np.float32)
  mels = rng.uniform(-6, -2, (frames, N_MELS)).astype(np.float32)
  got = np.asarray(nsf.envelope_filter(jnp.asarray(x)[None],
                                       jnp.asarray(mels)[None], mc))[0]
  want = _direct_envelope_filter(x.astype(np.float64), mels, mc)
  np.testing.assert_allclose(got, want, atol=1e-4 * np.max(np.abs(want)))
  flat = np.full((frames, N_MELS), -3.0, np.float32)
  out = nsf.envelope_filter(jnp.asarray(x)[None], jnp.asarray(flat)[None], mc)
  level = np.asarray(afeat.log_mel_spectrogram(out[0], mc))[5:-5]
  assert abs(np.mean(level) - (-3.0 + np.log(np.sqrt(np.pi) / 2))) < 0.15


def test_stft_loss_closed_forms():
  """pred = a * target: spectral convergence |1 - a|, log-magnitude |log a|."""
  x = jax.random.normal(jax.random.key(1), (2, 2048))
  res = ((256, 64, 256), (128, 32, 96))
  loss, parts = nsf.multi_resolution_stft_loss(x, x, res, SR)
  assert float(loss) == pytest.approx(0.0, abs=1e-6)
  for a in (0.5, 2.0):
    loss, parts = nsf.multi_resolution_stft_loss(a * x, x, res, SR)
    assert float(parts["sc"]) == pytest.approx(abs(1 - a), rel=1e-3)
    assert float(parts["log_mag"]) == pytest.approx(abs(np.log(a)), rel=1e-2)
    assert float(loss) == pytest.approx(abs(1 - a) + abs(np.log(a)),
                                        rel=1e-2)


def test_analyse_f0_finds_the_pitch_at_the_mel_frames():
  pytest.importorskip("pyworld")
  t = np.arange(SR) / SR  # 1 s of a 180 Hz pulse-like tone, then silence
  x = sum(np.sin(2 * np.pi * 180 * k * t) / k for k in range(1, 6))
  x = np.concatenate([0.3 * x / np.abs(x).max(), np.zeros(SR // 2)])
  mel_frames = 1 + x.size // 200
  f0 = nsf.analyse_f0(x, mel_frames, SR, 200)
  assert f0.shape == (mel_frames,) and f0.dtype == np.float32
  voiced = f0[10:70]  # well inside the tone (frames of 12.5 ms)
  np.testing.assert_allclose(voiced, 180.0, rtol=0.02)
  assert np.all(f0[90:] == 0)  # silence is unvoiced


def test_vocoder_batch_windows_f0_with_the_mel():
  rng = np.random.default_rng(0)
  frames = 30
  mel = np.arange(frames, dtype=np.float32)[:, None] * np.ones((1, N_MELS))
  audio = rng.normal(size=frames * HOP).astype(np.float32)
  f0 = 100.0 + np.arange(frames, dtype=np.float32)
  b = wavenet.make_vocoder_batch(rng, [(mel, audio, f0)] * 3, 8, HOP)
  assert b.f0.shape == (3, 8) and b.mels.shape == (3, 8, N_MELS)
  # The F0 of each window's frame i is the one of the mel's frame i.
  np.testing.assert_array_equal(b.f0, 100.0 + b.mels[..., 0])
  starts = b.mels[:, 0, 0].astype(int)
  for i, s in enumerate(starts):
    np.testing.assert_array_equal(b.audio[i], audio[s * HOP:(s + 8) * HOP])
  assert wavenet.make_vocoder_batch(rng, [(mel, audio)], 8, HOP).f0 is None
  with pytest.raises(ValueError, match="every clip"):
    wavenet.make_vocoder_batch(rng, [(mel, audio), (mel, audio, f0)], 8, HOP)
  with pytest.raises(ValueError, match="F0 has 29 frames"):
    wavenet.make_vocoder_batch(rng, [(mel, audio, f0[:-1])], 8, HOP)


def _batch(seed=0, frames=12, batch=2):
  """Harmonic 'speech': its F0 is known, its mel is its log-mel."""
  rng = np.random.default_rng(seed)
  mc = afeat.MelConfig(sample_rate=SR, n_fft=256, win_length=200,
                       hop_length=HOP, n_mels=N_MELS, fmin=0.0, fmax=None)
  mels, audios, f0s = [], [], []
  for _ in range(batch):
    hz = rng.uniform(100, 200)
    t = np.arange(frames * HOP) / SR
    a = sum(0.2 / k * np.sin(2 * np.pi * hz * k * t) for k in range(1, 4))
    mel = np.asarray(afeat.log_mel_spectrogram(jnp.asarray(a, jnp.float32),
                                               mc))[:frames]
    mels.append(mel)
    audios.append(a.astype(np.float32))
    f0s.append(np.full(frames, hz, np.float32))
  return VocoderBatch(mels=jnp.asarray(np.stack(mels)),
                      audio=jnp.asarray(np.stack(audios)),
                      audio_lengths=jnp.full((batch,), frames * HOP,
                                             jnp.int32),
                      speaker_ids=jnp.zeros((batch,), jnp.int32),
                      f0=jnp.asarray(np.stack(f0s)))


def test_loss_is_pure_masks_padding_and_training_lowers_it():
  graphdef, params, rest = functional.split(
      nsf.NSFWaveNet(_cfg(), rngs=nnx.Rngs(0)))
  loss_fn = functional.make_loss_fn(graphdef, rest)
  batch = _batch()
  step_fn = jax.jit(jax.value_and_grad(lambda p, b: loss_fn(p, b)[0]))
  l0, _ = step_fn(params, batch)
  l0b, _ = step_fn(params, batch)
  assert float(l0) == float(l0b)  # the excitation's key comes from the batch
  # Audio, mels and F0 after audio_lengths never change the loss.
  short = batch._replace(audio_lengths=jnp.array([5 * HOP, 12 * HOP]))
  noisy = short._replace(audio=short.audio.at[0, 5 * HOP:].add(0.5),
                         mels=short.mels.at[0, 5:].add(3.0),
                         f0=short.f0.at[0, 5:].set(0.0))
  loss_jit = jax.jit(loss_fn)
  a_short, a_noisy = loss_jit(params, short), loss_jit(params, noisy)
  np.testing.assert_allclose(float(a_short[0]), float(a_noisy[0]), rtol=1e-6)
  assert float(a_short[0]) != float(l0)  # the mask does take effect
  aux = a_short[1]
  assert set(aux) == {"stft", "sc", "log_mag", "f0_ce", "vuv_error",
                      "f0_cents"}
  opt = optax.adam(3e-3)
  state = opt.init(params)
  p = params
  for _ in range(30):
    _, g = step_fn(p, batch)
    u, state = opt.update(g, state, p)
    p = optax.apply_updates(p, u)
  l1, _ = step_fn(p, batch)
  assert float(l1) < 0.8 * float(l0), (float(l0), float(l1))
  # F0 without a target is a clear error.
  with pytest.raises(ValueError, match="VocoderBatch.f0"):
    loss_fn(params, batch._replace(f0=None))


def test_vocoder_from_an_export_synthesizes_the_predicted_f0(tmp_path):
  cfg = _cfg()
  model = nsf.NSFWaveNet(cfg, rngs=nnx.Rngs(3))
  _, params, _ = functional.split(model)
  fc = FeatureConfig(sample_rate=SR, n_fft=256, win_length=200,
                     hop_length=HOP, n_mels=N_MELS)
  out = str(tmp_path / "vocoder" / "model")
  export.export_model(out, method="vocoder-transfer", model_name="nsf",
                      model_config=cfg, params=params, feature_config=fc,
                      symbols="characters", speakers=[],
                      adapt={"filter": "all", "optimizer": "sgd", "lr": 0.01,
                             "default_steps": 5, "speaker_slot": 0})
  voc = vocoders.load_vocoder(out, out, fc.mel_config())
  assert isinstance(voc, vocoders.NSFVocoder) and voc.name == "nsf"
  mel = np.random.default_rng(0).normal(-4, 2, (37, N_MELS)).astype(
      np.float32)
  key = jax.random.key(5)
  a = voc(mel, key)
  assert a.shape == (37 * HOP,) and a.dtype == np.float32
  assert np.all(np.isfinite(a))
  np.testing.assert_array_equal(a, voc(mel, key))  # same key, same audio
  # Synthesis = the filter excited by the predicted F0.
  padded = np.pad(mel, ((0, 64 - 37), (0, 0)), constant_values=mel.min())
  m = jnp.asarray(padded)[None]
  f0 = model.predict_f0(m)
  ref = np.asarray(model.filter(m, f0, key))[0, :37 * HOP]
  np.testing.assert_allclose(a, ref, rtol=1e-4, atol=1e-5)  # jit vs eager
  assert os.path.isfile(os.path.join(out, "model.json"))


def test_vocoder_experiment_smoke(tmp_path):
  """experiments/configs/vocoder.py:smoke end to end: train, export,
  held-out loss after adaptation, every reference clip resynthesized."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  from metatts import experiments  # pylint: disable=g-import-not-at-top
  from tts_smoke import REPO  # pylint: disable=g-import-not-at-top
  from tts_smoke import smoke_config  # pylint: disable=g-import-not-at-top
  path = os.path.join(REPO, "experiments", "configs", "vocoder.py")
  spec = importlib.util.spec_from_file_location("_vocoder_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("smoke")
  where = smoke_config(str(tmp_path))
  c.data.root, c.data.cache_dir = where.data.root, where.data.cache_dir
  c.progress = False
  w = str(tmp_path / "run")
  result = experiments.run(c, w)
  v = result["vocoder"]
  assert v["model"] == "nsf" and "heldout_nll" not in v
  for split, by_shots in v["heldout_loss"].items():
    cells = by_shots["1"]
    assert set(cells) == {"0", "2"} and all(np.isfinite(list(cells.values())))
    # ... and the MCD of the adapted vocoder's resynthesis (dB, positive).
    mcd = v["heldout_mcd"][split]["1"]
    assert set(mcd) == {"0", "2"} and all(0 < x < 100 for x in mcd.values())
  info = json.load(open(os.path.join(w, "vocoder", "model", "model.json")))
  assert info["model"] == "nsf" and info["method"] == "vocoder-transfer"
  refs = sorted(os.path.relpath(os.path.join(d, f), os.path.join(
      w, "samples", "reference")) for d, _, fs in os.walk(
          os.path.join(w, "samples", "reference")) for f in fs
                if f.endswith(".wav"))
  assert refs and result["clips"] == len(refs)
  for rel in refs:
    real, sr = sf.read(os.path.join(w, "samples", "reference", rel))
    voc, sr2 = sf.read(os.path.join(w, "samples", "vocoded", rel))
    assert sr == sr2 and voc.shape == real.shape
  assert json.load(open(os.path.join(w, "vocoder.json")))["clips"] == len(
      refs)
  # The held-out protocol with resampled support windows: the first 5 steps
  # see the same windows as the fixed protocol, later steps new ones.
  from metatts import functional  # pylint: disable=g-import-not-at-top
  from metatts.experiments import data as edata  # pylint: disable=g-import-not-at-top
  from metatts.experiments import vocoder as evoc  # pylint: disable=g-import-not-at-top
  from metatts.training import export  # pylint: disable=g-import-not-at-top
  model, params, _, _ = export.load_exported(os.path.join(w, "vocoder",
                                                          "model"))
  graphdef, _, rest = functional.split(model)
  data = edata.prepare_data(c, progress=False)
  saved = json.load(open(os.path.join(w, "vocoder", "heldout.json")))
  assert saved["protocol"] == dict(evoc.heldout_protocol(c), mcd=True,
                                   trained_steps=2, method="transfer")
  c.adapt.steps = (0, 5, 10)
  fixed = evoc.heldout_protocol(c)
  c.vocoder.heldout_resample = True
  fresh = evoc.heldout_protocol(c)
  assert fresh == dict(fixed, resample=True)
  tables = [evoc.heldout_adaptation(graphdef, rest, params, data.heldout,
                                    data.feature_config, "nsf", p)
            for p in (fixed, fresh)]
  for split in saved["per_speaker"]:
    # The refactored function gives the experiment's table.
    assert tables[0][0][split]["1"]["0"] == saved["per_speaker"][split]["1"][
        "0"]
    (a, _), (b, _) = tables
    assert a[split]["1"]["0"] == b[split]["1"]["0"]
    assert a[split]["1"]["5"] == b[split]["1"]["5"]
    assert a[split]["1"]["10"] != b[split]["1"]["10"]
