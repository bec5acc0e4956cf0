"""What keeps a warm `python -m metatts say` / `adapt` fast (issue 13, item 5).

* The voice path does not import torch (via tensorboardX), scipy.signal,
  librosa or numba (together ~8 s of a 12 s warm `say` on a 2-core CPU,
  docs/benchmarks.md).
* The numpy code that replaced librosa on that path gives librosa's numbers
  bit for bit (librosa is the independent reference), so every cached
  feature, trimmed clip and synthesized WAV stays byte-identical.
"""

import subprocess
import sys

import librosa
import numpy as np
import pytest

from metatts.audio import features as afeat
from metatts.audio import io as aio

HEAVY = ("torch", "tensorboardX", "scipy.signal", "librosa", "numba")


def test_voice_path_imports_stay_light():
  code = (
      "import sys\n"
      "from metatts import __main__, api, clips, voice, vocoders\n"
      "from metatts.training import export\n"
      "from metatts.audio import features, io\n"
      f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True).stdout.strip().splitlines()[-1]
  assert out == "[]", f"the voice path imports {out}"


def test_training_package_names_still_import():
  from metatts import training  # pylint: disable=g-import-not-at-top
  from metatts.training import checkpoint, loop  # pylint: disable=g-import-not-at-top
  assert training.train is loop.train
  assert training.Checkpointer is checkpoint.Checkpointer
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    training.nope  # pylint: disable=pointless-statement


def test_slaney_mel_scale_equals_librosa_bit_for_bit():
  rng = np.random.default_rng(0)
  hz = np.concatenate([np.linspace(0.0, 24000.0, 20001),
                       rng.uniform(0.0, 30000.0, 5000),
                       [999.9999999, 1000.0, np.nextafter(1000.0, 2e3)]])
  np.testing.assert_array_equal(afeat.hz_to_mel(hz),
                                librosa.hz_to_mel(hz, htk=False))
  mels = np.concatenate([np.linspace(0.0, 80.0, 20001),
                         rng.uniform(0.0, 60.0, 5000),
                         [np.nextafter(15.0, 0.0), 15.0]])
  np.testing.assert_array_equal(afeat.mel_to_hz(mels),
                                librosa.mel_to_hz(mels, htk=False))
  for f in (0, 0.0, 55.0, 999.0, 1000, 7600.0, 8000.0, 11025.0):
    got, ref = afeat.hz_to_mel(f), librosa.hz_to_mel(f, htk=False)
    assert got == ref and np.ndim(got) == np.ndim(ref) == 0
    assert afeat.mel_to_hz(ref) == librosa.mel_to_hz(ref, htk=False)
  # Not a tautology: the HTK scale differs from Slaney's above 0 Hz.
  assert afeat.hz_to_mel(8000.0) != librosa.hz_to_mel(8000.0, htk=True)


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [
    (16000, 1024, 80, 0.0, 8000.0), (16000, 1024, 80, 55.0, 7600.0),
    (22050, 512, 40, 0.0, None), (24000, 2048, 128, 80.0, None)])
def test_filterbank_equals_the_librosa_scale_version(sr, n_fft, n_mels, fmin,
                                                     fmax):
  """The filterbank built on librosa's scale (the code before the change)."""
  top = sr / 2 if fmax is None else fmax
  fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
  mel_pts = np.linspace(librosa.hz_to_mel(fmin, htk=False),
                        librosa.hz_to_mel(top, htk=False), n_mels + 2)
  hz_pts = librosa.mel_to_hz(mel_pts, htk=False)
  ramps = hz_pts[:, None] - fft_freqs[None, :]
  lower = -ramps[:-2] / np.diff(hz_pts)[:-1, None]
  upper = ramps[2:] / np.diff(hz_pts)[1:, None]
  ref = np.maximum(0.0, np.minimum(lower, upper))
  ref *= (2.0 / (hz_pts[2:n_mels + 2] - hz_pts[:n_mels]))[:, None]
  got = afeat.mel_filterbank(afeat.MelConfig(
      sample_rate=sr, n_fft=n_fft, win_length=n_fft, hop_length=n_fft // 4,
      n_mels=n_mels, fmin=fmin, fmax=fmax))
  np.testing.assert_array_equal(got, ref.astype(np.float32))


def _librosa_bounds(x, top_db, frame, hop, margin):
  rms = librosa.feature.rms(y=x, frame_length=frame, hop_length=hop,
                            center=False, dtype=np.float64)[0]
  if rms.max() <= 1e-10:
    return (0, x.shape[0]), rms, None
  db = librosa.amplitude_to_db(rms, ref=np.max, amin=1e-10, top_db=None)
  active = np.flatnonzero(db > -top_db)
  return ((max(0, int(active[0]) * hop - margin),
           min(x.shape[0], int(active[-1]) * hop + frame + margin)), rms, db)


@pytest.mark.parametrize("frame,hop,margin,top_db", [
    (400, 160, 320, 40.0), (160, 160, 320, 40.0), (1024, 256, 0, 30.0)])
def test_silence_bounds_equal_librosa_bit_for_bit(frame, hop, margin, top_db):
  rng = np.random.default_rng(frame + hop)
  t = np.arange(16000) / 16000.0
  tone = np.sin(2 * np.pi * 220 * t) * np.minimum(1.0, 5 * t)
  signals = [np.r_[np.zeros(4000), tone * 0.3, 1e-4 * rng.normal(size=3000)],
             np.r_[1e-3 * rng.normal(size=2500), tone[:9000] * 0.05],
             rng.normal(size=int(rng.integers(frame + 1, 30000))) * 0.1,
             np.zeros(5000)]
  signals += [rng.normal(size=int(rng.integers(frame + 1, 20000))) *
              10.0 ** rng.uniform(-6, 0) for _ in range(20)]
  for x in signals:
    bounds, rms, db = _librosa_bounds(x, top_db, frame, hop, margin)
    assert aio.silence_bounds(x, top_db, frame, hop, margin) == bounds
    np.testing.assert_array_equal(aio.frame_rms(x, frame, hop), rms)
    if db is not None:
      np.testing.assert_array_equal(
          aio._db_below_loudest(rms), db)  # pylint: disable=protected-access
  # The trimmed tone: the bounds actually move (not a no-op).
  assert aio.silence_bounds(signals[0], 40.0, frame, hop, margin)[0] > 3000
