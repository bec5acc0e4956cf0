"""Tests for metatts.audio.text (normalization, symbol sets, ids)."""

import shutil
import warnings

import numpy as np
import pytest

from metatts.audio import text as T

HAVE_ESPEAK = shutil.which("espeak-ng") is not None


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (21, "twenty one"),
    (40, "forty"), (100, "one hundred"), (101, "one hundred one"),
    (999, "nine hundred ninety nine"), (1000, "one thousand"),
    (1234, "one thousand two hundred thirty four"),
    (1000000, "one million"),
    (2000000017, "two billion seventeen"),
    (10**12, "one trillion"), (10**12 + 21, "one trillion twenty one"),
    (10**15 - 1,
     "nine hundred ninety nine trillion nine hundred ninety nine billion "
     "nine hundred ninety nine million nine hundred ninety nine thousand "
     "nine hundred ninety nine"),
    (10**15, "one " + " ".join(["zero"] * 15)),  # read digit by digit
    (-5, "minus five"),
])
def test_number_to_words(n, words):
  assert T.number_to_words(n) == words


@pytest.mark.parametrize("n, words", [
    (1, "first"), (2, "second"), (3, "third"), (12, "twelfth"),
    (20, "twentieth"), (21, "twenty first"), (100, "one hundredth"),
    (1005, "one thousand fifth"),
    (10**15 + 2, "one " + "zero " * 14 + "second"),
])
def test_ordinals(n, words):
  assert T.ordinal_to_words(n) == words


@pytest.mark.parametrize("n, words", [
    (1987, "nineteen eighty seven"), (1900, "nineteen hundred"),
    (1905, "nineteen oh five"), (2005, "two thousand five"),
    (2019, "twenty nineteen"), (2000, "two thousand"),
])
def test_years(n, words):
  assert T.year_to_words(n) == words


@pytest.mark.parametrize("raw, norm", [
    ("Mr. Smith met Dr. Jones on St. Mary's Ave.",
     "mister smith met doctor jones on saint mary's avenue"),
    ("It cost $3.50, not $1.", "it cost three dollars and fifty cents, not "
     "one dollar."),
    ("About 50% of 1,234 people", "about fifty percent of one thousand two "
     "hundred thirty four people"),
    ("Pi is 3.14", "pi is three point one four"),
    ("On the 21st of Jan. 1987", "on the twenty first of january nineteen "
     "eighty seven"),
    ("\u201cHello\u201d \u2014 she said\u2026 WHAT?!",
     "hello - she said. what?"),
    ("No. 7 Caf\u00e9", "number seven cafe"),
    ("  spaced   out  ", "spaced out"),
    ("Tom & Jerry (again)", "tom and jerry, again,"),
])
def test_normalize_text(raw, norm):
  assert T.normalize_text(raw) == norm


def test_symbol_sets_layout():
  for sset in (T.CHARACTERS, T.PHONEMES):
    assert sset.symbols[0] == T.PAD and sset.symbols[1] == T.EOS
    assert len(set(sset.symbols)) == sset.num_symbols
  assert T.CHARACTERS.num_symbols == 3 + len(T.PUNCTUATION) + 26
  assert T.symbol_set("phonemes") is T.PHONEMES
  with pytest.raises(ValueError, match="characters"):
    T.symbol_set("graphemes")


def test_text_to_ids_roundtrip_and_eos():
  raw = "Hello, Dr. Smith! It's 5 o'clock."
  ids = T.text_to_ids(raw, "characters")
  assert ids.dtype == np.int32 and ids[-1] == T.CHARACTERS.eos_id
  assert np.all(ids[:-1] >= 2)  # no pad / EOS inside
  assert T.ids_to_text(ids) == T.normalize_text(raw)
  # Hand-computed: "hi." -> h, i, '.', EOS with 11 = 3 + len(PUNCTUATION).
  offset = 3 + len(T.PUNCTUATION)
  np.testing.assert_array_equal(
      T.text_to_ids("Hi."),
      [offset + 7, offset + 8, 3 + T.PUNCTUATION.index("."), 1])
  # Padding is skipped, decoding stops at EOS.
  assert T.ids_to_text([offset, 0, offset + 1, 1, offset + 2]) == "ab"


def test_unknown_symbols_warn_and_are_dropped():
  with pytest.warns(UserWarning, match="\u4e2d"):
    ids = T.text_to_ids("hello \u4e2d world")
  assert T.ids_to_text(ids) == "hello world"
  # A symbol set that lacks 'z': dropped with a warning naming 'z'.
  no_z = T.SymbolSet("no_z", tuple(s for s in T.CHARACTERS.symbols
                                   if s != "z"))
  with pytest.warns(UserWarning, match="'z'"):
    ids = T.text_to_ids("zebra", no_z)
  assert T.ids_to_text(ids, no_z) == "ebra"


@pytest.mark.parametrize("raw", ["", "   ", "!!! ...", "\u4e2d\u6587"])
def test_empty_text_raises_naming_it(raw):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    with pytest.raises(ValueError, match="empty after normalization"
                       ) as e:
      T.text_to_ids(raw)
  assert repr(raw) in str(e.value)


def test_texts_to_batch_pads_and_checks_length():
  ids, lengths = T.texts_to_batch(["ab", "abc d"], "characters", 8)
  assert ids.shape == (2, 8)
  np.testing.assert_array_equal(lengths, [3, 6])
  assert np.all(ids[0, 3:] == 0)
  with pytest.raises(ValueError, match="max_len=4"):
    T.texts_to_batch(["hello world"], "characters", 4)


@pytest.mark.skipif(not HAVE_ESPEAK, reason="espeak-ng not installed")
def test_phonemes_via_espeak():
  ipa = T.phonemize("Hello, world.")
  # espeak-ng en-us: həlˈoʊ wˈɜːld ; punctuation is kept between chunks.
  assert ipa == "h\u0259l\u02c8o\u028a, w\u02c8\u025c\u02d0ld."
  ids = T.text_to_ids("Hello, world.", "phonemes")
  assert ids[-1] == 1
  assert T.ids_to_text(ids, "phonemes") == ipa
  # Every IPA character espeak emits for a phonetically rich text is in the
  # set (no warning).
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    T.text_to_ids("The birch canoe slid on the smooth planks; thinking of "
                  "treasure, judge, church, bottle, button, water, nurse, "
                  "father, thought, cure, croissant.", "phonemes")


def test_missing_espeak_gives_apt_get_fix(monkeypatch):
  monkeypatch.setattr(T.shutil, "which", lambda name: None)
  T._espeak.cache_clear()
  with pytest.raises(RuntimeError, match="apt-get install -y espeak-ng"):
    T.text_to_ids("a sentence never phonemized before", "phonemes")
  T._espeak.cache_clear()
