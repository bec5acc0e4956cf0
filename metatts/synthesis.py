"""Text -> speech with a loaded model: the light half of the voice path.

:func:`synthesize` (text -> sentences -> Tacotron inference -> vocoder ->
one waveform) and the rules it follows, in a module that imports neither
flax nor optax nor Orbax: ``python -m metatts say`` runs it from a voice's
cached parameters and stored traces without building the model
(:mod:`metatts.say_cache`), and :mod:`metatts.voice` re-exports it for the
API and the evaluation, so every caller speaks through this one function.

The model argument is any object with the attributes of a
:class:`metatts.api.TTS` that synthesis reads: ``feature_config``,
``mel_config``, ``symbols``, ``max_tokens``, ``config`` (``max_tokens``,
``max_frames``, ``reduction_factor``), ``rest``, ``vocoder`` and
``_infer_jit`` (``metatts.voice.infer_function``).
"""

from __future__ import annotations

import fractions
import re
from typing import Any, List, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from metatts import clips as clips_lib

# Synthesis length limits per input symbol (cf. ESPnet's Tacotron 2
# maxlenratio / minlenratio): a frame budget of at most SYNTH_SEC_PER_SYMBOL,
# and a stop before SYNTH_MIN_SEC_PER_SYMBOL is ignored.
SYNTH_SEC_PER_SYMBOL = 0.25
# The synthesis-length rule shared by the library API and the evaluation
# (cf. ESPnet's Tacotron 2 ``minlenratio``): a stop predicted before
# SYNTH_MIN_SEC_PER_SYMBOL seconds per input symbol (50 symbols/s, faster
# than any speech) is ignored, so an undertrained model that predicts "stop"
# at once still speaks and can be judged. See ``min_synthesis_frames``.
SYNTH_MIN_SEC_PER_SYMBOL = 0.02
SENTENCE_PAUSE_SECONDS = 0.15
# Synthesized audio louder than this peak is scaled down to it.
PEAK_LIMIT = 0.99
STOP_THRESHOLD = 0.5


def min_synthesis_frames(token_lengths, sample_rate: int, hop_length: int,
                         max_frames: Optional[int] = None) -> np.ndarray:
  """Frames before which a predicted stop is ignored (host side).

  ``ceil(SYNTH_MIN_SEC_PER_SYMBOL * n * sample_rate / hop_length)``
  (computed exactly) for an input of ``n`` symbols, capped at
  ``max_frames - 1`` so that a stop can still fire inside the frame budget.
  Pass the result to ``infer`` / ``synthesize`` as ``min_frames``; the
  utterance then has at least ``min_frames + 1`` frames.

  Args:
    token_lengths: int [B] (or a scalar) symbols per utterance, EOS included.
    sample_rate: audio sample rate of the mel features (Hz).
    hop_length: mel frame hop (samples).
    max_frames: the frame budget of the synthesis, or None (no cap).

  Returns:
    int32 array of the shape of ``token_lengths``.

  Raises:
    ValueError: non-positive ``sample_rate``, ``hop_length`` or
      ``max_frames``.
  """
  if int(sample_rate) <= 0 or int(hop_length) <= 0:
    raise ValueError(
        f"min_synthesis_frames needs sample_rate > 0 and hop_length > 0; "
        f"got {sample_rate}, {hop_length}. Pass the mel features' settings.")
  # Exact rational arithmetic: a float product such as 0.02 * 35 * 16000 /
  # 200 = 56.000000000000007 would round up to one frame too many.
  rate = fractions.Fraction(SYNTH_MIN_SEC_PER_SYMBOL).limit_denominator(10**6)
  num = rate.numerator * int(sample_rate)
  den = rate.denominator * int(hop_length)
  n = np.maximum(np.asarray(token_lengths, np.int64), 0)
  frames = -(-n * num // den)  # ceil(n * num / den)
  if max_frames is not None:
    if int(max_frames) < 1:
      raise ValueError(f"max_frames={max_frames} must be >= 1.")
    frames = np.minimum(frames, int(max_frames) - 1)
  return np.asarray(frames, np.int32)


class Speech(NamedTuple):
  """What :func:`synthesize` returns."""

  audio: np.ndarray  # float32 [S] at sample_rate, |audio| <= PEAK_LIMIT
  sample_rate: int
  mel: np.ndarray  # float32 [T, M] predicted log-mel, sentences joined
  alignments: List[np.ndarray]  # per sentence [decoder steps, symbols]


def split_text(text: str, symbols, max_tokens: int) -> List[np.ndarray]:
  """Normalizes ``text`` and cuts it into sentence chunks of symbol ids.

  Args:
    text: English text.
    symbols: the model's ``SymbolSet``.
    max_tokens: the longest chunk (symbols, EOS included).

  Returns:
    int32 id arrays, one per sentence (long sentences split at words).

  Raises:
    ValueError: not a string, empty, or nothing speakable in it.
  """
  from metatts.audio import text as atext  # pylint: disable=g-import-not-at-top
  if not isinstance(text, str):
    raise ValueError(f"Text to speak is a {type(text).__name__}; pass a "
                     "str.")
  if not text.strip():
    raise ValueError("Text to speak is empty; pass at least one word.")
  sentences = [s for s in re.split(r"(?<=[.!?;:])\s+", text.strip()) if s]
  chunks = []
  for sentence in sentences:
    pieces = [sentence]
    while pieces:
      piece = pieces.pop(0)
      if not re.search(r"[A-Za-z0-9]", atext.normalize_text(piece)):
        continue  # punctuation only
      ids = clips_lib.encode_text(piece, symbols, "Text to speak")
      if ids.shape[0] <= max_tokens:
        chunks.append(ids)
        continue
      words = piece.split()
      if len(words) < 2:
        raise ValueError(
            f"Text to speak has a word of {ids.shape[0]} symbols, more "
            f"than max_tokens={max_tokens}; split it.")
      half = len(words) // 2
      pieces[:0] = [" ".join(words[:half]), " ".join(words[half:])]
  if not chunks:
    raise ValueError(
        f"Text to speak {text!r} has nothing speakable in the "
        f"{symbols.name} set (after normalization); write it in "
        "English letters, digits and punctuation.")
  return chunks


def synthesize(tts, params, speaker_slot: int, text: str,
               seed: int = 0, vocoder: Any = None) -> Speech:
  """Speaks ``text`` with ``params`` (see ``metatts.api.Voice.synthesize``).

  Each sentence is padded to a ``TOKEN_BUCKET`` multiple of symbols and run
  alone; its frame budget is ``SYNTH_SEC_PER_SYMBOL`` per padded symbol
  (rounded up to ``FRAME_BUCKET``, at most the model's ``max_frames``); the
  prenet-dropout seed and the vocoder key of sentence ``i`` come from
  ``seed`` and ``i``. Sentences are joined with ``SENTENCE_PAUSE_SECONDS``
  of silence, NaN/Inf are zeroed and a peak above ``PEAK_LIMIT`` is scaled
  down (never clipped). ``vocoder`` (default ``tts.vocoder``) turns the
  mels into audio, e.g. a voice's adapted vocoder.
  """
  vocoder = tts.vocoder if vocoder is None else vocoder
  sr, hop = tts.feature_config.sample_rate, tts.mel_config.hop_length
  chunks = split_text(text, tts.symbols, tts.max_tokens)
  pause = np.zeros(int(SENTENCE_PAUSE_SECONDS * sr), np.float32)
  pieces, mels, aligns = [], [], []
  for i, ids in enumerate(chunks):
    lb = clips_lib.bucket(ids.shape[0], clips_lib.TOKEN_BUCKET,
                          tts.config.max_tokens)
    tokens = np.zeros((1, lb), np.int32)
    tokens[0, :ids.shape[0]] = ids
    budget = int(SYNTH_SEC_PER_SYMBOL * lb * sr / hop)
    max_frames = min(tts.config.max_frames,
                     clips_lib.round_up(budget, clips_lib.FRAME_BUCKET))
    seeds = np.asarray([(seed * 1000003 + i) % 2**32], np.uint32)
    min_frames = min_synthesis_frames([ids.shape[0]], sr, hop,
                                               max_frames)
    out = tts._infer_jit(  # pylint: disable=protected-access
        params, tts.rest, jnp.asarray(tokens),
        jnp.asarray([ids.shape[0]], jnp.int32),
        jnp.asarray([speaker_slot], jnp.int32), jnp.asarray(seeds),
        jnp.asarray(min_frames), max_frames=max_frames,
        stop_threshold=STOP_THRESHOLD)
    # Sliced on the host: an eager slice of a device array is one more small
    # XLA program to look up and load on every run (~0.1 s of a warm say).
    length = int(np.asarray(out.lengths)[0])
    mel = np.asarray(out.mel, np.float32)[0, :length]  # [T, M]
    key = jax.random.fold_in(jax.random.key(seed), i)
    audio = np.asarray(vocoder(mel, key), np.float32)
    if i:
      pieces.append(pause)
    pieces.append(audio)
    mels.append(mel)
    r = int(getattr(tts.config, "reduction_factor", 1))
    aligns.append(np.ascontiguousarray(np.asarray(out.alignment, np.float32)[
        0, :-(-length // r), :ids.shape[0]]))
  audio = np.concatenate(pieces).astype(np.float32)
  audio = np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0)
  peak = float(np.max(np.abs(audio))) if audio.size else 0.0
  if peak > PEAK_LIMIT:  # keep it playable: scale down, never clip
    audio = audio * np.float32(PEAK_LIMIT / peak)
  return Speech(audio, sr, np.concatenate(mels, 0), aligns)


__all__ = ["PEAK_LIMIT", "SENTENCE_PAUSE_SECONDS", "STOP_THRESHOLD",
           "SYNTH_MIN_SEC_PER_SYMBOL", "SYNTH_SEC_PER_SYMBOL", "Speech",
           "min_synthesis_frames", "split_text", "synthesize"]
