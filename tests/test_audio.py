"""Tests for metatts.audio.features and metatts.audio.io.

References: librosa 0.11 (mel filterbank, melspectrogram), closed forms of
mu-law companding (ITU-T G.711) and of sinusoids.
"""

import os

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
import soundfile as sf

from metatts.audio import features as F
from metatts.audio import io as aio

SR = 16000


def harmonic(seconds=0.6, f0=150.0, sr=SR, amp=0.3, seed=0):
  """Harmonic tone with a Hann envelope plus faint noise (speech-like)."""
  t = np.arange(int(seconds * sr)) / sr
  x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 8))
  env = np.hanning(t.shape[0])
  noise = np.random.default_rng(seed).standard_normal(t.shape[0]) * 1e-3
  return (amp * env * x / 2 + noise).astype(np.float32)


def dominant_freq(x, sr):
  spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
  return np.fft.rfftfreq(len(x), 1 / sr)[np.argmax(spec)]


# --------------------------------------------------------------------------
# Mel spectrogram vs librosa.

CONFIGS = [
    F.MelConfig(),  # Tacotron 2 at 16 kHz: the FeatureConfig default
    F.MelConfig(sample_rate=22050, n_fft=512, win_length=512, hop_length=128,
                n_mels=40, fmin=0.0, fmax=None),
]


def librosa_mel(x, c):
  return librosa.feature.melspectrogram(
      y=x, sr=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length,
      win_length=c.win_length, window="hann", center=True, pad_mode="reflect",
      power=1.0, n_mels=c.n_mels, fmin=c.fmin, fmax=c.fmax).T


@pytest.mark.parametrize("config", CONFIGS)
def test_filterbank_matches_librosa(config):
  ref = librosa.filters.mel(sr=config.sample_rate, n_fft=config.n_fft,
                            n_mels=config.n_mels, fmin=config.fmin,
                            fmax=config.fmax)
  np.testing.assert_allclose(F.mel_filterbank(config), ref, rtol=0,
                             atol=1e-6 * ref.max())


@pytest.mark.parametrize("config", CONFIGS)
def test_mel_matches_librosa(config):
  """Stated tolerance: |mel - librosa| <= 1e-4 * max(librosa) everywhere and
  |log-mel - librosa log-mel| <= 1e-3 nats (both floored at 1e-5)."""
  x = harmonic(0.77, sr=config.sample_rate)
  ref = librosa_mel(x, config)
  got = np.asarray(jax.jit(lambda a: F.mel_spectrogram(a, config))(x))
  assert got.shape == ref.shape == (config.num_frames(x.shape[0]),
                                    config.n_mels)
  assert np.max(np.abs(got - ref)) <= 1e-4 * ref.max()
  log_ref = np.log(np.maximum(ref, config.log_floor))
  log_got = np.asarray(F.log_mel_spectrogram(x, config))
  assert np.max(np.abs(log_got - log_ref)) <= 1e-3


def test_mel_batched_equals_single_and_jit_traces_once():
  c = F.MelConfig()
  xs = np.stack([harmonic(0.5, f0=120.0), harmonic(0.5, f0=210.0, seed=1)])
  traces = []

  @jax.jit
  def fn(a):
    traces.append(1)
    return F.log_mel_spectrogram(a, c)

  batched = np.asarray(fn(xs))
  np.asarray(fn(xs * 0.5))  # same shape: no retrace
  assert len(traces) == 1
  for i in range(2):
    np.testing.assert_allclose(batched[i], F.log_mel_spectrogram(xs[i], c),
                               atol=1e-5)


def test_mel_peak_at_tone_frequency():
  c = F.MelConfig()
  t = np.arange(SR) / SR
  mel = np.asarray(F.mel_spectrogram(np.sin(2 * np.pi * 1000 * t), c))
  centers = librosa.mel_frequencies(n_mels=c.n_mels + 2, fmin=c.fmin,
                                    fmax=c.fmax)[1:-1]
  peak = centers[np.argmax(mel[20])]
  assert abs(peak - 1000) < 60  # within one mel band of the tone


def test_stft_istft_roundtrip():
  c = F.MelConfig()
  x = harmonic(0.5)
  y = np.asarray(F.istft(F.stft(x, c), c, length=x.shape[0]))
  np.testing.assert_allclose(y, x, atol=1e-5)


def test_config_validation():
  with pytest.raises(ValueError, match="win_length"):
    F.MelConfig(n_fft=256, win_length=800).validate()
  with pytest.raises(ValueError, match="fmax"):
    F.mel_filterbank(F.MelConfig(fmax=9000.0))


# --------------------------------------------------------------------------
# Griffin-Lim.


def test_griffin_lim_reduces_spectral_convergence():
  c = F.MelConfig()
  x = harmonic(0.5)
  mag = jnp.abs(F.stft(x, c))
  key = jax.random.key(0)
  random_phase = F.griffin_lim(mag, key, config=c, n_iter=0,
                               length=x.shape[0])
  gl = F.griffin_lim(mag, key, config=c, n_iter=30, length=x.shape[0])
  sc0 = float(F.spectral_convergence(random_phase, mag, c))
  sc = float(F.spectral_convergence(gl, mag, c))
  assert sc < 0.5 * sc0, (sc, sc0)
  # Same key, same numbers.
  np.testing.assert_array_equal(
      gl, F.griffin_lim(mag, key, config=c, n_iter=30, length=x.shape[0]))


def test_mel_to_audio_recovers_mel():
  c = F.MelConfig()
  x = harmonic(0.6)
  log_mel = F.log_mel_spectrogram(x, c)
  y = np.asarray(F.mel_to_audio(log_mel, jax.random.key(1), c, n_iter=30,
                                power=1.0))
  assert y.shape == ((log_mel.shape[0] - 1) * c.hop_length,)
  assert np.all(np.isfinite(y))
  # The resynthesis' log-mel is closer to the target than that of noise of
  # the same energy.
  n = min(y.shape[0], x.shape[0])
  err = np.mean(np.abs(F.log_mel_spectrogram(y[:n], c) - log_mel))
  noise = np.random.default_rng(0).standard_normal(n).astype(np.float32)
  noise *= np.std(y) / np.std(noise)
  err_noise = np.mean(np.abs(F.log_mel_spectrogram(noise, c) - log_mel))
  assert err < 0.5 * err_noise, (err, err_noise)


# --------------------------------------------------------------------------
# Mu-law.


def test_mu_law_closed_form_values():
  ids = np.asarray(F.mu_law_encode(np.array([-1.0, 0.0, 1.0, 2.0, -3.0])))
  np.testing.assert_array_equal(ids, [0, 128, 255, 255, 0])
  dec = np.asarray(F.mu_law_decode(np.array([0, 255, 128, 127])))
  # decode(128): y = 1/255, x = (256**(1/255) - 1) / 255.
  x128 = (256 ** (1 / 255) - 1) / 255
  np.testing.assert_allclose(dec, [-1.0, 1.0, x128, -x128], rtol=1e-4)
  # f(0.5) = ln(1 + 127.5) / ln(256) -> q = floor((f + 1) / 2 * 255 + 0.5).
  f = np.log(128.5) / np.log(256)
  assert int(F.mu_law_encode(0.5)) == int(np.floor((f + 1) / 2 * 255 + 0.5))


def test_mu_law_roundtrip_error_bound():
  x = np.linspace(-1, 1, 20001).astype(np.float32)
  ids = np.asarray(F.mu_law_encode(x))
  assert ids.min() == 0 and ids.max() == 255
  assert len(np.unique(ids)) == 256
  assert np.all(np.diff(ids) >= 0)  # monotone
  err = np.abs(np.asarray(F.mu_law_decode(ids)) - x)
  # Half a quantization step (1/255 in the companded domain) times the
  # derivative of the expander, (ln 256 / 255)(1 + 255|x|), with 2.2% slack
  # for the derivative growing over half a step (256**(1/255) = 1.022).
  bound = np.log(256) / 255 * (1 + 255 * np.abs(x)) / 255 * 1.022 + 1e-6
  assert np.all(err <= bound)
  q = np.arange(256)
  np.testing.assert_array_equal(F.mu_law_encode(F.mu_law_decode(q)), q)


# --------------------------------------------------------------------------
# I/O.


@pytest.mark.parametrize("orig", [22050, 44100, 48000])
def test_resample_preserves_frequency(orig):
  t = np.arange(orig) / orig  # 1 s
  x = np.sin(2 * np.pi * 440.0 * t).astype(np.float32)
  y = aio.resample(x, orig, SR)
  assert y.shape == (SR,)
  assert abs(dominant_freq(y, SR) - 440.0) <= 1.0  # 1 Hz bins


def test_load_audio_wav_flac_resample_stereo(tmp_path):
  x = harmonic(0.5)
  p = str(tmp_path / "a.wav")
  sf.write(p, x, SR, subtype="PCM_16")
  y, sr = aio.load_audio(p, SR)
  assert sr == SR and y.dtype == np.float32
  np.testing.assert_allclose(y, x, atol=1 / 32768 + 1e-7)
  # FLAC at 48 kHz (the VCTK format) is resampled to the requested rate.
  t = np.arange(48000) / 48000
  tone = 0.5 * np.sin(2 * np.pi * 300 * t)
  pf = str(tmp_path / "b.flac")
  sf.write(pf, tone, 48000)
  y, sr = aio.load_audio(pf, SR)
  assert sr == SR and y.shape == (SR,)
  assert abs(dominant_freq(y, SR) - 300.0) <= 1.0
  y, sr = aio.load_audio(pf, None)  # native rate kept
  assert sr == 48000 and y.shape == (48000,)
  # Stereo is downmixed by averaging the channels.
  ps = str(tmp_path / "s.wav")
  stereo = np.stack([x, 0.5 * x], axis=1)
  sf.write(ps, stereo, SR, subtype="FLOAT")
  y, _ = aio.load_audio(ps, SR)
  np.testing.assert_allclose(y, 0.75 * x, atol=1e-6)


def test_load_audio_bad_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.wav"):
    aio.load_audio(str(tmp_path / "missing.wav"))
  junk = tmp_path / "junk.wav"
  junk.write_bytes(b"this is not audio at all")
  with pytest.raises(aio.AudioError, match="junk.wav.*sox") as e:
    aio.load_audio(str(junk))
  assert e.value.reason == "unreadable"
  empty = tmp_path / "empty.wav"
  empty.write_bytes(b"")
  with pytest.raises(aio.AudioError, match="empty.wav") as e:
    aio.load_audio(str(empty))
  assert e.value.reason == "unreadable"
  # Truncated WAV (copy cut in half): libsndfile would silently read the
  # first half; the header check catches it.
  good = str(tmp_path / "good.wav")
  sf.write(good, harmonic(0.5), SR, subtype="PCM_16")
  data = open(good, "rb").read()
  cut = tmp_path / "cut.wav"
  cut.write_bytes(data[:len(data) // 2])
  with pytest.raises(aio.AudioError, match="cut.wav.*copy it again") as e:
    aio.load_audio(str(cut))
  assert e.value.reason == "truncated"
  goodf = str(tmp_path / "good.flac")
  sf.write(goodf, harmonic(0.5), SR)
  data = open(goodf, "rb").read()
  cutf = tmp_path / "cut.flac"
  cutf.write_bytes(data[:len(data) // 2])
  with pytest.raises(aio.AudioError, match="cut.flac"):
    aio.load_audio(str(cutf))


def test_trim_and_normalize():
  x = harmonic(0.5)
  x = x * (0.9 / np.abs(x).max())
  padded = np.concatenate([np.zeros(SR, np.float32), x,
                           np.zeros(SR // 2, np.float32)])
  trimmed = aio.trim_silence(padded, SR, top_db=40.0)
  # Everything of the 1.5 s silence is removed except the 20 ms margins and
  # the quiet (< -40 dB) ends of the Hann envelope.
  assert 0.3 * SR < trimmed.shape[0] < x.shape[0] + 2 * 0.02 * SR + 1
  y = aio.normalize_loudness(x, -20.0, mode="rms")
  rms_db = 20 * np.log10(np.sqrt(np.mean(y.astype(np.float64) ** 2)))
  assert abs(rms_db - (-20.0)) < 1e-3
  y = aio.normalize_loudness(x, -6.0, mode="peak")
  assert abs(20 * np.log10(np.abs(y).max()) + 6.0) < 1e-3
  # A loud RMS target is peak-limited to 0.99.
  y = aio.normalize_loudness(x, 0.0, mode="rms")
  assert abs(np.abs(y).max() - 0.99) < 1e-6
  silence = np.zeros(100, np.float32)
  np.testing.assert_array_equal(aio.normalize_loudness(silence), silence)


def test_trim_bounds_by_hand():
  # 0.5 s of silence, 0.5 s of a +-0.5 square wave (every squared sample is
  # 0.25), 0.5 s of silence. Frames of 400 samples every 160: a frame is
  # within 40 dB of the loudest (RMS 0.5) as soon as it holds one tone sample
  # (RMS 0.5 / 20 = 0.025 > 0.005). First such frame: 160 k + 400 > 8000, k =
  # 48; last: 160 k < 16000, k = 99. With a 20 ms (320 sample) margin:
  x = np.zeros(3 * SR // 2)
  x[SR // 2:SR] = 0.5 * np.where(np.arange(SR // 2) % 40 < 20, 1.0, -1.0)
  assert aio.trim_bounds(x, SR, top_db=40.0) == (48 * 160 - 320,
                                                 99 * 160 + 400 + 320)
  # The synthetic corpus builder's framing: 10 ms frames, no overlap, 50 ms.
  assert aio.trim_bounds(x, SR, 40.0, frame_ms=10.0, hop_ms=10.0,
                         margin_ms=50.0) == (8000 - 800, 16000 + 800)
  # Digital silence and clips of one frame are kept whole.
  assert aio.silence_bounds(np.zeros(5000), 40.0, 400, 160) == (0, 5000)
  assert aio.silence_bounds(x[:400], 40.0, 400, 160) == (0, 400)


def test_silence_bounds_takes_librosa_trim_frames():
  # librosa.effects.trim centres its frames (zero padding of frame // 2 on
  # both sides); silence_bounds frames the same padded signal uncentred, so
  # the first and last non-silent frames must be librosa's.
  rng = np.random.default_rng(0)
  frame, hop = 512, 128
  for _ in range(20):
    n = int(rng.integers(4000, 20000))
    env = np.full(n, 1e-3)
    a, b = sorted(rng.integers(0, n, 2))
    env[a:b + 1] = rng.uniform(0.05, 1.0)
    y = rng.normal(size=n) * env
    _, (ls, le) = librosa.effects.trim(y, top_db=30.0, frame_length=frame,
                                       hop_length=hop)
    s, e = aio.silence_bounds(np.pad(y, frame // 2), 30.0, frame, hop)
    assert s // hop == ls // hop  # first non-silent frame
    last = (e - frame) // hop
    assert min(n, (last + 1) * hop) == le  # librosa ends a hop past it


def test_check_clip_reasons():
  x = harmonic(1.0)
  assert aio.check_clip(x, SR) is None
  assert aio.check_clip(x[:SR // 10], SR) == "too_short"
  assert aio.check_clip(np.tile(x, 25), SR) == "too_long"
  assert aio.check_clip(np.zeros(SR, np.float32), SR) == "silent"
  assert aio.check_clip(x * 1e-4, SR) == "silent"
  clipped = np.clip(x * 20, -1, 1)
  assert aio.check_clip(clipped, SR) == "clipped"


def test_load_clip_errors_name_file_and_fix(tmp_path):
  def write(name, audio):
    p = str(tmp_path / name)
    sf.write(p, audio, SR, subtype="PCM_16")
    return p

  x = harmonic(1.0)
  y = aio.load_clip(write("ok.wav", x), SR)
  assert abs(20 * np.log10(np.sqrt(np.mean(y.astype(np.float64) ** 2)))
             + 20) < 0.01
  cases = {
      "silent": (np.zeros(SR, np.float32), "muted"),
      "clipped": (np.clip(x * 20, -1, 1), "lower gain"),
      "too_short": (np.concatenate([np.zeros(SR), x[:800] * 0 + 0.3
                                    * np.sin(np.arange(800) / 3),
                                    np.zeros(SR)]).astype(np.float32),
                    "min_seconds"),
      "too_long": (np.tile(x, 3), "max_seconds"),
  }
  for reason, (audio, fix) in cases.items():
    path = write(reason + ".wav", audio)
    with pytest.raises(aio.AudioError, match=fix) as e:
      aio.load_clip(path, SR, max_seconds=2.5)
    assert e.value.reason == reason
    assert os.path.basename(path) in str(e.value)
