"""Host-side audio checks and I/O for the judges.

Every judge takes float waveforms in [-1, 1] and a sample rate, and checks them
with :func:`check_waveform` first, so that empty, silent, non-finite or
wrongly-shaped audio fails with a message that names the clip and the fix.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from metatts.audio import io as aio

# All judges run at this rate: PocketSphinx's en-US model and Resemblyzer's
# encoder are 16 kHz models, and the mel-cepstral alpha 0.42 is the 16 kHz value.
EVAL_SAMPLE_RATE = 16000


def check_waveform(wav, sr: int, name: str = "waveform") -> np.ndarray:
  """Validates a mono waveform and returns it as float64.

  Args:
    wav: Array-like ``[S]`` of samples (a ``[S, 1]`` column is accepted).
    sr: Sample rate in Hz.
    name: How the clip is named in error messages (a file path, an utt id).

  Returns:
    ``float64 [S]`` copy of the samples.

  Raises:
    ValueError: Empty, multi-channel, non-finite or all-zero audio, or a
      non-positive sample rate.
  """
  if not isinstance(sr, (int, np.integer)) or sr <= 0:
    raise ValueError(f"{name}: sample rate must be a positive int, got {sr!r}; "
                     "pass the rate the audio was recorded at.")
  x = np.asarray(wav, dtype=np.float64)
  if x.ndim == 2 and 1 in x.shape:
    x = x.reshape(-1)
  if x.ndim != 1:
    raise ValueError(f"{name}: expected mono audio of shape [samples], got "
                     f"shape {x.shape}; mix down to mono first (e.g. "
                     "wav.mean(axis=1)).")
  if x.size == 0:
    raise ValueError(f"{name}: the audio is empty (0 samples); check that the "
                     "file was written completely.")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name}: the audio contains NaN or Inf samples; the "
                     "synthesizer or vocoder diverged, regenerate the clip.")
  if np.max(np.abs(x)) == 0.0:
    raise ValueError(f"{name}: the audio is all zeros (silence); a judge cannot "
                     "score silence, regenerate the clip.")
  min_len = int(0.1 * sr)
  if x.size < min_len:
    raise ValueError(f"{name}: the audio is {x.size} samples long "
                     f"({x.size / sr * 1000:.0f} ms); at least 100 ms is needed.")
  return x


def check_same_rate(sr_a: int, sr_b: int, name_a: str, name_b: str) -> None:
  """Raises if two clips that are compared have different sample rates."""
  if int(sr_a) != int(sr_b):
    raise ValueError(
        f"sample rates differ: {name_a} is {sr_a} Hz but {name_b} is {sr_b} Hz; "
        f"resample both to one rate first, e.g. "
        f"metatts.audio.resample(x, {sr_a}, {sr_b}).")


def load_wav(path: str, sr: Optional[int] = EVAL_SAMPLE_RATE
             ) -> Tuple[np.ndarray, int]:
  """Reads a WAV file as mono float64, optionally resampled.

  Args:
    path: WAV (or any libsndfile format) path.
    sr: Target rate; ``None`` keeps the file's rate.

  Returns:
    ``(wav [S], sample_rate)``.

  Raises:
    FileNotFoundError: The file does not exist.
    ValueError: The file cannot be decoded, or is empty/silent/non-finite.
  """
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise FileNotFoundError(f"audio file not found: {path}; check the samples "
                            "layout described in docs/evaluation.md.")
  try:
    x, file_sr = sf.read(path, dtype="float64", always_2d=True)
  except Exception as e:  # soundfile raises RuntimeError/LibsndfileError.
    raise ValueError(f"{path}: cannot decode audio ({e}); write it as a PCM "
                     "WAV (e.g. soundfile.write(path, wav, sr)).") from e
  x = x.mean(axis=1)
  x = check_waveform(x, int(file_sr), path)
  if sr is not None and int(sr) != int(file_sr):
    x = aio.resample(x, int(file_sr), int(sr), dtype=np.float64)
    file_sr = sr
  return x, int(file_sr)


def read_text(path: str) -> str:
  """Reads a transcript file (UTF-8), stripped; raises if missing or empty."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"transcript not found: {path}; write the text that "
                            "was spoken next to the WAV, same name, .txt.")
  with open(path, encoding="utf-8") as f:
    text = f.read().strip()
  if not text:
    raise ValueError(f"{path}: the transcript is empty; write the spoken text.")
  return text
