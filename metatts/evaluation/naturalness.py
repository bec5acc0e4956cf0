"""Optional naturalness proxy: DNSMOS P.808 from the ``speechmos`` package.

No offline MOS predictor trained on *synthetic* speech (UTMOS, MOSNet, ...)
ships its weights in a pip package that works without a download here. The
``speechmos`` wheel does ship Microsoft's DNSMOS ONNX models; DNSMOS was
trained to predict listener ratings of noisy and noise-suppressed *real*
speech (ITU-T P.808 / P.835), so it is only a proxy for TTS naturalness: it
punishes noise, buzz and distortion, not prosody. Opt in with metric
``dnsmos``; it needs ``pip install speechmos onnxruntime``.

References:
  Reddy, Gopal, Cutler. DNSMOS: A non-intrusive perceptual objective speech
  quality metric to evaluate noise suppressors. ICASSP 2021.
"""

from __future__ import annotations

import numpy as np

from metatts.audio.io import resample
from metatts.evaluation import _deps
from metatts.evaluation.audio_io import EVAL_SAMPLE_RATE, check_waveform


def dnsmos(wav, sr: int, name: str = "waveform") -> float:
  """DNSMOS P.808 overall score (1-5, higher is better) of one clip.

  Args:
    wav: ``[S]`` mono waveform in [-1, 1].
    sr: Its sample rate (resampled to 16 kHz).
    name: Clip name for error messages.

  Returns:
    The P.808 MOS estimate.
  """
  x = check_waveform(wav, sr, name)
  x = resample(x, sr, EVAL_SAMPLE_RATE, dtype=np.float64)
  x = np.clip(x, -1.0, 1.0).astype(np.float32)
  _deps.require("onnxruntime")
  mod = _deps.require("speechmos.dnsmos")
  return float(mod.run(x, sr=EVAL_SAMPLE_RATE)["p808_mos"])
