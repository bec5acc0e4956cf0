"""WORLD analysis and mel-cepstra for MCD and F0 judges.

Mel-cepstrum definition (the SPTK convention used by the MCD literature): for a
spectral envelope ``|H(w)|`` the mel-cepstrum ``c~_0 .. c~_M`` satisfies

  log |H(w)| = sum_{m=0}^{M} c~_m cos(m * b(w)),

where ``b`` is the first-order all-pass frequency warping

  b(w) = w + 2 atan(alpha sin w / (1 - alpha cos w)),

which approximates the mel scale for ``alpha = 0.42`` at 16 kHz (Tokuda et
al., 1994). It is computed by ``pysptk.sp2mc``: the real cepstrum of the log
power envelope, ``c_0`` halved (the causal cepstrum of the log amplitude), then
SPTK's ``freqt`` recursion for the warp. :func:`mcep_to_log_amplitude` is the
definition above evaluated directly, the independent reference of the tests.

References:
  Morise, Yokomori, Ozawa. WORLD: a vocoder-based high-quality speech synthesis
  system for real-time applications. IEICE Trans. 2016.
  Tokuda, Kobayashi, Masuko, Imai. Mel-generalized cepstral analysis - a
  unified approach to speech spectral estimation. ICSLP 1994.
  Oppenheim, Johnson. Discrete representation of signals. Proc. IEEE 1972
  (all-pass frequency warping).
  SPTK, the Speech Signal Processing Toolkit, through its Python wrapper
  pysptk (``sp2mc``, ``freqt``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from metatts.audio.io import silence_bounds
from metatts.evaluation import _deps
from metatts.evaluation.audio_io import check_waveform

# Frequency-warping constants that best approximate the mel scale, by rate.
ALPHA_BY_RATE = {8000: 0.31, 11025: 0.35, 16000: 0.42, 22050: 0.455,
                 24000: 0.466, 44100: 0.544, 48000: 0.554}
MCEP_ORDER = 24
FRAME_PERIOD_MS = 5.0


def alpha_for_rate(sr: int) -> float:
  """Standard all-pass constant for a sample rate (0.42 at 16 kHz)."""
  if int(sr) not in ALPHA_BY_RATE:
    raise ValueError(f"no standard mel-cepstral alpha for {sr} Hz; pass alpha "
                     f"explicitly or resample to one of {sorted(ALPHA_BY_RATE)}.")
  return ALPHA_BY_RATE[int(sr)]


def warp(w, alpha: float):
  """All-pass frequency warping ``b(w)`` of angular frequencies in [0, pi]."""
  w = np.asarray(w, dtype=np.float64)
  return w + 2.0 * np.arctan2(alpha * np.sin(w), 1.0 - alpha * np.cos(w))


def spectrum_to_mcep(sp, order: int = MCEP_ORDER,
                     alpha: float = 0.42) -> np.ndarray:
  """Power spectral envelope to mel-cepstrum (``pysptk.sp2mc``).

  The real cepstrum of the log power envelope with ``c_0`` halved (the causal
  cepstrum of the log amplitude) is warped by SPTK's ``freqt`` recursion.

  Args:
    sp: ``[T, F]`` power envelope on ``F`` linear bins from 0 to Nyquist
      (WORLD's CheapTrick output), positive.
    order: Cepstral order ``M`` (returns ``M + 1`` coefficients incl. c0).
    alpha: All-pass warping constant (0.42 at 16 kHz).

  Returns:
    ``float64 [T, M + 1]`` mel-cepstra ``c~_0 .. c~_M`` (natural-log units).

  References:
    Tokuda, Kobayashi, Masuko, Imai. Mel-generalized cepstral analysis - a
    unified approach to speech spectral estimation. ICSLP 1994.
    SPTK (Speech Signal Processing Toolkit) ``freqt``, through pysptk.
  """
  sp = np.asarray(sp, dtype=np.float64)
  if sp.ndim == 1:
    sp = sp[None, :]
  if sp.ndim != 2 or sp.shape[1] < 3:
    raise ValueError(f"sp must be [frames, bins>=3], got {sp.shape}.")
  if not np.all(sp > 0):
    raise ValueError("sp must be strictly positive (a power envelope); add a "
                     "small floor, e.g. np.maximum(sp, 1e-12).")
  sptk = _deps.require("pysptk")
  return np.asarray(sptk.sp2mc(sp, int(order), float(alpha)), np.float64)


def mcep_to_log_amplitude(mcep, n_bins: int, alpha: float) -> np.ndarray:
  """Inverse: ``log|H|`` on ``n_bins`` linear bins from mel-cepstra ``[T, M+1]``."""
  c = np.asarray(mcep, dtype=np.float64)
  w = warp(np.linspace(0.0, np.pi, n_bins), alpha)  # [F]
  m = np.arange(c.shape[-1])
  return c @ np.cos(m[:, None] * w[None, :])


def trim_silence(x: np.ndarray, top_db: float, frame_length: int = 1024,
                 hop_length: int = 256) -> np.ndarray:
  """Trims leading/trailing frames whose RMS is ``top_db`` below the loudest.

  The library's one trimmer (:func:`metatts.audio.io.silence_bounds`, the
  frame rule of ``librosa.effects.trim`` on uncentred frames), without a
  margin.

  Args:
    x: ``[S]`` waveform.
    top_db: Threshold in dB below the loudest frame.
    frame_length, hop_length: RMS framing in samples.

  Returns:
    The trimmed ``[S']`` waveform (a view).
  """
  start, end = silence_bounds(x, top_db, frame_length, hop_length)
  return x[start:end]


class WorldFeatures(NamedTuple):
  f0: np.ndarray  # float64 [T]      Hz, 0 where unvoiced
  mcep: np.ndarray  # float64 [T, M+1] mel-cepstra c~_0..c~_M
  sr: int
  frame_period_ms: float


def world_features(wav, sr: int, *, order: int = MCEP_ORDER,
                   alpha: Optional[float] = None, f0_method: str = "dio",
                   frame_period_ms: float = FRAME_PERIOD_MS,
                   trim_db: Optional[float] = 40.0,
                   name: str = "waveform") -> WorldFeatures:
  """WORLD F0 and mel-cepstra of one clip.

  Args:
    wav: ``[S]`` mono waveform in [-1, 1].
    sr: Sample rate.
    order: Mel-cepstral order (24).
    alpha: Warping constant; default from :data:`ALPHA_BY_RATE` (0.42 @ 16 kHz).
    f0_method: ``"dio"`` (DIO + StoneMask; fast) or ``"harvest"`` (slower,
      fewer voicing errors).
    frame_period_ms: Analysis hop (5 ms).
    trim_db: Leading/trailing silence quieter than this many dB below the peak
      is trimmed before analysis (:func:`trim_silence`); None keeps it.
    name: Clip name for error messages.

  Returns:
    ``WorldFeatures``.
  """
  x = check_waveform(wav, sr, name)
  pw = _deps.require("pyworld")
  if trim_db is not None:
    x = trim_silence(x, trim_db)
    if x.size < int(0.05 * sr):
      raise ValueError(f"{name}: less than 50 ms left after trimming silence "
                       f"({trim_db} dB); the clip is (almost) silent.")
  x = np.ascontiguousarray(x, dtype=np.float64)
  if f0_method == "dio":
    f0, t = pw.dio(x, sr, frame_period=frame_period_ms)
    f0 = pw.stonemask(x, f0, t, sr)
  elif f0_method == "harvest":
    f0, t = pw.harvest(x, sr, frame_period=frame_period_ms)
  else:
    raise ValueError(f"f0_method={f0_method!r}; use 'dio' or 'harvest'.")
  sp = pw.cheaptrick(x, f0, t, sr)
  a = alpha_for_rate(sr) if alpha is None else float(alpha)
  mcep = spectrum_to_mcep(np.maximum(sp, 1e-16), order=order, alpha=a)
  return WorldFeatures(np.asarray(f0, np.float64), mcep, int(sr),
                       float(frame_period_ms))
