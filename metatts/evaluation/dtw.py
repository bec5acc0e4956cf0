"""Dynamic time warping between two feature sequences (librosa).

The recursion is the classic symmetric one with unit step weights,

  D[i, j] = c[i, j] + min(D[i-1, j-1], D[i-1, j], D[i, j-1]),

with ``D[0, 0] = c[0, 0]``, and the path runs from (0, 0) to (N-1, M-1).
``librosa.sequence.dtw`` computes it; the steps are listed diagonal first,
then vertical, then horizontal, which is the order ties are broken in.

References:
  Sakoe, Chiba. Dynamic programming algorithm optimization for spoken word
  recognition. IEEE TASSP 1978.
  McFee et al. librosa: Audio and music signal analysis in Python. SciPy 2015.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

# (row, column) steps in tie-breaking order: diagonal, then a step along x,
# then a step along y.
_STEPS = np.array([[1, 1], [1, 0], [0, 1]])


def cost_matrix(x, y) -> np.ndarray:
  """Euclidean distances ``[N, M]`` between rows of ``x [N, D]`` and ``y [M, D]``."""
  x = np.asarray(x, dtype=np.float64)
  y = np.asarray(y, dtype=np.float64)
  if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
    raise ValueError(f"DTW needs [N, D] and [M, D] features, got {x.shape} and "
                     f"{y.shape}.")
  if x.shape[0] == 0 or y.shape[0] == 0:
    raise ValueError(f"DTW got an empty sequence ({x.shape[0]} and "
                     f"{y.shape[0]} frames); the clip is too short.")
  d2 = (np.sum(x * x, 1)[:, None] + np.sum(y * y, 1)[None, :]
        - 2.0 * x @ y.T)
  return np.sqrt(np.maximum(d2, 0.0))


def dtw(cost) -> Tuple[np.ndarray, float]:
  """Optimal monotone alignment for a cost matrix (``librosa.sequence.dtw``).

  Args:
    cost: ``[N, M]`` non-negative local costs.

  Returns:
    ``(path [L, 2] int, total_cost)``: aligned index pairs ``(i, j)`` from
    ``(0, 0)`` to ``(N-1, M-1)``, and the accumulated cost along the path.
  """
  c = np.asarray(cost, dtype=np.float64)
  if c.ndim != 2 or 0 in c.shape:
    raise ValueError(f"DTW needs a non-empty [N, M] cost matrix, got shape "
                     f"{c.shape}.")
  # librosa (numba) is imported on first use, so that importing
  # metatts.evaluation stays light.
  import librosa.sequence  # pylint: disable=g-import-not-at-top
  acc, path = librosa.sequence.dtw(C=c, step_sizes_sigma=_STEPS,
                                   backtrack=True)
  return np.asarray(path[::-1], dtype=np.int64), float(acc[-1, -1])


def align(x, y) -> np.ndarray:
  """DTW path ``[L, 2]`` between feature sequences ``x [N, D]``, ``y [M, D]``."""
  return dtw(cost_matrix(x, y))[0]
