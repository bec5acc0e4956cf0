"""Intelligibility: word error rate from an offline recognizer.

The recognizer is CMU PocketSphinx 5 with the US-English acoustic model,
dictionary and 3-gram language model that ship inside its PyPI wheel (nothing
is downloaded), decoding 16 kHz 16-bit audio (default search, with the active
HMMs capped at 3000 and word exits at 10 per frame for speed). Every clip is
decoded from the decoder's initial feature state (cepstral mean normalisation
re-initialised), so its transcript is what a fresh decoder would give and does
not depend on the clips decoded before it (PocketSphinx otherwise carries its
CMN estimate over from one utterance to the next). It is a weak
recognizer by modern standards, so absolute WERs are high even on real speech:
always read the synthesized WER beside the ground-truth WER of the real clips
(the ``reference`` entry of metrics.json).

Both reference text and hypothesis are normalised the same way before scoring,
by the text frontend's own normaliser (``metatts.audio.text.normalize_words``):
lowercase, abbreviations expanded, numbers, years and money spelled out
("42" -> "forty two", "3.5" -> "three point five", "1987" -> "nineteen eighty
seven"), "&" -> "and", "%" -> "percent", punctuation removed (apostrophes
inside words are kept: "don't"), whitespace collapsed.

WER = (substitutions + deletions + insertions) / reference words, from the
Levenshtein alignment of word sequences (jiwer); corpus WER sums errors and
reference words over utterances.

References:
  Huggins-Daines et al. PocketSphinx: A free, real-time continuous speech
  recognition system for hand-held devices. ICASSP 2006.
  Levenshtein. Binary codes capable of correcting deletions, insertions and
  reversals. Soviet Physics Doklady 1966.
  jiwer (Python package): word error rate and alignment counts.
"""

from __future__ import annotations

import threading
from typing import NamedTuple, Sequence, Tuple

import jiwer
import numpy as np

from metatts.audio import text as atext
from metatts.audio.io import resample
from metatts.evaluation import _deps
from metatts.evaluation.audio_io import EVAL_SAMPLE_RATE, check_waveform


def normalize_text(text: str) -> str:
  """Lowercases, spells numbers, strips punctuation, collapses spaces.

  This is :func:`metatts.audio.text.normalize_words`: the text frontend's
  normaliser (abbreviations, num2words speller, years, money) with the
  punctuation dropped, so the judge and the model read text alike.

  Args:
    text: Raw transcript or recognizer output.

  Returns:
    Normalised string of space-separated words (may be empty).
  """
  return atext.normalize_words(text)


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
  """Levenshtein alignment counts between two token sequences (jiwer).

  The total is the edit distance; how it splits into substitutions,
  deletions and insertions among equally short alignments is jiwer's choice.

  Args:
    reference: Reference tokens (e.g. words).
    hypothesis: Hypothesis tokens.

  Returns:
    ``EditCounts(substitutions, deletions, insertions, ref_words)``.
  """
  r, h = list(reference), list(hypothesis)
  if not r:
    return EditCounts(0, 0, len(h), 0)
  # jiwer aligns space-separated words; naming each distinct token by an id
  # lets any tokens (characters, words with spaces) through unchanged.
  ids: dict = {}
  ref = " ".join(ids.setdefault(t, f"t{len(ids)}") for t in r)
  hyp = " ".join(ids.setdefault(t, f"t{len(ids)}") for t in h)
  out = jiwer.process_words(ref, hyp)
  return EditCounts(out.substitutions, out.deletions, out.insertions, len(r))


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
  x = resample(x, sr, EVAL_SAMPLE_RATE, dtype=np.float64)
  peak = float(np.max(np.abs(x)))
  if peak > 1.0:
    x = x / peak
  pcm = (np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
  dec = get_decoder()
  with _DECODER_LOCK:
    # A fresh feature extractor (CMN back at its initial value): the same
    # clip gives the same words whatever was decoded before, in any process.
    dec.reinit_feat()
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
