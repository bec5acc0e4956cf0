"""Mel-cepstral distortion (MCD) with DTW alignment.

Settings (fixed unless passed explicitly, and written into metrics.json):

* features: WORLD CheapTrick spectral envelope (5 ms hop) converted to a
  24th-order mel-cepstrum with all-pass warping alpha = 0.42 at 16 kHz (see
  :mod:`metatts.evaluation.world`);
* c0 (frame energy) is excluded, coefficients c1..c24 are compared;
* leading/trailing silence below -40 dB of the peak is trimmed;
* frames are aligned by DTW on the Euclidean distance of c1..c24; every pair on
  the path counts once;
* MCD = (10 / ln 10) * sqrt(2 * sum_{d=1}^{24} (c_d - c'_d)^2), averaged over the
  aligned pairs, in dB.

References:
  Kubichek. Mel-cepstral distance measure for objective speech quality
  assessment. IEEE PACRIM 1993.
  Toda, Black, Tokuda. Voice conversion based on maximum-likelihood estimation
  of spectral parameter trajectory. IEEE TASLP 2007 (MCD in this form).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from metatts.evaluation.audio_io import check_same_rate
from metatts.evaluation.dtw import align
from metatts.evaluation.world import MCEP_ORDER, WorldFeatures, world_features

MCD_CONST = 10.0 / np.log(10.0) * np.sqrt(2.0)


def mcd_frames(c_a, c_b) -> np.ndarray:
  """Per-frame MCD in dB between equal-length cepstra ``[T, D]`` (no c0)."""
  a = np.asarray(c_a, dtype=np.float64)
  b = np.asarray(c_b, dtype=np.float64)
  if a.shape != b.shape:
    raise ValueError(f"mcd_frames needs aligned cepstra of equal shape, got "
                     f"{a.shape} and {b.shape}; align them with DTW first.")
  return MCD_CONST * np.sqrt(np.sum((a - b) ** 2, axis=-1))


def mcd_from_features(synth: WorldFeatures, ref: WorldFeatures,
                      path: Optional[np.ndarray] = None) -> float:
  """MCD (dB) between two analysed clips; computes the DTW path if not given."""
  a, b = synth.mcep[:, 1:], ref.mcep[:, 1:]  # drop c0
  if path is None:
    path = align(a, b)
  return float(np.mean(mcd_frames(a[path[:, 0]], b[path[:, 1]])))


def mel_cepstral_distortion(synth_wav, ref_wav, sr: int, *,
                            ref_sr: Optional[int] = None,
                            order: int = MCEP_ORDER,
                            alpha: Optional[float] = None) -> float:
  """MCD in dB between a synthesized clip and a reference clip of the same text.

  Args:
    synth_wav: ``[S1]`` synthesized waveform.
    ref_wav: ``[S2]`` real waveform of the same sentence (any length).
    sr: Sample rate of ``synth_wav``.
    ref_sr: Sample rate of ``ref_wav`` if given; must equal ``sr``.
    order: Mel-cepstral order (24; c0 excluded, so 24 coefficients compared).
    alpha: Warping constant (default 0.42 at 16 kHz).

  Returns:
    Mean MCD over DTW-aligned frame pairs, in dB (0 for identical clips).
  """
  if ref_sr is not None:
    check_same_rate(sr, ref_sr, "synthesized clip", "reference clip")
  fa = world_features(synth_wav, sr, order=order, alpha=alpha,
                      name="synthesized clip")
  fb = world_features(ref_wav, sr, order=order, alpha=alpha,
                      name="reference clip")
  return mcd_from_features(fa, fb)
