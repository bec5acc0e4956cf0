"""Adaptation clips: load and check 1-10 transcribed clips, pad them.

What ``metatts.api.TTS.prepare_clips`` / ``make_batch`` run, and what the
evaluation protocol turns its held-out clips into: a clip is loaded with the
feature settings of the model (``metatts.data.features.load_clip``: the one
clip loader, the same as the feature cache), its transcript is encoded with
the model's symbol set, and the log-mel is computed like the training
features. A support batch pads the clips to bucketed lengths (frames to a
multiple of ``FRAME_BUCKET``, symbols to a multiple of ``TOKEN_BUCKET``);
padding is masked, so it does not change the loss, and a jitted adaptation
is compiled once per (number of clips, length bucket). The number of clips is
not padded: an empty padding clip would divide by zero in the
guided-attention loss, and a repeated one would weight clips unequally.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import Any, List, Optional, Sequence, Union

import jax.numpy as jnp
import numpy as np

from metatts.audio import io as aio
from metatts.audio import text as atext
from metatts.data import features as dfeat
from metatts.types import TTSBatch

PathLike = Union[str, os.PathLike]
ClipLike = Union[PathLike, np.ndarray]

MIN_CLIPS, MAX_CLIPS = 1, 10
# Padded shapes: frames to a multiple of FRAME_BUCKET, symbols of TOKEN_BUCKET.
FRAME_BUCKET, TOKEN_BUCKET = 64, 16
# A transcript is rejected when the clip gives it less than MIN_SEC_PER_SYMBOL
# or more than MAX_SEC_PER_SYMBOL seconds per symbol (read speech: ~0.07 s).
MIN_SEC_PER_SYMBOL, MAX_SEC_PER_SYMBOL = 0.01, 1.0
# Speech-presence screen (:func:`speech_fraction`): a frame is voiced-like
# when its spectral flatness is below SPEECH_FLATNESS; a clip needs at least
# MIN_SPEECH_FRACTION of its active frames voiced-like.
SPEECH_FLATNESS = 0.1
MIN_SPEECH_FRACTION = 0.2
SPEECH_FRAME_SECONDS = 0.032  # analysis frame (50% hop, Hann window)
SPEECH_ACTIVE_DB = 30.0  # frames within this of the loudest one are active
# The hints of metatts.audio.io speak to a corpus builder; a voice clone
# hears these instead.
_CLONING_HINT = "re-encode it, e.g. `sox IN -r 16000 -c 1 -b 16 OUT.wav`, " \
    "or leave it out of your clips"


@dataclasses.dataclass(frozen=True)
class Clip:
  """One prepared adaptation clip."""

  name: str
  text: str
  tokens: np.ndarray  # int32 [L]   symbol ids, EOS last
  mel: np.ndarray  # float32 [T, M]  log-mel, as in the training features
  # float32 [S]: the trimmed, loudness-normalized waveform the mel was
  # computed from (a trained vocoder adapts on it); None if not kept.
  audio: Optional[np.ndarray] = dataclasses.field(default=None, repr=False,
                                                  compare=False)


def round_up(x: int, multiple: int) -> int:
  return int(multiple * math.ceil(max(int(x), 1) / multiple))


def bucket(x: int, multiple: int, cap: int) -> int:
  """``x`` rounded up to ``multiple``, but not past ``cap`` (nor below x)."""
  return max(int(x), min(round_up(x, multiple), int(cap)))


def clip_name(wav: Any, index: int) -> str:
  if isinstance(wav, (str, os.PathLike)):
    return os.fspath(wav)
  return f"clip {index} (array)"


def prepare_audio(wav: ClipLike, index: int, sample_rate: Optional[int],
                  fc: dfeat.FeatureConfig, max_seconds: float) -> np.ndarray:
  """Loads/checks/trims/normalizes a clip exactly like the feature cache.

  The messages speak to someone cloning a voice: what to do with the clip
  (the corpus builder's advice to change ``min_seconds`` / ``max_seconds``
  or to drop it from a corpus does not apply: the limits are the model's).
  """
  name = clip_name(wav, index)
  try:
    return dfeat.load_clip(wav, fc, sample_rate=sample_rate,
                           max_seconds=max_seconds, name=name)
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f"Clip {index} ({name}) does not exist; check the path.") from e
  except aio.AudioError as e:
    fixes = {
        "too_short": f"use a clip with at least {fc.min_seconds:g} s of "
                     "speech after trimming silence, or leave it out",
        "too_long": f"split it into clips of at most {max_seconds:.2f} s "
                    "(the model's limit)",
    }
    message = str(e).replace(aio.REENCODE_HINT, _CLONING_HINT)
    if e.reason in fixes:
      message = message.replace(aio._FIXES[e.reason], fixes[e.reason])  # pylint: disable=protected-access
    raise aio.AudioError(e.reason, f"Clip {index}: {message}") from e
  except ValueError as e:
    raise ValueError(f"Clip {index}: {e}") from e


def speech_fraction(audio: np.ndarray, sample_rate: int) -> float:
  """The fraction of a clip's active frames that look voiced (tonal).

  Frames of ``SPEECH_FRAME_SECONDS`` (rounded up to a power of two samples,
  Hann window, 50% hop); the active ones are within ``SPEECH_ACTIVE_DB`` of
  the loudest; a frame is voiced-like when the spectral flatness of its
  power spectrum (geometric over arithmetic mean, Gray & Markel 1974) is
  below ``SPEECH_FLATNESS``. Voiced speech is harmonic, so most of its
  frames are far below that; white noise has an expected flatness of
  ``exp(-euler_gamma) = 0.561`` (its periodogram bins are exponentially
  distributed), whatever its level.

  Calibration (``prepare_clips`` refuses below ``MIN_SPEECH_FRACTION`` =
  0.2): on 3408 clips of the embedded corpus (``~/.cache/metatts/
  synth-default``, loaded as for adaptation) the fraction is at least 0.59
  (1st percentile 0.66, median 0.94) and the median frame flatness at most
  0.063; on white noise (sigma 0.01, 0.1 and 0.3; 0.7-5 s; 8, 16 and
  22.05 kHz) it is 0.0, with a median flatness of 0.556-0.574; the harmonic
  test clips of ``tests/test_api.py`` give 1.0.

  Args:
    audio: float [S] (as :func:`prepare_audio` returns it).
    sample_rate: its rate.

  Returns:
    A fraction in [0, 1] (0 for an all-zero clip).

  References:
    Gray & Markel (1974), A spectral-flatness measure for studying the
      autocorrelation method of linear prediction of speech analysis, IEEE
      Trans. ASSP 22(3).
  """
  x = np.asarray(audio, np.float64)
  n = 1 << int(math.ceil(math.log2(SPEECH_FRAME_SECONDS * sample_rate)))
  if x.shape[0] < n:
    x = np.pad(x, (0, n - x.shape[0]))
  frames = np.lib.stride_tricks.sliding_window_view(x, n)[::n // 2]
  power = np.abs(np.fft.rfft(frames * np.hanning(n), axis=1)) ** 2 + 1e-12
  energy = power.sum(axis=1)
  if energy.max() <= 1e-12 * power.shape[1]:
    return 0.0
  active = energy >= energy.max() * 10 ** (-SPEECH_ACTIVE_DB / 10)
  flatness = np.exp(np.mean(np.log(power), axis=1)) / np.mean(power, axis=1)
  return float(np.mean(flatness[active] < SPEECH_FLATNESS))


def encode_text(text: Any, symbols: atext.SymbolSet, what: str) -> np.ndarray:
  """Symbol ids of a transcript; errors and dropped characters name ``what``."""
  if not isinstance(text, str):
    raise ValueError(f"{what}: the text is a {type(text).__name__}, not a "
                     "string; pass the transcript as str.")
  if not text.strip():
    raise ValueError(f"{what}: the text is empty; give the words spoken.")
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      ids = atext.text_to_ids(text, symbols)
  except ValueError as e:
    raise ValueError(f"{what}: {e}") from e
  for w in caught:
    warnings.warn(f"{what}: {w.message}", UserWarning, stacklevel=3)
  return ids


def prepare_clips(wavs: Sequence[ClipLike], texts: Sequence[str], *,
                  feature_config: dfeat.FeatureConfig, symbols,
                  max_tokens: int, max_frames: int,
                  sample_rate: Optional[int] = None,
                  names: Optional[Sequence[str]] = None,
                  check_speech: bool = True) -> List[Clip]:
  """Loads and checks adaptation clips (see ``metatts.api.TTS.adapt``).

  Args:
    check_speech: refuse a clip whose :func:`speech_fraction` is below
      ``MIN_SPEECH_FRACTION`` (noise, not speech). False skips the screen.

  Returns:
    One :class:`Clip` per input.

  Raises:
    ValueError, FileNotFoundError: naming the bad clip and the fix.
  """
  if isinstance(wavs, (str, os.PathLike)) or (
      isinstance(wavs, np.ndarray) and wavs.ndim != 2):
    raise ValueError(
        "wavs must be a list of clips (paths or arrays); wrap a single clip "
        "as wavs=[clip], texts=[text].")
  if isinstance(texts, str):
    raise ValueError("texts must be a list of transcripts, one per clip; "
                     "wrap a single one as texts=[text].")
  wavs, texts = list(wavs), list(texts)
  if len(wavs) != len(texts):
    raise ValueError(
        f"Got {len(wavs)} clips but {len(texts)} transcripts; pass exactly "
        "one transcript per clip, in the same order.")
  if not MIN_CLIPS <= len(wavs) <= MAX_CLIPS:
    raise ValueError(
        f"Got {len(wavs)} clips; few-shot adaptation takes {MIN_CLIPS} to "
        f"{MAX_CLIPS} clips. " + (
            "Give at least one clip with its transcript." if not wavs else
            f"Pick the {MAX_CLIPS} best (clean, 2-10 s) clips."))
  if names is not None and len(names) != len(wavs):
    raise ValueError(f"names has {len(names)} entries for {len(wavs)} "
                     "clips; give one name per clip or none.")
  fc = feature_config
  mel_config = fc.mel_config()
  hop, sr = mel_config.hop_length, fc.sample_rate
  max_seconds = (max_frames - 1) * hop / sr
  out = []
  for i, (wav, text) in enumerate(zip(wavs, texts)):
    name = names[i] if names is not None else clip_name(wav, i)
    tokens = encode_text(text, symbols, f"Transcript of clip {i} ({name})")
    if tokens.shape[0] > max_tokens:
      raise ValueError(
          f"Transcript of clip {i} ({name}) has {tokens.shape[0]} symbols, "
          f"more than the model's max_tokens={max_tokens}; use a "
          "shorter clip and transcript (one sentence).")
    audio = prepare_audio(wav, i, sample_rate, fc, max_seconds)
    if check_speech:
      fraction = speech_fraction(audio, sr)
      if fraction < MIN_SPEECH_FRACTION:
        raise ValueError(
            f"Clip {i} ({name}) does not sound like speech: "
            f"{fraction:.0%} of its frames are voiced-like (spectral "
            f"flatness below {SPEECH_FLATNESS}), fewer than the "
            f"{MIN_SPEECH_FRACTION:.0%} speech gives (noise or hiss: 0%). "
            "Use a recording of the speaker talking, or leave it out "
            "(if it is speech, skip the check: check_speech=False, CLI "
            "--no-speech-check).")
    mel = dfeat.compute_log_mel(audio, mel_config)  # [T, M]
    if mel.shape[0] > max_frames:
      raise ValueError(
          f"Clip {i} ({name}) gives {mel.shape[0]} frames, more than "
          f"max_frames={max_frames}; split it into shorter clips.")
    per_symbol = audio.shape[0] / sr / tokens.shape[0]
    if not MIN_SEC_PER_SYMBOL <= per_symbol <= MAX_SEC_PER_SYMBOL:
      raise ValueError(
          f"Transcript of clip {i} ({name}) does not fit the audio: "
          f"{audio.shape[0] / sr:.2f} s for {tokens.shape[0]} symbols "
          f"({per_symbol:.3f} s per symbol, expected "
          f"{MIN_SEC_PER_SYMBOL}-{MAX_SEC_PER_SYMBOL}). Check that the text "
          "is the words spoken in this clip.")
    out.append(Clip(name, text, tokens, mel.astype(np.float32),
                    np.asarray(audio, np.float32)))
  return out


def from_example(example: Any) -> Clip:
  """A :class:`Clip` of a feature-cache ``Example`` (its cached log-mel)."""
  return Clip(example.utt_id, example.text,
              np.asarray(example.tokens, np.int32),
              np.asarray(example.mel, np.float32))


def make_batch(clips: Sequence[Clip], *, speaker_slot: int, max_tokens: int,
               max_frames: int, num_mels: int,
               seed: Optional[int] = None) -> TTSBatch:
  """Pads clips into a support ``TTSBatch`` with bucketed lengths.

  Args:
    clips: from :func:`prepare_clips` (or :func:`from_example`).
    speaker_slot: the new voice's speaker-table row.
    max_tokens, max_frames: the model's limits (caps of the buckets).
    num_mels: M.
    seed: None: ``seeds=None``, the model's fixed default prenet-dropout
      masks; an int: per-clip dropout seeds drawn from it.

  Returns:
    ``TTSBatch`` with ``tokens`` [K, L_b], ``mels`` [K, T_b, M],
    ``speaker_ids`` all equal to ``speaker_slot``; ``L_b`` and ``T_b`` are
    the longest clip rounded up to ``TOKEN_BUCKET`` / ``FRAME_BUCKET``.
  """
  k = len(clips)
  lb = bucket(max(c.tokens.shape[0] for c in clips), TOKEN_BUCKET, max_tokens)
  tb = bucket(max(c.mel.shape[0] for c in clips), FRAME_BUCKET, max_frames)
  tokens = np.zeros((k, lb), np.int32)
  mels = np.zeros((k, tb, num_mels), np.float32)
  for i, c in enumerate(clips):
    tokens[i, :c.tokens.shape[0]] = c.tokens
    mels[i, :c.mel.shape[0]] = c.mel
  seeds = None
  if seed is not None:
    seeds = jnp.asarray(np.random.default_rng(seed).integers(
        0, 2**32 - 1, size=k, dtype=np.uint32))
  return TTSBatch(
      tokens=jnp.asarray(tokens),
      token_lengths=jnp.asarray([c.tokens.shape[0] for c in clips],
                                jnp.int32),
      mels=jnp.asarray(mels),
      mel_lengths=jnp.asarray([c.mel.shape[0] for c in clips], jnp.int32),
      speaker_ids=jnp.full((k,), speaker_slot, jnp.int32),
      seeds=seeds)


__all__ = ["Clip", "FRAME_BUCKET", "MAX_CLIPS", "MIN_CLIPS",
           "MIN_SPEECH_FRACTION", "SPEECH_FLATNESS", "TOKEN_BUCKET", "bucket",
           "encode_text", "from_example", "make_batch", "prepare_audio",
           "prepare_clips", "round_up", "speech_fraction"]
