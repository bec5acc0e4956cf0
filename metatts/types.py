"""Shared data types of metatts.

Everything that crosses a module boundary is a NamedTuple pytree with explicit
shapes. ``N`` is the task (speaker) axis of a meta-batch, ``K`` the support
clips, ``Q`` the query clips, ``B`` a plain batch axis.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Tuple

import jax

PyTree = Any
Params = PyTree
Aux = PyTree
# The one contract the meta-learners see: a scalar loss and auxiliary outputs.
LossFn = Callable[[Params, PyTree], Tuple[jax.Array, Aux]]


class Task(NamedTuple):
  """A meta-batch of few-shot tasks (one task = one speaker).

  ``support`` and ``query`` are any pytrees (for instance a ``TTSBatch``)
  whose leaves carry a leading task axis ``N``, followed by the per-task batch
  axis (``K`` clips in the support set, ``Q`` clips in the query set).
  """

  support: PyTree  # leaves [N, K, ...]
  query: PyTree  # leaves [N, Q, ...]


class TTSBatch(NamedTuple):
  """Text -> mel training examples, padded to a bucketed length.

  Padding positions are zero and masked by the lengths.
  """

  tokens: jax.Array  # int32 [B, L]        symbol ids; 0 is padding
  token_lengths: jax.Array  # int32 [B]    number of valid symbols
  mels: jax.Array  # float32 [B, T, M]     log-mel frames (M mel bins)
  mel_lengths: jax.Array  # int32 [B]      number of valid frames
  speaker_ids: jax.Array  # int32 [B]      index into the speaker table
  # Per-example noise seeds (prenet dropout). None = deterministic forward.
  seeds: Any = None  # uint32 [B]


class VocoderBatch(NamedTuple):
  """Mel -> waveform training windows (aligned: ``S = F * hop``)."""

  mels: jax.Array  # float32 [B, F, M]      conditioning log-mel frames
  audio: jax.Array  # float32 [B, S]        waveform in [-1, 1]
  audio_lengths: jax.Array  # int32 [B]     number of valid samples
  speaker_ids: jax.Array  # int32 [B]
  # float32 [B, F] F0 in Hz per frame, 0 = unvoiced (the source-filter
  # vocoder's excitation and F0 targets); None where no model needs it.
  f0: Any = None
