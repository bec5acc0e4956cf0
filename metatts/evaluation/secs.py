"""Speaker-encoder cosine similarity (SECS) with Resemblyzer.

The judge is Resemblyzer's ``VoiceEncoder``: a 3-layer LSTM speaker encoder
trained with the generalized end-to-end (GE2E) loss, whose pretrained weights
ship inside the PyPI package, so nothing is downloaded. It is independent of
metatts's own speaker encoder.

Definitions used throughout metatts:

* utterance embedding: ``VoiceEncoder.embed_utterance`` of the clip after
  Resemblyzer's ``preprocess_wav`` (resampling to 16 kHz, loudness
  normalisation, VAD trimming of long silences); unit L2 norm.
* speaker (enrollment) embedding: the mean of the unit-normalised utterance
  embeddings of the real clips of a speaker, renormalised to unit length.
* SECS of a clip: cosine between its utterance embedding and the target
  speaker's enrollment embedding. Range [-1, 1], higher is more similar.

References:
  Wan, Wang, Papir, Lopez Moreno. Generalized End-to-End Loss for Speaker
  Verification. ICASSP 2018.
  Jia et al. Transfer Learning from Speaker Verification to Multispeaker
  Text-To-Speech Synthesis. NeurIPS 2018 (SV2TTS; SECS as the similarity judge).
  Casanova et al. YourTTS. ICML 2022 (SECS definition).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Dict, Optional, Sequence

import numpy as np

from metatts.evaluation import _deps
from metatts.evaluation.audio_io import check_waveform

_ENCODER = None
_ENCODER_LOCK = threading.Lock()


def get_encoder():
  """Returns the process-wide Resemblyzer encoder (loaded once, on CPU).

  Raises:
    ImportError: resemblyzer/torch missing (message names the pip command).
  """
  global _ENCODER
  with _ENCODER_LOCK:
    if _ENCODER is None:
      _deps.require("torch")
      resemblyzer = _deps.require("resemblyzer")
      _ENCODER = resemblyzer.VoiceEncoder("cpu", verbose=False)
  return _ENCODER


# The encoder is a small LSTM run on short clips: one intra-op thread is the
# fastest on small shared CPUs, and the caller's torch setting is restored.
ENCODER_THREADS = 1


@contextlib.contextmanager
def _torch_threads(n: int):
  torch = _deps.require("torch")
  old = torch.get_num_threads()
  torch.set_num_threads(n)
  try:
    yield
  finally:
    torch.set_num_threads(old)


def embed_utterance(wav, sr: int, name: str = "waveform") -> np.ndarray:
  """Embeds one clip with Resemblyzer.

  Args:
    wav: ``[S]`` mono waveform in [-1, 1].
    sr: Its sample rate (Resemblyzer resamples to 16 kHz itself).
    name: Clip name for error messages.

  Returns:
    ``float32 [256]`` unit-norm utterance embedding.

  Raises:
    ValueError: Bad audio, or nothing left after Resemblyzer's VAD trimming.
  """
  x = check_waveform(wav, sr, name)
  resemblyzer = _deps.require("resemblyzer")
  encoder = get_encoder()
  y = resemblyzer.preprocess_wav(x.astype(np.float32), source_sr=int(sr))
  if y.size < 1600:  # < 100 ms of voiced audio at 16 kHz.
    raise ValueError(f"{name}: no speech left after voice-activity trimming "
                     f"({y.size} samples); the clip is silent or noise only.")
  with _torch_threads(ENCODER_THREADS):
    e = np.asarray(encoder.embed_utterance(y), dtype=np.float32)
  return e / max(float(np.linalg.norm(e)), 1e-12)


def speaker_embedding(utterance_embeddings) -> np.ndarray:
  """Enrollment embedding: renormalised mean of unit utterance embeddings.

  Args:
    utterance_embeddings: ``[U, D]`` utterance embeddings (U >= 1).

  Returns:
    ``float32 [D]`` unit-norm speaker embedding.
  """
  e = np.asarray(utterance_embeddings, dtype=np.float64)
  if e.ndim != 2 or e.shape[0] == 0:
    raise ValueError(f"speaker_embedding needs [U>=1, D] embeddings, got shape "
                     f"{e.shape}; give at least one real clip of the speaker.")
  e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
  m = e.mean(axis=0)
  return (m / max(float(np.linalg.norm(m)), 1e-12)).astype(np.float32)


def cosine(a, b) -> np.ndarray:
  """Cosine similarity along the last axis (broadcasting)."""
  a = np.asarray(a, dtype=np.float64)
  b = np.asarray(b, dtype=np.float64)
  na = np.linalg.norm(a, axis=-1)
  nb = np.linalg.norm(b, axis=-1)
  return np.sum(a * b, axis=-1) / np.maximum(na * nb, 1e-12)


def speaker_similarity(synth_wavs: Sequence, reference_wavs: Sequence,
                       sr: int) -> np.ndarray:
  """SECS of synthesized clips against the target speaker's real clips.

  Args:
    synth_wavs: Synthesized clips, each ``[S_i]``, all of the same target
      speaker.
    reference_wavs: Real clips of that speaker (enrollment; at least one).
    sr: Sample rate shared by all clips.

  Returns:
    ``float64 [len(synth_wavs)]`` cosine similarities in [-1, 1].
  """
  if not reference_wavs:
    raise ValueError("speaker_similarity needs at least one real reference "
                     "clip of the target speaker.")
  if not synth_wavs:
    raise ValueError("speaker_similarity got no synthesized clips.")
  ref = speaker_embedding([embed_utterance(w, sr, f"reference[{i}]")
                           for i, w in enumerate(reference_wavs)])
  syn = np.stack([embed_utterance(w, sr, f"synthesized[{i}]")
                  for i, w in enumerate(synth_wavs)])
  return cosine(syn, ref[None, :])


def leave_one_out_similarity(embeddings, others: Optional[np.ndarray] = None
                             ) -> np.ndarray:
  """Real-vs-real ceiling: each real clip against the mean of the others.

  Args:
    embeddings: ``[U, D]`` real utterance embeddings of one speaker, U >= 2.
    others: Optional ``[U, D]`` embeddings to score instead of ``embeddings``
      (e.g. vocoded versions of the same clips): row ``u`` is scored against
      the enrollment built from all real clips except ``u``, so a clip is never
      compared with itself.

  Returns:
    ``float64 [U]`` cosine similarities.
  """
  e = np.asarray(embeddings, dtype=np.float64)
  if e.ndim != 2 or e.shape[0] < 2:
    raise ValueError(f"the real-vs-real ceiling needs >= 2 real clips of the "
                     f"speaker, got embeddings of shape {e.shape}; add more "
                     "reference clips.")
  probe = e if others is None else np.asarray(others, dtype=np.float64)
  if probe.shape != e.shape:
    raise ValueError(f"others has shape {probe.shape} but embeddings has "
                     f"{e.shape}; give one vocoded clip per real clip.")
  out = np.empty(e.shape[0])
  for u in range(e.shape[0]):
    enroll = speaker_embedding(np.delete(e, u, axis=0))
    out[u] = cosine(probe[u], enroll)
  return out


def embed_many(wavs: Dict[str, np.ndarray], sr: int) -> Dict[str, np.ndarray]:
  """Embeds a dict of named clips; returns ``{name: [256]}``."""
  return {k: embed_utterance(w, sr, k) for k, w in wavs.items()}
