"""Griffin-Lim resynthesis of real clips: the "vocoded-real" ceiling.

A real clip is turned into a log-mel spectrogram (the representation the
Tacotron-style model predicts) and back into a waveform with Griffin-Lim. The
judges then score it like a synthesized clip; the gap between real and
vocoded-real is what no acoustic model can recover with this vocoder.

References:
  Griffin, Lim. Signal estimation from modified short-time Fourier transform.
  IEEE TASSP 1984.
  Perraudin, Balazs, Sondergaard. A fast Griffin-Lim algorithm. WASPAA 2013
  (the momentum variant librosa implements).
"""

from __future__ import annotations

import numpy as np

from metatts.evaluation.audio_io import check_waveform


def mel_spectrogram(wav, sr: int, *, n_fft: int = 1024, hop_length: int = 256,
                    n_mels: int = 80, fmin: float = 0.0,
                    fmax: float | None = None) -> np.ndarray:
  """Power mel spectrogram ``[n_mels, frames]`` (Slaney mel, librosa)."""
  import librosa  # pylint: disable=g-import-not-at-top
  x = check_waveform(wav, sr)
  return librosa.feature.melspectrogram(
      y=x, sr=sr, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, fmin=fmin,
      fmax=fmax, power=2.0)


def griffin_lim_from_mel(mel_power, sr: int, *, n_fft: int = 1024,
                         hop_length: int = 256, fmin: float = 0.0,
                         fmax: float | None = None, n_iter: int = 60,
                         seed: int = 0) -> np.ndarray:
  """Inverts a power mel spectrogram to a waveform.

  The mel filterbank is inverted with its pseudo-inverse (negative power
  clipped to 0; much faster than librosa's NNLS and as good for judging),
  then the phase is estimated with fast Griffin-Lim (momentum 0.99) from a
  seeded random initial phase.

  Args:
    mel_power: ``[n_mels, frames]`` power mel spectrogram.
    sr: Sample rate.
    n_fft, hop_length, fmin, fmax: STFT/mel settings used to compute the mel.
    n_iter: Griffin-Lim iterations.
    seed: Seed of the initial random phase (same seed, same waveform).

  Returns:
    ``float64 [samples]`` waveform, peak-normalised to 0.95 if it clips.
  """
  import librosa  # pylint: disable=g-import-not-at-top
  m = np.asarray(mel_power, dtype=np.float64)
  if m.ndim != 2 or m.shape[1] == 0:
    raise ValueError(f"mel_power must be [n_mels, frames>0], got {m.shape}.")
  basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=m.shape[0],
                              fmin=fmin, fmax=fmax)  # [n_mels, n_fft/2+1]
  mag = np.sqrt(np.maximum(np.linalg.pinv(basis) @ m, 0.0))  # [F, frames]
  rng = np.random.default_rng(seed)
  y = librosa.griffinlim(mag, n_iter=n_iter, hop_length=hop_length,
                         n_fft=n_fft, momentum=0.99, init="random",
                         random_state=rng)
  peak = float(np.max(np.abs(y))) if y.size else 0.0
  if peak > 0.95:
    y = y * (0.95 / peak)
  return y.astype(np.float64)


def vocode_real(wav, sr: int, *, n_iter: int = 60, seed: int = 0
                ) -> np.ndarray:
  """Real clip -> its 80-band mel -> Griffin-Lim waveform of the same length."""
  x = check_waveform(wav, sr)
  y = griffin_lim_from_mel(mel_spectrogram(x, sr), sr, n_iter=n_iter, seed=seed)
  if y.size >= x.size:
    return y[:x.size]
  return np.pad(y, (0, x.size - y.size))
