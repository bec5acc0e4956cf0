r"""Embedded multi-speaker corpus built from local speech synthesizers.

No speech corpus can be downloaded on a fresh machine, so metatts builds its
own: a few *base voices* from Debian's synthesizers (flite, festival,
espeak-ng) read sentences from a deterministic sentence generator, and every
base voice becomes many *speakers* through WORLD vocoder perturbations of its
pitch (f0 scale), vocal-tract length (frequency warp of the spectral
envelope), speaking rate (time-scaling of the WORLD frame sequence),
breathiness (raised aperiodicity) and spectral tilt.

Each (base voice, sentence) pair is synthesized and analysed with WORLD once;
the analysis is resynthesized for every speaker of that voice who reads the
sentence. The work is spread over processes, the output is byte-identical for
a given seed, and a build whose parameters hash to the stored value is
skipped.

Output layout (the generic layout of ``metatts.data.corpora.load_generic``)::

  OUT/manifest.json
  OUT/<speaker_id>/<utt_id>.wav   16 kHz mono 16-bit PCM
  OUT/<speaker_id>/<utt_id>.txt   one-line UTF-8 transcript

Usage::

  python -m metatts.data.synth --preset tiny --out /tmp/metatts_tiny
  python -m metatts.data.synth --preset default --out data/synth --seed 0

References:
  M. Morise, F. Yokomori, K. Ozawa. "WORLD: a vocoder-based high-quality
  speech synthesis system for real-time applications." IEICE Trans. Inf. &
  Syst., E99-D(7), 2016.
  M. Morise. "Harvest: A high-performance fundamental frequency estimator
  from speech signals." Interspeech 2017.
  M. Morise. "D4C, a band-aperiodicity estimator for high-quality speech
  synthesis." Speech Communication 84, 2016.
  L. Lee, R. Rose. "A frequency warping approach to speaker normalization."
  IEEE Trans. Speech and Audio Processing 6(1), 1998 (vocal-tract length as a
  linear warp of the frequency axis).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np
import scipy.signal
import soundfile as sf

from metatts.audio import io as aio

with warnings.catch_warnings():
  # pyworld 0.3.5 imports the deprecated pkg_resources.
  warnings.simplefilter("ignore")
  import pyworld

logger = logging.getLogger(__name__)

# Bump when a change in this file changes the bytes a build writes; it is part
# of the build hash, so existing corpora are rebuilt.
CODE_VERSION = 1
# Bump when the timings recorded in the manifest change (they are not part of
# the build hash: an up-to-date corpus gets new timings by a cheap pass that
# re-runs only the base synthesizers, see ``add_timings``).
# 2: flite-kal16 is timed too (its audio ends inside its last pause).
TIMINGS_VERSION = 2
MANIFEST_NAME = "manifest.json"
# Written at the start of a build, removed when the manifest is in place.
MARKER_NAME = ".metatts-build"

# ---------------------------------------------------------------------------
# Base voices.
# ---------------------------------------------------------------------------

# engine -> (binary, Debian packages that provide it).
ENGINES = {
    "flite": ("flite", "flite"),
    "festival": ("text2wave", "festival"),
    "espeak": ("espeak-ng", "espeak-ng"),
}


class BaseVoice(NamedTuple):
  """One synthesizer voice that seeds a family of speakers."""

  engine: str  # key of ENGINES
  voice: str  # engine-specific voice name
  package: str  # Debian package that provides the voice


# Registry of base voices, name -> BaseVoice. Names are folder-safe.
VOICES = {
    "flite-awb": BaseVoice("flite", "awb", "flite"),
    "flite-rms": BaseVoice("flite", "rms", "flite"),
    "flite-slt": BaseVoice("flite", "slt", "flite"),
    "flite-kal16": BaseVoice("flite", "kal16", "flite"),
    "festival-kal": BaseVoice("festival", "kal_diphone", "festvox-kallpc16k"),
    "festival-ked": BaseVoice("festival", "ked_diphone", "festvox-kdlpc16k"),
    "festival-slt-hts": BaseVoice("festival", "cmu_us_slt_arctic_hts",
                                  "festvox-us-slt-hts"),
    "espeak-us-m3": BaseVoice("espeak", "en-us+m3", "espeak-ng"),
    "espeak-gb-f2": BaseVoice("espeak", "en-gb+f2", "espeak-ng"),
    "espeak-us-f4": BaseVoice("espeak", "en-us+f4", "espeak-ng"),
    "espeak-scot-m1": BaseVoice("espeak", "en-gb-scotland+m1", "espeak-ng"),
    "espeak-rp-f3": BaseVoice("espeak", "en-gb-x-rp+f3", "espeak-ng"),
    "espeak-nyc-m7": BaseVoice("espeak", "en-us-nyc+m7", "espeak-ng"),
}


def apt_line(packages: Iterable[str]) -> str:
  """The exact command that installs ``packages``."""
  return "apt-get update && apt-get install -y " + " ".join(
      sorted(set(packages)))


def _voice(name: str) -> BaseVoice:
  if name not in VOICES:
    raise ValueError(
        f"Unknown base voice {name!r}. Known voices: {sorted(VOICES)}; fix "
        "the 'voices' entry of the synth config.")
  return VOICES[name]


@functools.lru_cache(maxsize=4)
def _flite_voices(binary: str) -> frozenset[str]:
  """Voices compiled into ``flite`` (``flite -lv``)."""
  out = subprocess.run([binary, "-lv"], capture_output=True, text=True,
                       timeout=30, check=False).stdout
  return frozenset(out.split(":", 1)[-1].split())


class BaseTimings(NamedTuple):
  """The synthesizer's own timing of one base-voice utterance.

  Times are end times in seconds of the base audio *after* silence trimming
  (``synthesize_base_timed``); a segment starts where the previous one ends
  (the first at 0). Phones are the synthesizer's own phone set (CMU/radio
  phones for flite and festival, ``pau`` for silence).
  """

  words: tuple[str, ...]  # [W] the synthesizer's words (no punctuation)
  word_ends: tuple[float, ...]  # [W] end of each word's last phone
  phones: tuple[str, ...]  # [P] segments, silences ("pau") included
  phone_ends: tuple[float, ...]  # [P] end of each segment


# Engines that report their own segment timings; espeak-ng has no such
# output (its phoneme events come through its C API only, not the CLI).
TIMED_ENGINES = ("flite", "festival")
# The synthesizer's time stamps and its audio may disagree by a few ms (a
# diphone voice fits its targets only to a pitch period). Audio that runs on
# past the last segment end by more, or that stops before the last word has
# ended, is not described by the times: the utterance gets no timings.
# (Audio that stops inside the final pause is fine: flite's diphone voice
# kal16 ends its audio about 0.11 s into a 0.22 s final "pau", while its word
# ends agree with the speech as well as the other voices'.)
_MAX_END_GAP_S = 0.05


def _flite_cmd(binary, voice, txt, wav, with_timings):
  cmd = [binary, "-voice", voice, "-f", txt, "-o", wav]
  return cmd + ["-psdur"] if with_timings else cmd


def _parse_psdur(stdout: str) -> list[tuple[str, float]] | None:
  """``flite -psdur`` output ("name:end ..." per utterance) -> segments."""
  lines = [ln for ln in stdout.splitlines() if ":" in ln]
  if len(lines) != 1:  # several utterances restart the clock; skip them
    return None
  out = []
  for tok in lines[0].split():
    name, _, end = tok.rpartition(":")
    try:
      out.append((name, float(end)))
    except ValueError:
      return None
  return out or None


@functools.lru_cache(maxsize=8)
def _flite_lib(voice: str):
  """(libflite, registered voice pointer) via ctypes, or None.

  The flite CLI prints segment end times but not which word a segment
  belongs to; the same flite library, called through its C API, gives the
  Word relation. Returns None when the shared libraries are missing.
  """
  import ctypes  # pylint: disable=g-import-not-at-top
  import ctypes.util  # pylint: disable=g-import-not-at-top
  try:
    lib = ctypes.CDLL(ctypes.util.find_library("flite") or "libflite.so.1")
    vname = f"cmu_us_{voice}"
    vlib = ctypes.CDLL(ctypes.util.find_library(f"flite_{vname}")
                       or f"libflite_{vname}.so.1")
  except OSError:
    return None
  vp, cp = ctypes.c_void_p, ctypes.c_char_p
  sigs = {"flite_init": (ctypes.c_int, []),
          "flite_synth_text": (vp, [cp, vp]),
          "utt_relation": (vp, [vp, cp]), "relation_head": (vp, [vp]),
          "item_next": (vp, [vp]), "item_feat_string": (cp, [vp, cp]),
          "item_feat_float": (ctypes.c_float, [vp, cp]),
          "ffeature_float": (ctypes.c_float, [vp, cp]),
          "delete_utterance": (None, [vp])}
  try:
    for fn, (res, args) in sigs.items():
      getattr(lib, fn).restype = res
      getattr(lib, fn).argtypes = args
    reg = getattr(vlib, f"register_{vname}")
  except AttributeError:
    return None
  reg.restype, reg.argtypes = vp, [cp]
  lib.flite_init()
  v = reg(None)
  return (lib, v) if v else None


def _flite_words(voice: str, text: str) -> tuple[list, list] | None:
  """flite's (segments [(name, end)], words [(name, end)]) from its C API."""
  handle = _flite_lib(voice)
  if handle is None:
    return None
  lib, v = handle
  utt = lib.flite_synth_text(text.encode("utf-8"), v)
  if not utt:
    return None
  try:
    rel = {}
    for name in (b"Segment", b"Word"):
      items, it = [], lib.relation_head(lib.utt_relation(utt, name))
      while it:
        label = lib.item_feat_string(it, b"name").decode("utf-8", "replace")
        if name == b"Segment":
          end = lib.item_feat_float(it, b"end")
        else:  # a word ends where its last syllable's last segment ends
          end = lib.ffeature_float(
              it, b"R:SylStructure.daughtern.daughtern.end")
        items.append((label, float(end)))
        it = lib.item_next(it)
      rel[name] = items
  finally:
    lib.delete_utterance(utt)
  return rel[b"Segment"], rel[b"Word"]


# Festival: text2wave runs (tts_hooks: utt.synth, save the wave) per
# utterance; composing a hook after utt.synth writes every utterance's
# Segment and Word relations without changing what is saved. If text2wave
# does not look like that, the hook is not installed (no timings).
_FESTIVAL_HOOK = """
(defvar metatts_offset 0.0)
(define (metatts_timing_hook utt)
  (let ((fd (fopen "{path}" "a"))
        (info (wave.info (utt.wave utt))))
    (format fd "U %f\\n" metatts_offset)
    (mapcar (lambda (s) (format fd "S %s %f\\n" (item.name s)
                                (+ metatts_offset (item.feat s "end"))))
            (utt.relation.items utt 'Segment))
    (mapcar (lambda (w)
              (format fd "W %s %f\\n" (item.name w)
                      (+ metatts_offset
                         (item.feat w "R:SylStructure.daughtern.daughtern.end"))))
            (utt.relation.items utt 'Word))
    (fclose fd)
    (set! metatts_offset
          (+ metatts_offset (/ (cadr (assoc 'num_samples info))
                               (cadr (assoc 'sample_rate info))))))
  utt)
(if (and (consp tts_hooks) (eq? (car tts_hooks) utt.synth))
    (set! tts_hooks (cons (lambda (utt) (metatts_timing_hook (utt.synth utt)))
                          (cdr tts_hooks))))
"""


def _parse_festival(path: str) -> tuple[list, list] | None:
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      lines = f.read().splitlines()
  except OSError:
    return None
  segs, words = [], []
  for ln in lines:
    parts = ln.split()
    if len(parts) == 3 and parts[0] in ("S", "W"):
      try:
        (segs if parts[0] == "S" else words).append((parts[1],
                                                     float(parts[2])))
      except ValueError:
        return None
  return (segs, words) if segs and words else None


def _raw_timings(engine: str, voice: str, text: str, stdout: str,
                 festival_path: str) -> tuple[list, list] | None:
  """(segments, words) with end times in seconds of the raw synth output.

  A word ends where its last segment ends: word ends are snapped to the
  nearest segment end (they differ only by print rounding), and timings
  whose words do not end on a segment are dropped.
  """
  raw = (_parse_festival(festival_path) if engine == "festival" else
         _flite_timings(voice, text, stdout))
  if raw is None:
    return None
  segs, words = raw
  seg_ends = np.asarray([e for _, e in segs])
  snapped = []
  for w, e in words:
    k = int(np.argmin(np.abs(seg_ends - e)))
    if abs(seg_ends[k] - e) > 1e-3:
      return None
    snapped.append((w, float(seg_ends[k])))
  return segs, snapped


def _flite_timings(voice: str, text: str, stdout: str
                  ) -> tuple[list, list] | None:
  """flite's segments (from the CLI's ``-psdur``) and words (C API)."""
  segs = _parse_psdur(stdout)
  if segs is None:
    return None
  lib = _flite_words(voice, text)
  if lib is None:
    return None
  lib_segs, words = lib
  # The C API must have made the very utterance the CLI made.
  if ([n for n, _ in lib_segs] != [n for n, _ in segs] or
      max(abs(a - b) for (_, a), (_, b) in zip(lib_segs, segs)) > 1e-3):
    return None
  return segs, words


def synthesize_base_timed(name: str, text: str, sample_rate: int = 16000,
                          timeout: float = 60.0, with_timings: bool = True
                         ) -> tuple[np.ndarray, BaseTimings | None]:
  """Reads ``text`` with base voice ``name``; also returns its timings.

  The audio is exactly ``synthesize_base``'s (the timing outputs do not
  change what the synthesizer writes). Timings come from the synthesizer
  itself: ``flite -psdur`` (segment end times) with the word of each
  segment from flite's C API (the same library, through ctypes), or
  festival's Segment and Word relations (a hook composed after
  ``utt.synth`` in ``text2wave``). espeak-ng voices have none.

  Args:
    name: a key of ``VOICES``.
    text: the sentence.
    sample_rate: output rate; the synthesizer's rate is converted with a
      polyphase filter (linear phase: times are unchanged).
    timeout: seconds before the synthesizer process is killed.
    with_timings: False skips the timing outputs (returns None for them).

  Returns:
    (float64 [S] mono waveform at ``sample_rate`` with leading and trailing
    silence trimmed, ``BaseTimings`` in seconds of that trimmed waveform or
    None when the engine has none or they are not consistent with the
    audio).

  Raises:
    FileNotFoundError: the synthesizer binary is not installed (the message
      holds the apt-get line).
    RuntimeError: the synthesizer failed or produced no audio.
  """
  voice = _voice(name)
  binary, package = ENGINES[voice.engine]
  if shutil.which(binary) is None:
    raise FileNotFoundError(
        f"Synthesizer binary {binary!r} (base voice {name!r}) is not "
        f"installed. Install it with: {apt_line([package, voice.package])}")
  if voice.engine == "flite" and voice.voice not in _flite_voices(binary):
    # flite silently falls back to its default voice for unknown names.
    raise RuntimeError(
        f"flite has no voice {voice.voice!r} (base voice {name!r}); install "
        f"it with: {apt_line([voice.package])}")
  with_timings = with_timings and voice.engine in TIMED_ENGINES
  raw = None
  with tempfile.TemporaryDirectory(prefix="metatts-synth-") as tmp:
    txt = os.path.join(tmp, "in.txt")
    wav = os.path.join(tmp, "out.wav")
    fest_times = os.path.join(tmp, "times.txt")
    with open(txt, "w", encoding="utf-8") as f:
      f.write(text + "\n")
    if voice.engine == "flite":
      cmd = _flite_cmd(binary, voice.voice, txt, wav, with_timings)
    elif voice.engine == "festival":
      cmd = [binary, "-eval", f"(voice_{voice.voice})"]
      if with_timings:
        hook = os.path.join(tmp, "hook.scm")
        with open(hook, "w", encoding="utf-8") as f:
          f.write(_FESTIVAL_HOOK.replace("{path}", fest_times))
        cmd += ["-eval", hook]
      cmd += ["-o", wav, txt]
    else:
      cmd = [binary, "-v", voice.voice, "-w", wav, "-f", txt]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout,
                          check=False)
    # festival reports a missing voice on stderr with exit status 0.
    siod_error = b"SIOD ERROR" in proc.stderr
    if proc.returncode != 0 or siod_error or not os.path.exists(wav):
      if with_timings and voice.engine == "festival":
        # The timing hook must never cost the audio: retry without it.
        return synthesize_base_timed(name, text, sample_rate, timeout,
                                     with_timings=False)
      err = proc.stderr.decode("utf-8", "replace").strip()[-300:]
      raise RuntimeError(
          f"{' '.join(cmd[:3])} failed (exit {proc.returncode}): {err}. "
          f"Check the voice with: {apt_line([package, voice.package])}")
    audio, sr = sf.read(wav, dtype="float64", always_2d=True)
    if with_timings:
      raw = _raw_timings(voice.engine, voice.voice, text,
                         proc.stdout.decode("utf-8", "replace"), fest_times)
  raw_seconds = audio.shape[0] / sr
  audio = audio.mean(axis=1)
  if sr != sample_rate:
    g = math.gcd(int(sr), int(sample_rate))
    audio = scipy.signal.resample_poly(audio, sample_rate // g, sr // g)
  start, stop = trim_bounds(audio, sample_rate)
  audio = audio[start:stop]
  if audio.size < sample_rate // 10:
    raise RuntimeError(f"Base voice {name!r} produced no audio for {text!r}.")
  timings = None
  if (raw is not None and raw[1] and
      raw[1][-1][1] <= raw_seconds <= raw[0][-1][1] + _MAX_END_GAP_S):
    timings = _trim_timings(raw, start / sample_rate,
                            audio.size / sample_rate)
  return audio, timings


def _trim_timings(raw: tuple[list, list], offset: float,
                  duration: float) -> BaseTimings | None:
  """Shifts raw (segments, words) by the trim ``offset`` into [0, duration].

  Segments that end before the cut are dropped, the segment that crosses
  the end is cut there and later ones dropped; word ends are clamped.
  """
  segs, words = raw
  phones, ends = [], []
  for name, end in segs:
    t = end - offset
    if t <= 0.0:
      continue
    phones.append(name)
    ends.append(min(t, duration))
    if t >= duration:
      break
  w_names = [w for w, _ in words]
  w_ends = [min(max(e - offset, 0.0), duration) for _, e in words]
  if not phones or not w_names or np.any(np.diff(w_ends) <= 0):
    return None
  return BaseTimings(tuple(w_names), tuple(w_ends), tuple(phones),
                     tuple(ends))


def synthesize_base(name: str, text: str, sample_rate: int = 16000,
                    timeout: float = 60.0) -> np.ndarray:
  """Reads ``text`` with base voice ``name``.

  Args:
    name: a key of ``VOICES``.
    text: the sentence.
    sample_rate: output rate; the synthesizer's rate is converted with a
      polyphase filter.
    timeout: seconds before the synthesizer process is killed.

  Returns:
    float64 [S] mono waveform at ``sample_rate`` with leading and trailing
    silence trimmed.

  Raises:
    FileNotFoundError: the synthesizer binary is not installed (the message
      holds the apt-get line).
    RuntimeError: the synthesizer failed or produced no audio.
  """
  return synthesize_base_timed(name, text, sample_rate, timeout,
                               with_timings=False)[0]


def trim_bounds(audio: np.ndarray, sample_rate: int, top_db: float = 40.0,
                margin_s: float = 0.05) -> tuple[int, int]:
  """[start, stop) samples kept between leading and trailing silence.

  The library's one trimmer (``metatts.audio.io.trim_bounds``) on
  non-overlapping 10 ms frames with a ``margin_s`` margin: the same bounds
  this builder always cut, so ``CODE_VERSION`` stands.
  """
  return aio.trim_bounds(audio, sample_rate, top_db, frame_ms=10.0,
                         hop_ms=10.0, margin_ms=1000.0 * margin_s)


def probe_voices(names: Sequence[str], sample_rate: int = 16000
                ) -> tuple[list[str], dict[str, str]]:
  """Returns the voices that synthesize here and why the others do not."""
  ok, failed = [], {}
  for name in names:
    try:
      synthesize_base(name, "Hello there.", sample_rate, timeout=30.0)
      ok.append(name)
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired,
            sf.LibsndfileError) as e:
      failed[name] = str(e)
      logger.warning("Skipping base voice %s: %s", name, e)
  return ok, failed


# ---------------------------------------------------------------------------
# Sentences.
# ---------------------------------------------------------------------------

_NAMES = ("Anna", "Peter", "Maria", "Thomas", "Sarah", "David", "Laura",
          "Michael", "Emma", "James", "Lucy", "Daniel", "Clara", "Oliver",
          "Grace", "Henry", "Alice", "Jacob", "Nora", "Samuel")
_PEOPLE = ("farmer", "teacher", "doctor", "driver", "baker", "sailor",
           "painter", "neighbor", "student", "gardener", "pilot", "nurse",
           "writer", "fisherman", "carpenter", "singer", "old man",
           "young woman")
_ADJS = ("old", "small", "heavy", "red", "green", "wooden", "broken", "new",
         "yellow", "empty", "bright", "narrow", "round", "dusty", "shiny",
         "soft", "tall", "blue", "large", "little")
_OBJECTS = ("box", "lamp", "chair", "basket", "kettle", "letter", "bicycle",
            "blanket", "bottle", "candle", "jacket", "ladder", "mirror",
            "notebook", "pillow", "rope", "suitcase", "table", "umbrella",
            "wagon", "bucket", "map", "hammer", "clock", "boat", "apple",
            "envelope", "oven", "engine", "anchor")
# (past tense, base form): transitive verbs that fit every object above.
_VERBS = (("carried", "carry"), ("painted", "paint"), ("found", "find"),
          ("cleaned", "clean"), ("moved", "move"), ("sold", "sell"),
          ("bought", "buy"), ("washed", "wash"), ("dropped", "drop"),
          ("fixed", "fix"), ("borrowed", "borrow"), ("hid", "hide"),
          ("lifted", "lift"), ("checked", "check"), ("covered", "cover"),
          ("packed", "pack"), ("pulled", "pull"), ("pushed", "push"),
          ("wrapped", "wrap"), ("noticed", "notice"), ("kept", "keep"),
          ("measured", "measure"))
_PLACES = ("near the river", "in the kitchen", "behind the house",
           "on the porch", "at the station", "under the bridge",
           "by the window", "in the garden", "across the street",
           "at the market", "beside the old barn", "on the hill",
           "in the cellar", "next to the door", "at the harbor",
           "in the attic")
_TIMES = ("yesterday", "this morning", "last night", "before dinner",
          "after the storm", "on Sunday", "early in the morning",
          "an hour ago", "during the rain", "last winter", "after lunch",
          "at noon")
_MANNER = ("quickly", "slowly", "carefully", "quietly", "proudly", "finally")
_STATES = ("ready", "missing", "too heavy", "still wet", "almost new",
           "far too small", "clean again", "quite expensive", "very old",
           "ready to use")
_POSSESSIVES = ("the", "the", "a", "her", "his", "our", "my", "their")


def _article(word: str) -> str:
  return "an" if word[0] in "aeiou" else "a"


def _np(rng: np.random.Generator, adj_p: float = 0.6) -> list[str]:
  """A noun phrase naming an object: determiner, optional adjective, noun."""
  noun = _OBJECTS[rng.integers(len(_OBJECTS))]
  words = [noun]
  if rng.random() < adj_p:
    words.insert(0, _ADJS[rng.integers(len(_ADJS))])
  det = _POSSESSIVES[rng.integers(len(_POSSESSIVES))]
  if det == "a":
    det = _article(words[0])
  return [det] + words


def _subject(rng: np.random.Generator) -> list[str]:
  if rng.random() < 0.45:
    return [_NAMES[rng.integers(len(_NAMES))]]
  return ["the"] + _PEOPLE[rng.integers(len(_PEOPLE))].split()


def _pick(rng, options) -> list[str]:
  return options[rng.integers(len(options))].split()


def _maybe(rng, p, options) -> list[str]:
  return _pick(rng, options) if rng.random() < p else []


def _sentence(rng: np.random.Generator) -> str:
  """One sentence from one of ten templates (past tense keeps agreement)."""
  t = int(rng.integers(10))
  past, base = _VERBS[rng.integers(len(_VERBS))]
  end = "."
  if t == 0:
    w = (_subject(rng) + [past] + _np(rng) + _maybe(rng, 0.6, _PLACES) +
         _maybe(rng, 0.4, _TIMES))
  elif t == 1:
    w = (_subject(rng) + _pick(rng, _MANNER) + [past] + _np(rng) +
         _maybe(rng, 0.5, _PLACES))
  elif t == 2:
    w = ["did"] + _subject(rng) + [base] + _np(rng) + _maybe(
        rng, 0.5, _PLACES)
    end = "?"
  elif t == 3:
    w = ["please"] + [base] + _np(rng) + _maybe(rng, 0.6, _PLACES)
  elif t == 4:
    w = _subject(rng) + ["said", "that"] + _np(rng) + ["was"] + _pick(
        rng, _STATES)
  elif t == 5:
    adj = _ADJS[rng.integers(len(_ADJS))]
    noun = _OBJECTS[rng.integers(len(_OBJECTS))]
    w = ["there", "was", _article(adj), adj, noun] + _pick(rng, _PLACES)
  elif t == 6:
    past2 = _VERBS[rng.integers(len(_VERBS))][0]
    w = (_pick(rng, _TIMES) + [","] + _subject(rng) + [past] + _np(rng, 0.3) +
         ["and", past2] + _np(rng, 0.3))
  elif t == 7:
    w = ["where", "did"] + _subject(rng) + [base] + _np(rng) + _maybe(
        rng, 0.4, _TIMES)
    end = "?"
  elif t == 8:
    w = _subject(rng) + ["wanted", "to", base] + _np(rng) + _maybe(
        rng, 0.5, _TIMES)
  else:
    w = ["the"] + _pick(rng, _OBJECTS) + _pick(rng, _PLACES) + ["was"] + _pick(
        rng, _STATES)
  text = " ".join(w).replace(" ,", ",")
  return text[0].upper() + text[1:] + end


def word_count(text: str) -> int:
  """Number of words (punctuation is not a word)."""
  return sum(1 for w in text.split() if any(c.isalpha() for c in w))


def generate_sentences(n: int, seed: int = 0, min_words: int = 4,
                       max_words: int = 14) -> list[str]:
  """Distinct English sentences from templates x vocabulary.

  Args:
    n: how many sentences.
    seed: the same seed gives the same list.
    min_words: shortest sentence, in words.
    max_words: longest sentence, in words.

  Returns:
    ``n`` distinct sentences, each with ``min_words..max_words`` words.

  Raises:
    ValueError: the length range admits too few distinct sentences.
  """
  if not 1 <= min_words <= max_words:
    raise ValueError(
        f"Sentence length range [{min_words}, {max_words}] is empty; set "
        "min_words <= max_words (both >= 1).")
  rng = np.random.default_rng([seed, 7])
  out, seen = [], set()
  tries = 0
  while len(out) < n:
    tries += 1
    if tries > 200 * n + 10000:
      raise ValueError(
          f"Only {len(out)} distinct sentences of {min_words}-{max_words} "
          f"words could be generated, {n} were asked for; widen the word "
          "range or lower the number of sentences.")
    s = _sentence(rng)
    if s in seen or not min_words <= word_count(s) <= max_words:
      continue
    seen.add(s)
    out.append(s)
  return out


# ---------------------------------------------------------------------------
# WORLD analysis and perturbation.
# ---------------------------------------------------------------------------


class WorldFeatures(NamedTuple):
  """WORLD parameters of one utterance (``F`` frames, ``D = fft/2+1`` bins)."""

  f0: np.ndarray  # float64 [F]     Hz, 0 = unvoiced
  sp: np.ndarray  # float64 [F, D]  smoothed power spectral envelope
  ap: np.ndarray  # float64 [F, D]  aperiodicity in [0, 1]


class Perturbation(NamedTuple):
  """The voice transform that turns a base voice into a speaker."""

  f0_scale: float = 1.0  # multiplies f0
  warp: float = 1.0  # > 1 shifts formants up (shorter vocal tract)
  rate: float = 1.0  # > 1 speaks faster
  breathiness: float = 0.0  # in [0, 1): floor raised on aperiodicity
  tilt: float = 0.0  # dB per octave around 1 kHz (< 0 darker)


def analyze(audio: np.ndarray, sample_rate: int, frame_period: float = 5.0,
            f0_method: str = "dio") -> WorldFeatures:
  """WORLD analysis: f0 (DIO + StoneMask or Harvest), CheapTrick, D4C.

  Args:
    audio: float [S] waveform.
    sample_rate: Hz.
    frame_period: ms between frames.
    f0_method: "dio" (fast) or "harvest" (robust, about 5x slower).

  Returns:
    The ``WorldFeatures`` of ``audio``.
  """
  x = np.ascontiguousarray(audio, dtype=np.float64)
  if f0_method == "dio":
    f0, t = pyworld.dio(x, sample_rate, frame_period=frame_period,
                        f0_floor=60.0, f0_ceil=500.0)
    f0 = pyworld.stonemask(x, f0, t, sample_rate)
  elif f0_method == "harvest":
    f0, t = pyworld.harvest(x, sample_rate, frame_period=frame_period,
                            f0_floor=60.0, f0_ceil=500.0)
  else:
    raise ValueError(f"Unknown f0_method {f0_method!r}; use 'dio' or "
                     "'harvest'.")
  sp = pyworld.cheaptrick(x, f0, t, sample_rate)
  ap = pyworld.d4c(x, f0, t, sample_rate)
  return WorldFeatures(f0, sp, ap)


def _world_frames(num_samples: int, sample_rate: int,
                  frame_period: float) -> int:
  """Frames WORLD's f0 estimators (DIO, Harvest) return for a clip."""
  return int(1000.0 * num_samples / sample_rate / frame_period) + 1


def _scaled_frames(n: int, rate: float) -> int:
  """Frames after ``_time_scale`` of ``n`` frames by ``rate``."""
  m = max(2, int(round(n / rate)))
  return n if n < 2 else m


def _synth_samples(n_frames: int, sample_rate: int,
                   frame_period: float) -> int:
  """Samples ``pyworld.synthesize`` writes for ``n_frames`` frames."""
  return int(n_frames * frame_period * sample_rate / 1000.0)


def clip_timings(base: BaseTimings, n_frames: int, rate: float,
                 clip_seconds: float) -> dict:
  """Maps base-voice timings onto a perturbed speaker's clip.

  The only perturbation that moves time is the rate change: ``_time_scale``
  resamples the ``n`` WORLD frames (frame ``i`` at ``i`` frame periods) to
  ``m`` frames by linear interpolation of the frame index, so source time
  ``t`` lands at ``t (m - 1) / (n - 1)``. Pitch, warp, breathiness, tilt and
  the loudness gain do not move time, and nothing is trimmed after the
  resynthesis (the base audio was trimmed before the analysis, which
  ``BaseTimings`` already accounts for).

  Args:
    base: timings in seconds of the trimmed base audio.
    n_frames: WORLD frames of the base audio's analysis.
    rate: the speaker's ``Perturbation.rate``.
    clip_seconds: duration of the written clip (times are clamped to it).

  Returns:
    The manifest record: ``words``, ``word_ends``, ``phones``,
    ``phone_ends`` (seconds of the clip, 0.1 ms resolution).
  """
  m = _scaled_frames(n_frames, rate)
  scale = (m - 1) / (n_frames - 1) if m != n_frames else 1.0
  def mapped(ts):
    return [round(min(t * scale, clip_seconds), 4) for t in ts]
  return {"words": list(base.words), "word_ends": mapped(base.word_ends),
          "phones": list(base.phones), "phone_ends": mapped(base.phone_ends)}


def _time_scale(feat: WorldFeatures, rate: float) -> WorldFeatures:
  """Resamples the frame sequence to ``F / rate`` frames.

  Envelopes are interpolated linearly in the log domain, aperiodicity
  linearly, f0 log-linearly between voiced frames and by the nearest frame
  at voicing boundaries (so no pitch glides into unvoiced regions).
  """
  n = feat.f0.shape[0]
  m = _scaled_frames(n, rate)
  if m == n:
    return feat
  pos = np.linspace(0.0, n - 1, m)  # [m]
  lo = np.minimum(np.floor(pos).astype(np.int64), n - 2)
  w = (pos - lo)[:, None]  # [m, 1]
  hi = lo + 1
  log_sp = np.log(feat.sp)
  sp = np.exp(log_sp[lo] * (1 - w) + log_sp[hi] * w)
  ap = feat.ap[lo] * (1 - w) + feat.ap[hi] * w
  f_lo, f_hi = feat.f0[lo], feat.f0[hi]
  both = (f_lo > 0) & (f_hi > 0)
  wf = w[:, 0]
  nearest = np.where(wf < 0.5, f_lo, f_hi)
  with np.errstate(divide="ignore"):
    glide = np.exp(np.log(np.where(both, f_lo, 1.0)) * (1 - wf) +
                   np.log(np.where(both, f_hi, 1.0)) * wf)
  f0 = np.where(both, glide, nearest)
  return WorldFeatures(f0, sp, ap)


def _freq_warp(x: np.ndarray, alpha: float, log: bool) -> np.ndarray:
  """out[:, k] = x[:, k / alpha] (linear interpolation, clamped at Nyquist)."""
  d = x.shape[1]
  src = np.minimum(np.arange(d) / alpha, d - 1)  # [D]
  lo = np.minimum(np.floor(src).astype(np.int64), d - 2)
  w = src - lo
  y = np.log(x) if log else x
  out = y[:, lo] * (1 - w) + y[:, lo + 1] * w
  return np.exp(out) if log else out


def perturb(feat: WorldFeatures, p: Perturbation,
            sample_rate: int) -> WorldFeatures:
  """Applies a speaker transform to WORLD features.

  Args:
    feat: analysis of the base-voice utterance.
    p: the transform.
    sample_rate: Hz (for the frequency axis of the envelope).

  Returns:
    Transformed ``WorldFeatures`` (``F / p.rate`` frames).
  """
  feat = _time_scale(feat, p.rate)
  f0 = feat.f0 * p.f0_scale
  sp, ap = feat.sp, feat.ap
  if p.warp != 1.0:
    sp = _freq_warp(sp, p.warp, log=True)
    ap = _freq_warp(ap, p.warp, log=False)
  d = sp.shape[1]
  freqs = np.arange(d) * (sample_rate / 2) / (d - 1)  # [D] Hz
  if p.tilt != 0.0:
    gain_db = p.tilt * np.log2(np.maximum(freqs, 100.0) / 1000.0)
    sp = sp * 10.0**(gain_db / 10.0)[None, :]
  if p.breathiness > 0.0:
    # More noise at high frequencies, as in breathy phonation.
    floor = p.breathiness * np.clip(freqs / 4000.0, 0.25, 1.0)  # [D]
    ap = 1.0 - (1.0 - ap) * (1.0 - floor[None, :])
  return WorldFeatures(np.ascontiguousarray(f0), np.ascontiguousarray(sp),
                       np.ascontiguousarray(np.clip(ap, 0.0, 1.0)))


def resynthesize(feat: WorldFeatures, sample_rate: int,
                 frame_period: float = 5.0) -> np.ndarray:
  """WORLD synthesis of ``feat`` -> float64 [S] waveform."""
  return pyworld.synthesize(feat.f0, feat.sp, feat.ap, sample_rate,
                            frame_period)


def normalize_loudness(audio: np.ndarray, sample_rate: int,
                       target_dbfs: float = -20.0,
                       peak: float = 0.97) -> np.ndarray:
  """Scales the RMS of the active (non-silent) frames to ``target_dbfs``.

  The gain is lowered if the peak would exceed ``peak``, so nothing clips.
  """
  hop = max(1, int(0.01 * sample_rate))
  n = audio.size // hop
  if n == 0:
    return audio
  frames = np.mean(audio[:n * hop].reshape(n, hop)**2, axis=1)
  active = frames[frames > frames.max() * 1e-4]
  rms = math.sqrt(float(active.mean())) if active.size else 0.0
  if rms <= 0.0:
    return audio
  gain = 10.0**(target_dbfs / 20.0) / rms
  gain = min(gain, peak / max(float(np.abs(audio).max()), 1e-9))
  return audio * gain


def to_pcm16(audio: np.ndarray) -> np.ndarray:
  return np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)


# ---------------------------------------------------------------------------
# Configuration and presets.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SynthConfig:
  """Everything that determines a synthetic corpus (hashed for caching).

  Speakers of a seen base voice: ``train_per_voice`` with perturbation values
  from the training grids (``f0_scales``, ``warps``, ...) and
  ``heldout_seen_per_voice`` with values from the ``*_heldout`` grids, which
  interleave the training ones. ``heldout_voice`` (never in training) gets
  ``unseen_speakers`` speakers from the training grids. Within a voice, no two
  speakers share an (f0 scale, warp) pair.
  """

  name: str = "synth"
  voices: tuple[str, ...] = ("flite-awb", "flite-slt", "espeak-us-m3")
  heldout_voice: str = "espeak-us-m3"
  n_sentences: int = 300  # global sentence pool
  sentences_per_voice: int = 60  # each voice reads a subset of the pool
  min_words: int = 4
  max_words: int = 14
  train_per_voice: int = 3
  heldout_seen_per_voice: int = 1
  unseen_speakers: int = 4
  utts_per_speaker: tuple[int, int] = (8, 8)  # inclusive range
  f0_scales: tuple[float, ...] = (0.8, 0.9, 1.0, 1.12, 1.25)
  f0_scales_heldout: tuple[float, ...] = (0.85, 1.18)
  warps: tuple[float, ...] = (0.88, 0.94, 1.0, 1.06, 1.12)
  warps_heldout: tuple[float, ...] = (0.91, 1.09)
  rates: tuple[float, ...] = (0.85, 1.0, 1.15)
  rates_heldout: tuple[float, ...] = (0.92, 1.08)
  breathiness: tuple[float, ...] = (0.0, 0.2, 0.4)
  breathiness_heldout: tuple[float, ...] = (0.1, 0.3)
  tilts: tuple[float, ...] = (-3.0, 0.0, 3.0)
  tilts_heldout: tuple[float, ...] = (-1.5, 1.5)
  sample_rate: int = 16000
  # 10 ms frames: 2.5x cheaper analysis than 5 ms, no audible loss here.
  frame_period: float = 10.0
  f0_method: str = "dio"
  target_dbfs: float = -20.0


PRESETS = {
    # 3 voices x 4 speakers x 8 short utterances: < 1 minute on 2 cores.
    "tiny": SynthConfig(
        name="synth-tiny",
        voices=("flite-awb", "flite-slt", "espeak-us-m3"),
        heldout_voice="espeak-us-m3",
        n_sentences=40, sentences_per_voice=12, min_words=4, max_words=8,
        train_per_voice=3, heldout_seen_per_voice=1, unseen_speakers=4,
        utts_per_speaker=(8, 8)),
    # 13 voices: 12 seen x (7 train + 2 heldout_seen) + 8 unseen = 116
    # speakers, 20-40 clips each (about 3500 clips).
    "default": SynthConfig(
        name="synth-default",
        voices=tuple(VOICES),
        heldout_voice="flite-rms",
        n_sentences=500, sentences_per_voice=50, min_words=4, max_words=14,
        train_per_voice=7, heldout_seen_per_voice=2, unseen_speakers=8,
        utts_per_speaker=(20, 40)),
}


def get_config(preset_or_config: Any) -> SynthConfig:
  """A ``SynthConfig`` from a preset name, a config, or a mapping.

  Args:
    preset_or_config: a key of ``PRESETS``, a ``SynthConfig``, or a mapping
      (dict, ``ml_collections.ConfigDict``) of ``SynthConfig`` fields, applied
      over the defaults.

  Returns:
    The validated config.
  """
  if isinstance(preset_or_config, str):
    if preset_or_config not in PRESETS:
      raise ValueError(f"Unknown synth preset {preset_or_config!r}; choose "
                       f"one of {sorted(PRESETS)}.")
    cfg = PRESETS[preset_or_config]
  elif isinstance(preset_or_config, SynthConfig):
    cfg = preset_or_config
  elif hasattr(preset_or_config, "items"):
    items = dict(preset_or_config.items())
    fields = {f.name for f in dataclasses.fields(SynthConfig)}
    unknown = sorted(set(items) - fields)
    if unknown:
      raise ValueError(f"Unknown synth config keys {unknown}; valid keys: "
                       f"{sorted(fields)}.")
    for k, v in items.items():
      if isinstance(v, list):
        items[k] = tuple(v)
    cfg = SynthConfig(**items)
  else:
    raise ValueError(
        f"Expected a preset name, SynthConfig or mapping, got "
        f"{type(preset_or_config).__name__}.")
  _validate(cfg)
  return cfg


def _validate(cfg: SynthConfig) -> None:
  for v in cfg.voices:
    _voice(v)
  if cfg.heldout_voice not in cfg.voices:
    raise ValueError(f"heldout_voice {cfg.heldout_voice!r} is not in voices "
                     f"{list(cfg.voices)}; add it or pick one of them.")
  lo, hi = cfg.utts_per_speaker
  if not 1 <= lo <= hi:
    raise ValueError(f"utts_per_speaker={cfg.utts_per_speaker} must be a "
                     "(min, max) pair with 1 <= min <= max.")
  if hi > cfg.sentences_per_voice:
    raise ValueError(
        f"utts_per_speaker max {hi} exceeds sentences_per_voice "
        f"{cfg.sentences_per_voice}: a speaker never repeats a sentence, so "
        "raise sentences_per_voice.")
  if cfg.sentences_per_voice > cfg.n_sentences:
    raise ValueError(f"sentences_per_voice {cfg.sentences_per_voice} > "
                     f"n_sentences {cfg.n_sentences}; raise n_sentences.")
  n_train = len(cfg.f0_scales) * len(cfg.warps)
  n_held = len(cfg.f0_scales_heldout) * len(cfg.warps_heldout)
  if max(cfg.train_per_voice, cfg.unseen_speakers) > n_train:
    raise ValueError(
        f"{max(cfg.train_per_voice, cfg.unseen_speakers)} speakers per voice "
        f"but only {n_train} distinct (f0_scales x warps) pairs; add grid "
        "values or lower train_per_voice / unseen_speakers.")
  if cfg.heldout_seen_per_voice > n_held:
    raise ValueError(
        f"heldout_seen_per_voice {cfg.heldout_seen_per_voice} > {n_held} "
        "(f0_scales_heldout x warps_heldout) pairs; add heldout grid values.")
  overlap = set(cfg.f0_scales) & set(cfg.f0_scales_heldout) | (
      set(cfg.warps) & set(cfg.warps_heldout))
  if overlap:
    raise ValueError(f"Heldout f0/warp values {sorted(overlap)} also appear "
                     "in the training grids; heldout_seen speakers must use "
                     "unseen values.")
  if cfg.f0_method not in ("dio", "harvest"):
    raise ValueError(f"f0_method {cfg.f0_method!r}: use 'dio' or 'harvest'.")


def config_hash(cfg: SynthConfig, seed: int, voices: Sequence[str]) -> str:
  """sha256 of everything that determines the corpus bytes."""
  blob = json.dumps(
      {"config": dataclasses.asdict(cfg), "seed": seed,
       "voices_available": list(voices), "code_version": CODE_VERSION},
      sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------------------
# Planning: speakers, perturbations, reading lists.
# ---------------------------------------------------------------------------


class SpeakerPlan(NamedTuple):
  speaker_id: str
  voice: str
  split: str
  perturbation: Perturbation
  sentences: tuple[int, ...]  # indices into the global sentence pool


def plan_speakers(cfg: SynthConfig, voices: Sequence[str],
                  seed: int) -> list[SpeakerPlan]:
  """Deterministic speakers and reading lists for the available voices.

  Random streams are keyed by the voice's position in ``cfg.voices`` (not in
  ``voices``), so a voice that is missing here does not change the others.
  """
  plans = []
  for v in voices:
    vi = cfg.voices.index(v)
    rng = np.random.default_rng([seed, 1, vi])
    pool = np.sort(rng.choice(cfg.n_sentences, cfg.sentences_per_voice,
                              replace=False))
    groups = []
    if v == cfg.heldout_voice:
      groups.append(("heldout_unseen", cfg.unseen_speakers, False))
    else:
      groups.append(("train", cfg.train_per_voice, False))
      groups.append(("heldout_seen", cfg.heldout_seen_per_voice, True))
    k = 0
    for split, count, held in groups:
      f0s = cfg.f0_scales_heldout if held else cfg.f0_scales
      warps = cfg.warps_heldout if held else cfg.warps
      rates = cfg.rates_heldout if held else cfg.rates
      breath = cfg.breathiness_heldout if held else cfg.breathiness
      tilts = cfg.tilts_heldout if held else cfg.tilts
      pairs = [(f, w) for f in f0s for w in warps]
      chosen = rng.permutation(len(pairs))[:count]
      for j in chosen:
        f0, warp = pairs[j]
        p = Perturbation(
            f0_scale=float(f0), warp=float(warp),
            rate=float(rates[rng.integers(len(rates))]),
            breathiness=float(breath[rng.integers(len(breath))]),
            tilt=float(tilts[rng.integers(len(tilts))]))
        lo, hi = cfg.utts_per_speaker
        n = int(rng.integers(lo, hi + 1))
        sents = tuple(int(s) for s in np.sort(rng.choice(pool, n,
                                                         replace=False)))
        plans.append(SpeakerPlan(f"{v}_{k:02d}", v, split, p, sents))
        k += 1
  return plans


# ---------------------------------------------------------------------------
# Build.
# ---------------------------------------------------------------------------


class _Job(NamedTuple):
  voice: str
  sentence_id: int
  text: str
  # (speaker_id, utt_id, Perturbation)
  targets: tuple[tuple[str, str, Perturbation], ...]
  out_dir: str
  sample_rate: int
  frame_period: float
  f0_method: str
  target_dbfs: float


def _run_job(job: _Job) -> tuple[int, str | None, dict]:
  """Synthesizes, analyses once, writes every speaker's version.

  Returns:
    (number of files written, error message or None, utt_id -> timing
    record for the clips whose synthesizer reports timings).
  """
  try:
    audio, base = synthesize_base_timed(job.voice, job.text, job.sample_rate)
    feat = analyze(audio, job.sample_rate, job.frame_period, job.f0_method)
  except Exception as e:  # pylint: disable=broad-except
    return 0, f"{job.voice} / {job.text!r}: {e}", {}
  written, timings = 0, {}
  for speaker_id, utt_id, p in job.targets:
    y = resynthesize(perturb(feat, p, job.sample_rate), job.sample_rate,
                     job.frame_period)
    y = normalize_loudness(y, job.sample_rate, job.target_dbfs)
    base_path = os.path.join(job.out_dir, speaker_id, utt_id)
    sf.write(base_path + ".wav", to_pcm16(y), job.sample_rate,
             subtype="PCM_16")
    with open(base_path + ".txt", "w", encoding="utf-8") as f:
      f.write(job.text + "\n")
    written += 1
    if base is not None:
      timings[utt_id] = {"speaker": speaker_id, **clip_timings(
          base, feat.f0.shape[0], p.rate, y.size / job.sample_rate)}
  return written, None, timings


def _run_timing_job(job: _Job, verify_bytes: bool = False
                   ) -> tuple[str, int, list[str], dict]:
  """Timings for the clips of an existing build, without resynthesizing.

  The base synthesizer runs again (it is deterministic), and every clip's
  length must equal what the WORLD resynthesis of that base audio writes;
  with ``verify_bytes`` the first clip is also resynthesized and compared
  byte for byte.

  Returns:
    (base voice, clips checked, problems, utt_id -> timing record).
  """
  try:
    audio, base = synthesize_base_timed(job.voice, job.text, job.sample_rate)
  except Exception as e:  # pylint: disable=broad-except
    return job.voice, 0, [f"{job.voice} / {job.text!r}: {e}"], {}
  n = _world_frames(audio.size, job.sample_rate, job.frame_period)
  problems, timings, checked = [], {}, 0
  for k, (speaker_id, utt_id, p) in enumerate(job.targets):
    path = os.path.join(job.out_dir, speaker_id, utt_id + ".wav")
    try:
      frames = sf.info(path).frames
    except (OSError, RuntimeError) as e:
      problems.append(f"{path}: {e}")
      continue
    expected = _synth_samples(_scaled_frames(n, p.rate), job.sample_rate,
                              job.frame_period)
    if frames != expected:
      problems.append(f"{path}: {frames} samples, the base synthesizer now "
                      f"gives {expected}")
      continue
    if verify_bytes and k == 0:
      feat = analyze(audio, job.sample_rate, job.frame_period, job.f0_method)
      y = normalize_loudness(resynthesize(perturb(feat, p, job.sample_rate),
                                          job.sample_rate, job.frame_period),
                             job.sample_rate, job.target_dbfs)
      stored, _ = sf.read(path, dtype="int16")
      if not np.array_equal(stored, to_pcm16(y)):
        problems.append(f"{path}: resynthesis differs from the stored clip")
        continue
    checked += 1
    if base is not None:
      timings[utt_id] = {"speaker": speaker_id, **clip_timings(
          base, n, p.rate, frames / job.sample_rate)}
  return job.voice, checked, problems, timings


def _run_timing_job_verified(job: _Job):
  return _run_timing_job(job, verify_bytes=True)


def _read_json(path: str) -> dict | None:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _is_complete(out_dir: str, manifest: dict) -> bool:
  for spk, meta in manifest.get("speakers", {}).items():
    d = os.path.join(out_dir, spk)
    if not os.path.isdir(d):
      return False
    n = sum(1 for f in os.listdir(d) if f.endswith(".wav"))
    if n != meta.get("n_utterances", -1):
      return False
  return True


def _clear_previous(out_dir: str) -> None:
  """Removes speaker folders of an earlier build (only those it listed)."""
  old = set()
  for name in (MANIFEST_NAME, MARKER_NAME):
    doc = _read_json(os.path.join(out_dir, name)) or {}
    spk = doc.get("speakers", {})
    old.update(spk if isinstance(spk, (dict, list)) else [])
  for spk in sorted(old):
    d = os.path.join(out_dir, spk)
    if os.path.isdir(d) and os.path.dirname(os.path.abspath(d)) == \
        os.path.abspath(out_dir):
      shutil.rmtree(d)
  for name in (MANIFEST_NAME, MARKER_NAME):
    p = os.path.join(out_dir, name)
    if os.path.exists(p):
      os.remove(p)


def _jax_running() -> bool:
  """True once JAX has started its (multithreaded) runtime in this process."""
  bridge = sys.modules.get("jax._src.xla_bridge")
  return bool(getattr(bridge, "_backends", None))


def _pool_context():
  """A multiprocessing context that is safe here (None: run in-process).

  Workers only run numpy, pyworld and subprocesses. ``fork`` is cheapest, but
  forking a process whose JAX runtime threads are running can deadlock; then
  a ``forkserver`` (a clean single-threaded server that imported this module
  once) forks the workers instead.
  """
  methods = multiprocessing.get_all_start_methods()
  if "fork" in methods and not _jax_running():
    return multiprocessing.get_context("fork")
  main_file = getattr(sys.modules.get("__main__"), "__file__", None)
  if main_file is not None and not os.path.isfile(main_file):
    # forkserver/spawn workers re-import the main module from its file; a
    # script read from stdin cannot be, and the pool would respawn forever.
    return None
  if "forkserver" in methods:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["metatts.data.synth"])
    return ctx
  return multiprocessing.get_context("spawn")


def _jobs(cfg: SynthConfig, seed: int, plans: Sequence[SpeakerPlan],
          out_dir: str) -> list[_Job]:
  """One job per (voice, sentence): analysed once, resynthesized per reader."""
  sentences = generate_sentences(cfg.n_sentences, seed, cfg.min_words,
                                 cfg.max_words)
  readers: dict[tuple[str, int], list] = {}
  for p in plans:
    for s in p.sentences:
      readers.setdefault((p.voice, s), []).append(
          (p.speaker_id, f"{p.speaker_id}_{s:04d}", p.perturbation))
  jobs = [
      _Job(v, s, sentences[s], tuple(t), out_dir, cfg.sample_rate,
           cfg.frame_period, cfg.f0_method, cfg.target_dbfs)
      for (v, s), t in sorted(readers.items())
  ]
  # Big jobs first so the pool's tail is short.
  jobs.sort(key=lambda j: (-len(j.targets), j.voice, j.sentence_id))
  return jobs


class _NoBar:
  def update(self, n):
    del n


@contextlib.contextmanager
def _progress(total: int, desc: str, enabled: bool):
  try:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:  # pragma: no cover
    yield _NoBar()
    return
  bar = tqdm(total=total, desc=desc, unit="clip", disable=not enabled)
  try:
    yield bar
  finally:
    bar.close()


def _imap(fn, jobs: Sequence, workers: int | None):
  """Yields ``fn(job)`` for every job (unordered) from a worker pool."""
  workers = workers or os.cpu_count() or 1
  ctx = _pool_context() if workers > 1 else None
  if workers > 1 and ctx is None:
    logger.warning("JAX is running and the main script (%s) cannot be "
                   "re-imported by worker processes; building in-process.",
                   getattr(sys.modules["__main__"], "__file__", "?"))
  if ctx is None:
    yield from map(fn, jobs)
    return
  pool = ctx.Pool(workers)
  try:
    yield from pool.imap_unordered(fn, jobs, chunksize=1)
  except BaseException:
    pool.terminate()  # Ctrl-C or a crash: stop the workers now.
    pool.join()
    pool = None
    raise
  finally:
    if pool is not None:
      pool.close()
      pool.join()


def _set_timings(manifest: dict, timings: dict, n_clips: int,
                 problems: list[str]) -> None:
  """Stores per-utterance timing records and their summary in the manifest."""
  manifest["utterances"] = dict(sorted(timings.items()))
  manifest["timings"] = {
      "version": TIMINGS_VERSION,
      "units": "seconds of the clip (end times)",
      "engines": list(TIMED_ENGINES),
      "utterances_with_timings": len(timings),
      "utterances_without": n_clips - len(timings),
      "voices_with_timings": sorted({
          manifest["speakers"][r["speaker"]]["base_voice"]
          for r in timings.values()}),
      "problems": problems[:20], "n_problems": len(problems)}


def add_timings(out_dir: str, *, workers: int | None = None,
                progress: bool = True) -> dict:
  """Adds the synthesizers' timings to an existing build, audio untouched.

  For a corpus built before timings were recorded (or with an older
  ``TIMINGS_VERSION``): re-runs only the base synthesizers of the timed
  voices (flite, festival; seconds instead of the minutes of a build), checks
  that every clip's length is what that base audio gives and, for one clip
  per voice, that the resynthesis is byte-identical; then rewrites the
  manifest (atomically) with the records. Clips that fail a check get no
  timings (``manifest["timings"]["problems"]`` says why; rebuild with
  ``build_corpus(..., force=True)`` to get them).

  Args:
    out_dir: a complete synthetic build.
    workers: processes; default ``os.cpu_count()``.
    progress: show a tqdm bar.

  Returns:
    The manifest's ``timings`` summary.

  Raises:
    ValueError: ``out_dir`` holds no complete synthetic build.
  """
  out_dir = os.path.abspath(out_dir)
  manifest_path = os.path.join(out_dir, MANIFEST_NAME)
  manifest = _read_json(manifest_path)
  if (manifest is None or "build" not in manifest or
      not _is_complete(out_dir, manifest)):
    raise ValueError(f"{out_dir} holds no complete synthetic corpus build; "
                     "build it with metatts.data.synth.build_corpus.")
  build = manifest["build"]
  cfg = get_config(build["config"])
  seed = int(build["seed"])
  plans = plan_speakers(cfg, build["voices_available"], seed)
  jobs = [j for j in _jobs(cfg, seed, plans, out_dir)
          if VOICES[j.voice].engine in TIMED_ENGINES]
  first = {}
  for j in jobs:
    first.setdefault(j.voice, j)
  verified = set(id(j) for j in first.values())
  t0 = time.time()
  timings, problems, bad_voices = {}, [], set()
  with _progress(sum(len(j.targets) for j in jobs), "synth timings",
                 progress) as bar:
    fns = [(_run_timing_job_verified if id(j) in verified else _run_timing_job)
           for j in jobs]
    for voice, checked, probs, times in _imap(_call, list(zip(fns, jobs)),
                                              workers):
      timings.update(times)
      problems.extend(probs)
      if probs:
        bad_voices.add(voice)
      bar.update(checked + len(probs))
  if bad_voices:
    logger.warning(
        "Timings: %d problems (%s); no timings for voices %s. Rebuild with "
        "build_corpus(..., force=True) to get them.", len(problems),
        problems[:3], sorted(bad_voices))
    timings = {u: r for u, r in timings.items()
               if manifest["speakers"][r["speaker"]]["base_voice"]
               not in bad_voices}
  n_clips = sum(m.get("n_utterances", 0)
                for m in manifest["speakers"].values())
  _set_timings(manifest, timings, n_clips, problems)
  tmp = manifest_path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, manifest_path)
  logger.info("Added timings of %d clips to %s (%.1f s, %d problems).",
              len(timings), out_dir, time.time() - t0, len(problems))
  return manifest["timings"]


def _call(fn_job):
  fn, job = fn_job
  return fn(job)


def build_corpus(preset_or_config: Any, out_dir: str, *, seed: int = 0,
                 workers: int | None = None, force: bool = False,
                 progress: bool = True) -> str:
  """Builds (or finds up to date) the synthetic corpus in ``out_dir``.

  Args:
    preset_or_config: "tiny", "default", a ``SynthConfig`` or a mapping of
      its fields.
    out_dir: output folder; created if missing. An existing folder must be
      empty or hold an earlier synthetic build.
    seed: the same seed (and config and voices) gives the same bytes.
    workers: processes; default ``os.cpu_count()``; 1 runs in-process.
    force: rebuild even if the stored hash matches.
    progress: show a tqdm bar.

  Returns:
    ``out_dir`` as an absolute path.

  Raises:
    ValueError: bad config, or ``out_dir`` holds something else.
    FileNotFoundError: too few base voices work here (the message holds the
      apt-get line).
  """
  cfg = get_config(preset_or_config)
  out_dir = os.path.abspath(out_dir)
  t_start = time.time()
  voices, failed = probe_voices(cfg.voices, cfg.sample_rate)
  if failed:
    pkgs = [VOICES[v].package for v in failed] + [
        ENGINES[VOICES[v].engine][1] for v in failed]
    logger.warning("%d of %d base voices unavailable (%s); to get them: %s",
                   len(failed), len(cfg.voices), ", ".join(sorted(failed)),
                   apt_line(pkgs))
  heldout = cfg.heldout_voice
  if heldout not in voices and voices:
    heldout = voices[-1]
    logger.warning("heldout voice %s unavailable; using %s instead.",
                   cfg.heldout_voice, heldout)
    cfg = dataclasses.replace(cfg, heldout_voice=heldout)
  if len(voices) < 2:
    pkgs = {VOICES[v].package for v in cfg.voices} | {
        ENGINES[VOICES[v].engine][1] for v in cfg.voices}
    raise FileNotFoundError(
        f"Only {len(voices)} base voice(s) work here ({voices}); the corpus "
        "needs at least 2 (one for training, one held out). Install the "
        f"synthesizers with: {apt_line(pkgs)}. Failures: {failed}")

  digest = config_hash(cfg, seed, voices)
  manifest_path = os.path.join(out_dir, MANIFEST_NAME)
  old = _read_json(manifest_path)
  if (not force and old is not None and
      old.get("build", {}).get("hash") == digest and
      _is_complete(out_dir, old)):
    logger.info("Synthetic corpus %s is up to date (hash %s).", out_dir,
                digest[:12])
    if old.get("timings", {}).get("version") != TIMINGS_VERSION:
      add_timings(out_dir, workers=workers, progress=progress)
    return out_dir
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    ours = (old is not None and old.get("format") == "metatts-corpus" and
            "build" in old) or os.path.exists(
                os.path.join(out_dir, MARKER_NAME))
    if not ours:
      raise ValueError(
          f"Output folder {out_dir} is not empty and holds no synthetic "
          "corpus build; pass an empty or new --out folder.")
    logger.info("Parameters changed (or build incomplete); rebuilding %s.",
                out_dir)
    _clear_previous(out_dir)

  plans = plan_speakers(cfg, voices, seed)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, MARKER_NAME), "w", encoding="utf-8") as f:
    json.dump({"hash": digest, "speakers": [p.speaker_id for p in plans]}, f)
  for p in plans:
    os.makedirs(os.path.join(out_dir, p.speaker_id), exist_ok=True)

  jobs = _jobs(cfg, seed, plans, out_dir)
  errors, timings = [], {}
  n_files = sum(len(j.targets) for j in jobs)
  n_written = 0
  with _progress(n_files, "synth corpus", progress) as bar:
    for written, err, times in _imap(_run_job, jobs, workers):
      n_written += written
      timings.update(times)
      if err:
        errors.append(err)
        logger.warning("Skipped: %s", err)
      bar.update(written)

  speakers = {}
  for p in plans:
    d = os.path.join(out_dir, p.speaker_id)
    n = sum(1 for f in os.listdir(d) if f.endswith(".wav"))
    speakers[p.speaker_id] = {
        "split": p.split, "base_voice": p.voice,
        "engine": VOICES[p.voice].engine, **p.perturbation._asdict(),
        "n_utterances": n}
  manifest = {
      "format": "metatts-corpus", "version": 1, "name": cfg.name,
      "sample_rate": cfg.sample_rate, "speakers": speakers,
      "build": {"hash": digest, "seed": seed, "code_version": CODE_VERSION,
                "config": dataclasses.asdict(cfg),
                "voices_available": list(voices),
                "voices_skipped": failed,
                "skipped": {"base_synthesis_failed": len(errors)}},
  }
  _set_timings(manifest, timings, n_written, [])
  tmp = manifest_path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, manifest_path)
  os.remove(os.path.join(out_dir, MARKER_NAME))
  logger.info(
      "Built %d speakers, %d clips in %s (%.1f s; %d sentences skipped, "
      "%d clips missing).", len(speakers), n_written, out_dir,
      time.time() - t_start, len(errors), n_files - n_written)
  return out_dir


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m metatts.data.synth",
      description="Build the embedded multi-speaker synthetic corpus.")
  parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
  parser.add_argument("--out", required=True, help="output folder")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--workers", type=int, default=None,
                      help="processes (default: all cores)")
  parser.add_argument("--force", action="store_true",
                      help="rebuild even when up to date")
  args = parser.parse_args(argv)
  logging.basicConfig(level=logging.INFO,
                      format="%(asctime)s %(levelname)s %(message)s")
  t0 = time.time()
  try:
    path = build_corpus(args.preset, args.out, seed=args.seed,
                        workers=args.workers, force=args.force)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"{path} ({time.time() - t0:.1f} s)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
