"""Intelligibility: word error rate from an offline recognizer.

The recognizer is CMU PocketSphinx 5 with the US-English acoustic model,
dictionary and 3-gram language model that ship inside its PyPI wheel (nothing
is downloaded), decoding 16 kHz 16-bit audio (default search, with the active
HMMs capped at 3000 and word exits at 10 per frame for speed). It is a weak
recognizer by modern standards, so absolute WERs are high even on real speech:
always read the synthesized WER beside the ground-truth WER of the real clips
(the ``reference`` entry of metrics.json).

Both reference text and hypothesis are normalised the same way before scoring:
lowercase, numbers spelled out ("42" -> "forty two", "3.5" -> "three point
five"), "&" -> "and", "%" -> "percent", other punctuation removed (apostrophes
inside words are kept: "don't"), whitespace collapsed.

WER = (substitutions + deletions + insertions) / reference words, from the
Levenshtein alignment of word sequences; corpus WER sums errors and reference
words over utterances.

References:
  Huggins-Daines et al. PocketSphinx: A free, real-time continuous speech
  recognition system for hand-held devices. ICASSP 2006.
  Levenshtein. Binary codes capable of correcting deletions, insertions and
  reversals. Soviet Physics Doklady 1966.
"""

from __future__ import annotations

import re
import threading
from typing import NamedTuple, Sequence, Tuple

import numpy as np

from metatts.evaluation import _deps
from metatts.evaluation.audio_io import (EVAL_SAMPLE_RATE, check_waveform,
                                         resample)

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve "
         "thirteen fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand"),
           (100, "hundred"))


def number_to_words(n: int) -> str:
  """Spells a non-negative integer in English words ("121" -> "one hundred
  twenty one"); integers of 10**12 and above are read digit by digit."""
  if n < 0:
    return "minus " + number_to_words(-n)
  if n >= 10 ** 12:
    return " ".join(_ONES[int(d)] for d in str(n))
  if n < 20:
    return _ONES[n]
  if n < 100:
    return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
  for value, word in _SCALES:
    if n >= value:
      head = number_to_words(n // value) + " " + word
      rest = n % value
      return head if rest == 0 else head + " " + number_to_words(rest)
  raise AssertionError(n)  # unreachable


def _spell_number(match: re.Match) -> str:
  token = match.group(0).replace(",", "")
  if "." in token:
    whole, frac = token.split(".", 1)
    words = number_to_words(int(whole)) if whole else "zero"
    return f" {words} point " + " ".join(_ONES[int(d)] for d in frac) + " "
  return " " + number_to_words(int(token)) + " "


def normalize_text(text: str) -> str:
  """Lowercases, spells numbers, strips punctuation, collapses spaces.

  Args:
    text: Raw transcript or recognizer output.

  Returns:
    Normalised string of space-separated words (may be empty).
  """
  t = text.lower()
  t = t.replace("&", " and ").replace("%", " percent ")
  t = re.sub(r"\d[\d,]*(?:\.\d+)?", _spell_number, t)
  t = re.sub(r"[\u2018\u2019]", "'", t)
  t = re.sub(r"[^a-z0-9' ]+", " ", t)
  t = re.sub(r"(^|\s)'+|'+(\s|$)", " ", t)  # quotes, not apostrophes
  return " ".join(t.split())


class EditCounts(NamedTuple):
  substitutions: int
  deletions: int
  insertions: int
  ref_words: int

  @property
  def errors(self) -> int:
    return self.substitutions + self.deletions + self.insertions


def edit_counts(reference: Sequence[str], hypothesis: Sequence[str]
                ) -> EditCounts:
  """Levenshtein alignment counts between two token sequences.

  Among minimum-cost alignments, the backtrace prefers substitutions/matches,
  then deletions, then insertions (the total is the same for all).

  Args:
    reference: Reference tokens (e.g. words).
    hypothesis: Hypothesis tokens.

  Returns:
    ``EditCounts(substitutions, deletions, insertions, ref_words)``.
  """
  r, h = list(reference), list(hypothesis)
  n, m = len(r), len(h)
  d = np.zeros((n + 1, m + 1), dtype=np.int64)
  d[:, 0] = np.arange(n + 1)
  d[0, :] = np.arange(m + 1)
  for i in range(1, n + 1):
    for j in range(1, m + 1):
      d[i, j] = min(d[i - 1, j - 1] + (r[i - 1] != h[j - 1]), d[i - 1, j] + 1,
                    d[i, j - 1] + 1)
  i, j, s, de, ins = n, m, 0, 0, 0
  while i > 0 or j > 0:
    if i > 0 and j > 0 and d[i, j] == d[i - 1, j - 1] + (r[i - 1] != h[j - 1]):
      s += int(r[i - 1] != h[j - 1])
      i, j = i - 1, j - 1
    elif i > 0 and d[i, j] == d[i - 1, j] + 1:
      de += 1
      i -= 1
    else:
      ins += 1
      j -= 1
  return EditCounts(s, de, ins, n)


def word_error_rate(reference: str, hypothesis: str, normalize: bool = True
                    ) -> float:
  """WER of one utterance (errors / reference words).

  Raises:
    ValueError: The reference has no words after normalisation.
  """
  ref = normalize_text(reference) if normalize else reference
  hyp = normalize_text(hypothesis) if normalize else hypothesis
  c = edit_counts(ref.split(), hyp.split())
  if c.ref_words == 0:
    raise ValueError(f"reference text {reference!r} has no words after "
                     "normalisation; WER is undefined for empty text.")
  return c.errors / c.ref_words


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
  """Corpus WER: total errors over total reference words (normalised)."""
  if len(references) != len(hypotheses):
    raise ValueError(f"{len(references)} references but {len(hypotheses)} "
                     "hypotheses; give one recognizer output per text.")
  errors = words = 0
  for ref, hyp in zip(references, hypotheses):
    c = edit_counts(normalize_text(ref).split(), normalize_text(hyp).split())
    errors += c.errors
    words += c.ref_words
  if words == 0:
    raise ValueError("all reference texts are empty; WER is undefined.")
  return errors / words


_DECODER = None
_DECODER_LOCK = threading.Lock()


def get_decoder():
  """Returns the process-wide PocketSphinx decoder (en-US, 16 kHz; loaded once)."""
  global _DECODER
  with _DECODER_LOCK:
    if _DECODER is None:
      ps = _deps.require("pocketsphinx")
      # maxhmmpf/maxwpf cap the active HMMs and word exits per frame (CMU's
      # documented speed settings); on noisy synthetic speech the default
      # search is several times slower for the same hypotheses.
      _DECODER = ps.Decoder(samprate=EVAL_SAMPLE_RATE, loglevel="FATAL",
                            maxhmmpf=3000, maxwpf=10)
  return _DECODER


def transcribe(wav, sr: int, name: str = "waveform") -> str:
  """Recognizes one clip with PocketSphinx (resampled to 16 kHz).

  Args:
    wav: ``[S]`` mono waveform in [-1, 1].
    sr: Its sample rate.
    name: Clip name for error messages.

  Returns:
    The recognized words (lowercase, may be empty).
  """
  x = check_waveform(wav, sr, name)
  x = resample(x, sr, EVAL_SAMPLE_RATE)
  peak = float(np.max(np.abs(x)))
  if peak > 1.0:
    x = x / peak
  pcm = (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
  dec = get_decoder()
  with _DECODER_LOCK:
    dec.start_utt()
    dec.process_raw(pcm, full_utt=True)
    dec.end_utt()
    hyp = dec.hyp()
  return "" if hyp is None else hyp.hypstr


def wer_of_clips(wavs: Sequence, texts: Sequence[str], sr: int
                 ) -> Tuple[float, list]:
  """Corpus WER of clips against their texts; returns ``(wer, hypotheses)``."""
  if len(wavs) != len(texts):
    raise ValueError(f"{len(wavs)} clips but {len(texts)} texts; give one text "
                     "per clip.")
  hyps = [transcribe(w, sr, f"clip[{i}]") for i, w in enumerate(wavs)]
  return corpus_wer(texts, hyps), hyps
