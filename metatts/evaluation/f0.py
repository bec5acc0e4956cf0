"""Pitch judges: F0 RMSE and voicing decision error after DTW.

Both clips are analysed with WORLD (DIO + StoneMask by default, 5 ms hop) and
aligned by DTW on their mel-cepstra (c1..c24), the same path MCD uses.

* F0 RMSE: root mean square of ``1200 * log2(f0_synth / f0_ref)`` in cents over
  aligned pairs voiced in both clips (cents are comparable across low and high
  voices; the Hz version is returned too).
* Voicing decision error (VDE): fraction of aligned pairs whose voiced/unvoiced
  decisions differ.

References:
  Morise, Yokomori, Ozawa. WORLD. IEICE Trans. 2016.
  Nakatani, Amano, Irino, Ishizuka, Kondo. A method for fundamental frequency
  estimation and voicing decision. Speech Communication 2008 (VDE).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from metatts.evaluation.audio_io import check_same_rate
from metatts.evaluation.dtw import align
from metatts.evaluation.world import WorldFeatures, world_features


class F0Metrics(NamedTuple):
  rmse_cents: float  # nan if no pair is voiced in both
  rmse_hz: float
  vde: float  # fraction in [0, 1]
  n_voiced: int  # aligned pairs voiced in both


def f0_metrics_from_features(synth: WorldFeatures, ref: WorldFeatures,
                             path: Optional[np.ndarray] = None) -> F0Metrics:
  """F0 RMSE and VDE between analysed clips (DTW path computed if not given)."""
  if path is None:
    path = align(synth.mcep[:, 1:], ref.mcep[:, 1:])
  fa = synth.f0[path[:, 0]]
  fb = ref.f0[path[:, 1]]
  va, vb = fa > 0, fb > 0
  vde = float(np.mean(va != vb))
  both = va & vb
  n = int(np.sum(both))
  if n == 0:
    return F0Metrics(float("nan"), float("nan"), vde, 0)
  cents = 1200.0 * np.log2(fa[both] / fb[both])
  hz = fa[both] - fb[both]
  return F0Metrics(float(np.sqrt(np.mean(cents ** 2))),
                   float(np.sqrt(np.mean(hz ** 2))), vde, n)


def f0_metrics(synth_wav, ref_wav, sr: int, *, ref_sr: Optional[int] = None,
               f0_method: str = "dio") -> F0Metrics:
  """F0 RMSE (cents, Hz) and voicing error of a clip against a reference.

  Args:
    synth_wav: ``[S1]`` synthesized waveform.
    ref_wav: ``[S2]`` real waveform of the same sentence.
    sr: Sample rate of both.
    ref_sr: Rate of ``ref_wav`` if known; must equal ``sr``.
    f0_method: ``"dio"`` or ``"harvest"``.

  Returns:
    ``F0Metrics``.
  """
  if ref_sr is not None:
    check_same_rate(sr, ref_sr, "synthesized clip", "reference clip")
  fa = world_features(synth_wav, sr, f0_method=f0_method,
                      name="synthesized clip")
  fb = world_features(ref_wav, sr, f0_method=f0_method, name="reference clip")
  return f0_metrics_from_features(fa, fb)
