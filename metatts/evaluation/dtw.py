"""Dynamic time warping between two feature sequences (numpy, row-vectorised).

The recursion is the classic symmetric one with unit step weights,

  D[i, j] = c[i, j] + min(D[i-1, j], D[i, j-1], D[i-1, j-1]),

with ``D[0, 0] = c[0, 0]``, and the path runs from (0, 0) to (N-1, M-1).
Each row is computed at once: with ``a[j] = c[i, j] + min(D[i-1, j],
D[i-1, j-1])`` and ``S`` the cumulative sum of ``c[i, :]``,
``D[i, j] = S[j] + min_{k <= j} (a[k] - S[k])`` (a horizontal run starting at
column ``k``), which is a cumulative minimum.

References:
  Sakoe, Chiba. Dynamic programming algorithm optimization for spoken word
  recognition. IEEE TASSP 1978.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np


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
  """Optimal monotone alignment for a cost matrix.

  Args:
    cost: ``[N, M]`` non-negative local costs.

  Returns:
    ``(path [L, 2] int, total_cost)``: aligned index pairs ``(i, j)`` from
    ``(0, 0)`` to ``(N-1, M-1)``, and the accumulated cost along the path.
  """
  c = np.asarray(cost, dtype=np.float64)
  n, m = c.shape
  acc = np.empty((n, m))
  acc[0] = np.cumsum(c[0])
  for i in range(1, n):
    prev = acc[i - 1]
    diag = np.concatenate([[np.inf], prev[:-1]])
    a = c[i] + np.minimum(prev, diag)
    s = np.cumsum(c[i])
    acc[i] = s + np.minimum.accumulate(a - s)
  # Backtrack (ties prefer the diagonal).
  i, j = n - 1, m - 1
  path = [(i, j)]
  while i > 0 or j > 0:
    if i == 0:
      j -= 1
    elif j == 0:
      i -= 1
    else:
      cands = (acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1])
      k = int(np.argmin(cands))
      if k == 0:
        i, j = i - 1, j - 1
      elif k == 1:
        i -= 1
      else:
        j -= 1
    path.append((i, j))
  return np.asarray(path[::-1], dtype=np.int64), float(acc[-1, -1])


def align(x, y) -> np.ndarray:
  """DTW path ``[L, 2]`` between feature sequences ``x [N, D]``, ``y [M, D]``."""
  return dtw(cost_matrix(x, y))[0]
