"""Text frontend: normalization, symbol sets, text <-> ids.

Normalization (``normalize_text``) turns raw transcripts into what a reader
says: abbreviations expanded (Mr. -> mister), numbers spelled out (num2words:
cardinals, ordinals, decimals, years, currency, percentages),
typographic punctuation mapped to ASCII, unsupported punctuation dropped,
whitespace collapsed, lowercased.

Two symbol sets share the layout ``[pad, eos, space, punctuation..., units]``
with ``0`` = padding and ``1`` = end of sequence:

* ``CHARACTERS``: lowercase a-z.
* ``PHONEMES``: IPA characters produced by ``espeak-ng -q --ipa -v en-us``
  (one symbol per IPA character, stress marks and length marks included).

``text_to_ids(text, symbols)`` normalizes (and for phonemes, phonemizes),
maps to ids, drops unknown symbols with a warning naming them, and appends
EOS.

References:
  Sproat et al., "Normalization of non-standard words", Computer Speech and
  Language, 2001.
  Shen et al., "Natural TTS Synthesis by Conditioning WaveNet on Mel
  Spectrogram Predictions" (Tacotron 2), ICASSP 2018 (character inputs).
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import unicodedata
import warnings
from typing import Dict, Iterable, NamedTuple, Sequence, Tuple, Union

import numpy as np
from num2words import num2words

PAD = "_"
EOS = "~"
PUNCTUATION = "!',-.:;?"
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# IPA characters espeak-ng (en-us) emits, plus close relatives so that other
# English voices (en-gb) map too. One symbol per Unicode character.
_IPA = ("aæɐɑɒbdðeəɚɛɜɝfɡhiɪjklmnŋoɔprɹɾstθuʊʌvwxzʒʃʔ"
        "ˈˌːᵻɬʲ\u0329\u0303")  # syllabic, nasalized (combining marks)


class SymbolSet(NamedTuple):
  """An ordered symbol inventory. Index 0 is padding, 1 is EOS."""

  name: str
  symbols: Tuple[str, ...]

  @property
  def num_symbols(self) -> int:
    """Vocabulary size including padding and EOS (the embedding size)."""
    return len(self.symbols)

  @property
  def pad_id(self) -> int:
    return 0

  @property
  def eos_id(self) -> int:
    return 1

  @property
  def index(self) -> Dict[str, int]:
    return _index(self.symbols)


@functools.lru_cache(maxsize=8)
def _index(symbols: Tuple[str, ...]) -> Dict[str, int]:
  return {s: i for i, s in enumerate(symbols)}


def _make(name: str, units: str) -> SymbolSet:
  symbols = (PAD, EOS, " ") + tuple(PUNCTUATION) + tuple(units)
  assert len(set(symbols)) == len(symbols), name
  return SymbolSet(name, symbols)


CHARACTERS = _make("characters", _LETTERS)
PHONEMES = _make("phonemes", _IPA)
_SETS = {"characters": CHARACTERS, "phonemes": PHONEMES}


def symbol_set(name: Union[str, SymbolSet]) -> SymbolSet:
  """Returns the symbol set called ``name`` ("characters" or "phonemes")."""
  if isinstance(name, SymbolSet):
    return name
  if name not in _SETS:
    raise ValueError(f"Unknown symbol set {name!r}; choose one of "
                     f"{sorted(_SETS)}.")
  return _SETS[name]


# ---------------------------------------------------------------------------
# Number speller: num2words, with its British "and" and its hyphens and commas
# dropped, so that "121" reads "one hundred twenty one".

_DIGIT_READING_FROM = 10**15  # longer integers are read digit by digit


def _spoken(words: str) -> str:
  return " ".join(w for w in re.split(r"[\s,\-]+", words)
                  if w and w != "and")


def _digits_to_words(digits: str) -> str:
  return " ".join(_spoken(num2words(int(d))) for d in digits)


def number_to_words(n: int) -> str:
  """Spells an integer in English words, as the text frontend reads it.

  Integers of ``10**15`` and above (account numbers, not quantities) are read
  digit by digit. The same speller serves the WER judge (through
  :func:`normalize_words`), so a reference and what was synthesized from it
  spell numbers alike.

  >>> number_to_words(1234)
  'one thousand two hundred thirty four'

  References:
    The num2words package (Python), English converter.
  """
  n = int(n)
  if n < 0:
    return "minus " + number_to_words(-n)
  if n >= _DIGIT_READING_FROM:
    return _digits_to_words(str(n))
  return _spoken(num2words(n))


def ordinal_to_words(n: int) -> str:
  """``21 -> 'twenty first'``."""
  n = int(n)
  if n >= _DIGIT_READING_FROM:  # digit by digit, the last one as an ordinal
    digits = str(n)
    return (_digits_to_words(digits[:-1]) + " "
            + _spoken(num2words(int(digits[-1]), to="ordinal")))
  return _spoken(num2words(n, to="ordinal"))


def year_to_words(n: int) -> str:
  """Reads a year the usual way: 1987 -> nineteen eighty seven, 2005 -> two
  thousand five, 1900 -> nineteen hundred."""
  return _spoken(num2words(int(n), to="year"))


# ---------------------------------------------------------------------------
# Normalization.

_ABBREVIATIONS = [
    (re.compile(r"\b%s\." % abbr, re.IGNORECASE), full)
    for abbr, full in [
        ("mrs", "missus"), ("mr", "mister"), ("dr", "doctor"),
        ("st", "saint"), ("co", "company"), ("jr", "junior"),
        ("maj", "major"), ("gen", "general"), ("drs", "doctors"),
        ("rev", "reverend"), ("lt", "lieutenant"), ("hon", "honorable"),
        ("sgt", "sergeant"), ("capt", "captain"), ("esq", "esquire"),
        ("ltd", "limited"), ("col", "colonel"), ("ft", "fort"),
        ("prof", "professor"), ("vs", "versus"), ("etc", "et cetera"),
        ("no", "number"), ("mt", "mount"), ("ave", "avenue"),
        ("jan", "january"), ("feb", "february"), ("mar", "march"),
        ("apr", "april"), ("jun", "june"), ("jul", "july"),
        ("aug", "august"), ("sept", "september"), ("sep", "september"),
        ("oct", "october"), ("nov", "november"), ("dec", "december"),
    ]
]
# "No." only before a digit means "number".
_ABBREVIATIONS = [(p, f) for p, f in _ABBREVIATIONS if f != "number"]
_NUMBER_ABBR = re.compile(r"\bno\.\s*(?=\d)", re.IGNORECASE)

_TRANSLATE = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2032": "'",
    "\u2013": "-", "\u2014": " - ", "\u2015": " - ", "\u2212": "-",
    "\u2026": "...", "\u00a0": " ", "`": "'",
    "&": " and ", "+": " plus ", "@": " at ", "=": " equals ",
    "(": ", ", ")": ", ", "[": ", ", "]": ", ", "{": ", ", "}": ", ",
    '"': " ", "/": " ", "_": " ", "*": " ", "#": " number ",
}

_MONEY = re.compile(r"([$£€])\s*(\d[\d,]*)(?:\.(\d\d))?\b")
_PERCENT = re.compile(r"(\d[\d,]*(?:\.\d+)?)\s*%")
_ORDINAL = re.compile(r"\b(\d[\d,]*)(st|nd|rd|th)\b", re.IGNORECASE)
_DECIMAL = re.compile(r"\b(\d[\d,]*)\.(\d+)\b")
_YEAR = re.compile(r"\b(1[1-9]\d\d|20\d\d)\b")
_INTEGER = re.compile(r"\d[\d,]*")
_UNITS = {"$": ("dollar", "dollars", "cent", "cents"),
          "£": ("pound", "pounds", "penny", "pence"),
          "€": ("euro", "euros", "cent", "cents")}


def _int(s: str) -> int:
  return int(s.replace(",", ""))


def _money(m: re.Match) -> str:
  one, many, sub_one, sub_many = _UNITS[m.group(1)]
  whole = _int(m.group(2))
  cents = int(m.group(3)) if m.group(3) else 0
  parts = []
  if whole or not cents:
    parts.append(f"{number_to_words(whole)} {one if whole == 1 else many}")
  if cents:
    parts.append(f"{number_to_words(cents)} "
                 f"{sub_one if cents == 1 else sub_many}")
  return " and ".join(parts)


def _decimal(m: re.Match) -> str:
  return (number_to_words(_int(m.group(1))) + " point "
          + _digits_to_words(m.group(2)))


def _expand_numbers(text: str) -> str:
  text = _MONEY.sub(_money, text)
  text = _PERCENT.sub(lambda m: m.group(1) + " percent", text)
  text = _ORDINAL.sub(lambda m: ordinal_to_words(_int(m.group(1))), text)
  text = _DECIMAL.sub(_decimal, text)
  text = _YEAR.sub(lambda m: year_to_words(int(m.group(1))), text)
  text = _INTEGER.sub(lambda m: " " + number_to_words(_int(m.group(0)))
                      + " ", text)
  return text


_KEEP = set(_LETTERS + PUNCTUATION + " ")


def normalize_text(text: str) -> str:
  """Normalizes a transcript for the character and phoneme frontends.

  Steps: Unicode NFKC and typographic punctuation to ASCII; abbreviations
  expanded; numbers, ordinals, decimals, years, money and percentages spelled
  out; accents stripped (``café -> cafe``); lowercase; characters outside
  ``a-z``, space and ``!',-.:;?`` removed; repeated punctuation and
  whitespace collapsed.

  Args:
    text: raw transcript.

  Returns:
    Normalized text (possibly empty; ``text_to_ids`` rejects empty text).
  """
  return _normalize(text)[0]


def _normalize(text: str) -> Tuple[str, list]:
  """``normalize_text`` plus the characters it dropped as unsupported."""
  text = unicodedata.normalize("NFKC", str(text))
  text = "".join(_TRANSLATE.get(c, c) for c in text)
  text = _NUMBER_ABBR.sub("number ", text)
  for pattern, full in _ABBREVIATIONS:
    text = pattern.sub(full, text)
  text = _expand_numbers(text)
  # Strip accents: decompose and drop combining marks.
  text = "".join(c for c in unicodedata.normalize("NFKD", text)
                 if not unicodedata.combining(c))
  text = text.lower()
  dropped = sorted({c for c in text if c not in _KEEP and not c.isspace()})
  text = "".join(c if c in _KEEP else " " for c in text)
  text = re.sub(r"\s+([!',.:;?])", r"\1", text)  # no space before punct
  text = re.sub(r"([!,\-.:;?])[!,\-.:;?]+", r"\1", text)  # collapse runs
  text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)  # quotes, not apostr.
  text = re.sub(r"\s+", " ", text).strip()
  text = re.sub(r"^[!,\-.:;?\s]+", "", text)  # no leading punctuation
  return text, dropped


def normalize_words(text: str) -> str:
  """The words of ``normalize_text(text)``, for scoring recognizer output.

  Punctuation is dropped (apostrophes inside words are kept: "don't"), so
  the word error rate judge compares the words the frontend would have said:
  a reference and a recognizer hypothesis go through the same speller and
  abbreviation list as the text a model was trained on.

  Args:
    text: raw transcript or recognizer output.

  Returns:
    Lowercase space-separated words (possibly empty).
  """
  # Quote marks go first: normalize_text would glue an opening quote to the
  # word before it ("don't 'quote'" -> "don't'quote").
  text = re.sub(r"[\u2018\u2019\u201a\u201b\u2032`]", "'", str(text))
  text = re.sub(r"(?<![^\W\d_])'|'(?![^\W\d_])", " ", text)
  words = re.sub(r"[!,\-.:;?]", " ", normalize_text(text))
  return " ".join(words.split())


# ---------------------------------------------------------------------------
# Phonemizer (espeak-ng).

_ESPEAK_FIX = ("espeak-ng is not installed; install it with "
               "`sudo apt-get install -y espeak-ng` (or use "
               "symbols='characters').")
_PUNCT_SPLIT = re.compile(r"([!,\-.:;?]+)")


def _espeak_binary() -> str:
  exe = shutil.which("espeak-ng")
  if exe is None:
    raise RuntimeError(_ESPEAK_FIX)
  return exe


@functools.lru_cache(maxsize=65536)
def _espeak(chunk: str, voice: str) -> str:
  """IPA of a punctuation-free chunk, words separated by single spaces."""
  if not chunk.strip():
    return ""
  out = subprocess.run([_espeak_binary(), "-q", "--ipa", "-v", voice,
                        "--", chunk], capture_output=True, text=True,
                       check=False)
  if out.returncode != 0:
    raise RuntimeError(f"espeak-ng failed on {chunk!r} (voice {voice}): "
                       f"{out.stderr.strip()}. Check `espeak-ng --voices`.")
  ipa = out.stdout.replace("\u200d", "").replace("\n", " ")
  ipa = re.sub(r"\([a-z\-]+\)", "", ipa)  # language-switch flags "(fr)"
  return re.sub(r"\s+", " ", ipa).strip()


def phonemize(text: str, voice: str = "en-us", normalize: bool = True
             ) -> str:
  """IPA transcription with punctuation kept, via espeak-ng (cached).

  Args:
    text: raw or normalized text.
    voice: espeak-ng voice.
    normalize: run ``normalize_text`` first.

  Returns:
    IPA string, e.g. ``"həlˈoʊ, wˈɜːld."``.

  Raises:
    RuntimeError: espeak-ng missing (message gives the apt-get fix).
  """
  if normalize:
    text = normalize_text(text)
  pieces = []
  for piece in _PUNCT_SPLIT.split(text):
    if not piece:
      continue
    if _PUNCT_SPLIT.fullmatch(piece):
      pieces.append(piece)
    else:
      lead = " " if piece.startswith(" ") else ""
      tail = " " if piece.endswith(" ") else ""
      ipa = _espeak(piece.strip(), voice)
      if ipa:
        pieces.append(lead + ipa + tail)
  return re.sub(r"\s+", " ", "".join(pieces)).strip()


# ---------------------------------------------------------------------------
# Text <-> ids.


def text_to_ids(text: str, symbols: Union[str, SymbolSet] = CHARACTERS,
                add_eos: bool = True) -> np.ndarray:
  """Normalizes text and maps it to symbol ids (0 = pad, 1 = EOS).

  Symbols missing from the set are dropped with a ``UserWarning`` that names
  them; the call never fails on them.

  Args:
    text: raw transcript.
    symbols: a ``SymbolSet`` or its name ("characters" or "phonemes").
    add_eos: append the EOS id.

  Returns:
    int32 ``[L]`` ids (``L`` includes EOS).

  Raises:
    ValueError: the text is empty after normalization (names the text).
  """
  sset = symbol_set(symbols)
  norm, dropped = _normalize(text)
  if not re.search(r"[a-z]", norm):
    raise ValueError(f"Text {text!r} is empty after normalization (no "
                     "letters or numbers to speak); fix or drop this "
                     "transcript.")
  units = phonemize(norm, normalize=False) if sset.name == "phonemes" else norm
  index = sset.index
  ids, unknown = [], list(dropped)
  for c in units:
    i = index.get(c)
    if i is None or i < 2:
      unknown.append(c)
    else:
      ids.append(i)
  if unknown:
    warnings.warn(
        f"Dropped symbols {sorted(set(unknown))!r} not in the {sset.name} "
        f"set while encoding {text!r}.", UserWarning, stacklevel=2)
  if not ids:
    raise ValueError(f"Text {text!r} has no symbols of the {sset.name} set; "
                     "fix or drop this transcript.")
  if add_eos:
    ids.append(sset.eos_id)
  return np.asarray(ids, np.int32)


def ids_to_text(ids: Iterable[int], symbols: Union[str, SymbolSet] = CHARACTERS
               ) -> str:
  """Inverse of ``text_to_ids``: padding skipped, stops at EOS."""
  sset = symbol_set(symbols)
  out = []
  for i in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids
                      ).reshape(-1):
    i = int(i)
    if i == sset.eos_id:
      break
    if i == sset.pad_id:
      continue
    if not 0 <= i < sset.num_symbols:
      raise ValueError(f"ids_to_text: id {i} outside [0, "
                       f"{sset.num_symbols}) of the {sset.name} set.")
    out.append(sset.symbols[i])
  return "".join(out)


def texts_to_batch(texts: Sequence[str], symbols: Union[str, SymbolSet],
                   max_len: int) -> Tuple[np.ndarray, np.ndarray]:
  """Encodes and pads texts: int32 ``[B, max_len]`` ids and ``[B]`` lengths.

  Raises ValueError naming the text if one is longer than ``max_len``.
  """
  out = np.zeros((len(texts), max_len), np.int32)
  lengths = np.zeros((len(texts),), np.int32)
  for b, t in enumerate(texts):
    ids = text_to_ids(t, symbols)
    if ids.shape[0] > max_len:
      raise ValueError(f"Text {t!r} encodes to {ids.shape[0]} symbols > "
                       f"max_len={max_len}; shorten it or raise max_len.")
    out[b, :ids.shape[0]] = ids
    lengths[b] = ids.shape[0]
  return out, lengths
