"""Griffin-Lim resynthesis of real clips: the "vocoded-real" ceiling.

A real clip is turned into the log-mel spectrogram that metatts's acoustic
models predict (``metatts.audio.log_mel_spectrogram`` with a ``MelConfig``)
and back into a waveform with metatts's own quick-listening vocoder
(``metatts.audio.mel_to_audio``: pseudo-inverse of the mel filterbank, then
fast Griffin-Lim). The judges score it like a synthesized clip: the gap
between real and vocoded-real is what no acoustic model can recover through
this vocoder. The neural (WaveNet-style) vocoder's ceiling comes from
``samples/vocoded/`` written by the end-to-end code.

References:
  Griffin, Lim. Signal estimation from modified short-time Fourier transform.
  IEEE TASSP 1984.
  Perraudin, Balazs, Sondergaard. A fast Griffin-Lim algorithm. WASPAA 2013.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from metatts.evaluation.audio_io import check_waveform

# Log-mel frames are padded to a multiple of this, so clips of similar length
# share one compiled Griffin-Lim.
FRAME_BUCKET = 128


def mel_spectrogram(wav, sr: int, *, n_fft: int = 1024, hop_length: int = 256,
                    n_mels: int = 80) -> np.ndarray:
  """Power mel spectrogram ``[n_mels, frames]`` for display (librosa)."""
  import librosa  # pylint: disable=g-import-not-at-top
  x = check_waveform(wav, sr)
  return librosa.feature.melspectrogram(
      y=x, sr=sr, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels,
      power=2.0)


def vocode_real(wav, sr: int, *, n_iter: int = 32, seed: int = 0,
                config=None) -> np.ndarray:
  """Real clip -> its log-mel -> metatts's Griffin-Lim, same length as input.

  Args:
    wav: ``[S]`` real waveform in [-1, 1].
    sr: Its sample rate.
    n_iter: Griffin-Lim iterations.
    seed: Seed of the initial phase (same seed, same waveform).
    config: ``metatts.audio.MelConfig``; default ``MelConfig(sample_rate=sr)``
      (the features the acoustic models are trained on).

  Returns:
    ``float64 [S]`` resynthesized waveform (peak-limited to 0.99).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from metatts import audio  # pylint: disable=g-import-not-at-top
  x = check_waveform(wav, sr)
  cfg: Optional[object] = config or audio.MelConfig(sample_rate=int(sr))
  if int(cfg.sample_rate) != int(sr):
    raise ValueError(f"config.sample_rate={cfg.sample_rate} but the clip is "
                     f"{sr} Hz; resample the clip or pass a matching config.")
  log_mel = audio.log_mel_spectrogram(jnp.asarray(x, jnp.float32), cfg)
  frames = int(log_mel.shape[0])  # [T, n_mels]
  padded = -(-frames // FRAME_BUCKET) * FRAME_BUCKET
  log_mel = jnp.pad(log_mel, ((0, padded - frames), (0, 0)),
                    constant_values=float(np.log(cfg.log_floor)))
  y = np.asarray(audio.mel_to_audio(log_mel, jax.random.PRNGKey(seed), cfg,
                                    n_iter=n_iter), dtype=np.float64)
  y = y[:x.size] if y.size >= x.size else np.pad(y, (0, x.size - y.size))
  peak = float(np.max(np.abs(y))) if y.size else 0.0
  if peak > 0.99:
    y = y * (0.99 / peak)
  return y
