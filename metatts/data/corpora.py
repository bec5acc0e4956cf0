"""Speech corpora: in-memory index types and loaders for on-disk layouts.

A loader scans a corpus folder and returns a ``Corpus`` listing every usable
utterance (speaker, id, absolute audio path, raw transcript). The scan does
not decode audio (that happens once, in ``metatts.data.features``); it skips
and counts entries it cannot use (missing transcript, empty transcript,
missing or empty audio file) in ``Corpus.skipped`` and logs a summary.

Supported layouts (see docs/data.md):

* generic (written by ``metatts.data.synth``)::

    ROOT/manifest.json (optional)  ROOT/<speaker>/<utt>.wav + <utt>.txt

* VCTK 0.92::

    ROOT/wav48_silence_trimmed/p225/p225_001_mic1.flac
    ROOT/txt/p225/p225_001.txt

* LibriTTS (ROOT is the LibriTTS folder holding the splits, or one split)::

    ROOT/<split>/<speaker>/<chapter>/<utt>.wav + <utt>.normalized.txt

* LJSpeech 1.1 (one speaker, ``LJ``)::

    ROOT/metadata.csv  (id|text|normalized text)   ROOT/wavs/<id>.wav

References:
  Yamagishi et al., "CSTR VCTK Corpus (version 0.92)", 2019.
  Zen et al., "LibriTTS: A Corpus Derived from LibriSpeech for
  Text-to-Speech", Interspeech 2019.
  Ito & Johnson, "The LJ Speech Dataset", 2017.
"""

from __future__ import annotations

import collections
import csv
import json
import os
from typing import Callable, Dict, NamedTuple, Optional, Tuple

from absl import logging
import numpy as np

SPLITS = ("train", "heldout_seen", "heldout_unseen")


class Timings(NamedTuple):
  """A synthesizer's own word and phone timing of one clip (end times).

  Written by ``metatts.data.synth`` for the voices whose synthesizer reports
  it (flite, festival; not espeak-ng); see docs/data.md. Segment ``i`` runs
  from the previous end (0 for the first) to its own end. Times are seconds
  from the start of the audio they describe: the clip file in a ``Corpus``,
  the trimmed clip the mel was computed from in a ``features.Example``.
  """

  words: Tuple[str, ...]  # [W] the synthesizer's words
  word_ends: np.ndarray  # float64 [W] seconds
  phones: Tuple[str, ...]  # [P] the synthesizer's phones ("pau": silence)
  phone_ends: np.ndarray  # float64 [P] seconds

  def shifted(self, offset: float,
              duration: Optional[float] = None) -> "Timings":
    """Times of the excerpt ``[offset, offset + duration)`` of the clip.

    Times are clamped into the excerpt (a silence cut by trimming ends at
    its edge).
    """
    hi = np.inf if duration is None else duration
    return self._replace(
        word_ends=np.clip(self.word_ends - offset, 0.0, hi),
        phone_ends=np.clip(self.phone_ends - offset, 0.0, hi))

  @classmethod
  def from_record(cls, rec: dict) -> Optional["Timings"]:
    """From a manifest record; None if it is incomplete or inconsistent."""
    try:
      words, phones = tuple(rec["words"]), tuple(rec["phones"])
      w_ends = np.asarray(rec["word_ends"], np.float64)
      p_ends = np.asarray(rec["phone_ends"], np.float64)
    except (KeyError, TypeError, ValueError):
      return None
    if (w_ends.ndim != 1 or p_ends.ndim != 1 or not words or
        len(words) != w_ends.shape[0] or len(phones) != p_ends.shape[0]):
      return None
    return cls(words, w_ends, phones, p_ends)


class Utterance(NamedTuple):
  speaker: str  # speaker id
  utt_id: str
  audio_path: str  # absolute path
  text: str  # raw transcript
  # The synthesizer's timing in seconds of the clip file (synthetic corpora,
  # timed voices only), else None.
  timings: Optional[Timings] = None


class Corpus(NamedTuple):
  name: str
  sample_rate: Optional[int]  # None when files may differ (resampled on load)
  utterances: Tuple[Utterance, ...]
  speakers: Dict[str, dict]  # speaker id -> metadata (always has "split")
  skipped: Dict[str, int]  # reason -> count (bad entries skipped in the scan)

  def by_speaker(self) -> Dict[str, Tuple[Utterance, ...]]:
    """Utterances grouped by speaker, in corpus order."""
    out = collections.defaultdict(list)
    for u in self.utterances:
      out[u.speaker].append(u)
    return {k: tuple(v) for k, v in out.items()}

  def split(self, name: str) -> "Corpus":
    """The sub-corpus of speakers whose metadata ``split`` equals ``name``."""
    keep = {s for s, m in self.speakers.items() if m.get("split") == name}
    return self._replace(
        utterances=tuple(u for u in self.utterances if u.speaker in keep),
        speakers={s: m for s, m in self.speakers.items() if s in keep})


def _require_dir(path: str, layout: str) -> str:
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"Corpus folder not found: {path}. Expected the layout {layout}; set "
        "the corpus path in the config (config.data.root) to that folder.")
  return path


def _read_text(path: str) -> Optional[str]:
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      return " ".join(f.read().split())
  except OSError:
    return None


class _Scan:
  """Collects utterances and skip counts during a scan."""

  def __init__(self, name: str):
    self.name = name
    self.utts = []
    self.skipped = collections.Counter()
    self.examples = {}

  def add(self, speaker, utt_id, audio_path, text_path=None, text=None,
          timings=None):
    if text is None:
      if text_path is None or not os.path.isfile(text_path):
        return self.skip("missing_transcript", audio_path)
      text = _read_text(text_path)
      if text is None:
        return self.skip("unreadable_transcript", text_path)
    if not text.strip():
      return self.skip("empty_text", text_path or audio_path)
    if not os.path.isfile(audio_path):
      return self.skip("missing_audio", audio_path)
    if os.path.getsize(audio_path) == 0:
      return self.skip("unreadable", audio_path)
    self.utts.append(Utterance(speaker, utt_id, os.path.abspath(audio_path),
                               text, timings))

  def skip(self, reason, path):
    self.skipped[reason] += 1
    self.examples.setdefault(reason, path)

  def finish(self, sample_rate, speakers) -> Corpus:
    utts = tuple(sorted(self.utts, key=lambda u: (u.speaker, u.utt_id)))
    present = {u.speaker for u in utts}
    speakers = {s: dict(m) for s, m in speakers.items() if s in present}
    for s in present:
      speakers.setdefault(s, {"split": "train"})
      speakers[s].setdefault("split", "train")
    if self.skipped:
      logging.warning(
          "Corpus %s: kept %d utterances of %d speakers, skipped %d: %s "
          "(e.g. %s).", self.name, len(utts), len(speakers),
          sum(self.skipped.values()), dict(self.skipped), self.examples)
    else:
      logging.info("Corpus %s: %d utterances of %d speakers.", self.name,
                   len(utts), len(speakers))
    return Corpus(self.name, sample_rate, utts, dict(sorted(speakers.items())),
                  dict(self.skipped))


_AUDIO_EXTS = (".wav", ".flac")


def load_generic(root: str) -> Corpus:
  """Loads ``ROOT/<speaker>/<utt>.{wav,flac}`` + ``<utt>.txt`` (+ manifest).

  With ``ROOT/manifest.json`` (format "metatts-corpus", version 1) speakers,
  their split and metadata come from it; without it every speaker folder is a
  training speaker. Its optional ``utterances`` map (utt id -> synthesizer
  timing record) fills ``Utterance.timings``.

  Raises:
    FileNotFoundError: ROOT missing.
    ValueError: manifest.json unreadable or of another format.
  """
  layout = ("ROOT/<speaker>/<utt>.wav with <utt>.txt next to it, and an "
            "optional ROOT/manifest.json")
  root = _require_dir(root, layout)
  manifest_path = os.path.join(root, "manifest.json")
  name, sample_rate, speakers = os.path.basename(root), None, {}
  listed, timings = None, {}
  if os.path.isfile(manifest_path):
    try:
      with open(manifest_path, encoding="utf-8") as f:
        manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"Unreadable manifest {manifest_path}: {e}. Rebuild "
                       "the corpus or delete the manifest.") from e
    if (not isinstance(manifest, dict)
        or manifest.get("format") != "metatts-corpus"
        or manifest.get("version") != 1):
      raise ValueError(
          f"{manifest_path} is not a metatts-corpus version 1 manifest "
          "(needs \"format\": \"metatts-corpus\", \"version\": 1); rebuild the "
          "corpus or delete the manifest.")
    name = manifest.get("name", name)
    sample_rate = manifest.get("sample_rate")
    speakers = {str(k): dict(v) for k, v in
                manifest.get("speakers", {}).items()}
    for s, meta in speakers.items():
      if meta.get("split", "train") not in SPLITS:
        raise ValueError(f"{manifest_path}: speaker {s} has split "
                         f"{meta.get('split')!r}; use one of {SPLITS}.")
    listed = set(speakers)
    records = manifest.get("utterances")
    if isinstance(records, dict):
      timings = {str(u): Timings.from_record(r) for u, r in records.items()
                 if isinstance(r, dict)}
  scan = _Scan(name)
  for spk in sorted(os.listdir(root)):
    sdir = os.path.join(root, spk)
    if not os.path.isdir(sdir) or spk.startswith("."):
      continue
    if listed is not None and spk not in listed:
      scan.skip("speaker_not_in_manifest", sdir)
      continue
    for fname in sorted(os.listdir(sdir)):
      stem, ext = os.path.splitext(fname)
      if ext.lower() in _AUDIO_EXTS:
        scan.add(spk, stem, os.path.join(sdir, fname),
                 os.path.join(sdir, stem + ".txt"), timings=timings.get(stem))
  return scan.finish(sample_rate, speakers)


def load_vctk(root: str, mic: str = "mic1") -> Corpus:
  """Loads VCTK 0.92 (``wav48_silence_trimmed`` FLAC + ``txt``).

  Args:
    root: the VCTK-Corpus-0.92 folder.
    mic: "mic1" or "mic2".

  Returns:
    Corpus named "vctk"; speakers like "p225", utt ids like "p225_001"; all speakers are
    in split "train" (choose held-out speakers in the experiment config).
    ``sample_rate`` is 48000 (files are resampled on load).
  """
  layout = ("ROOT/wav48_silence_trimmed/p225/p225_001_mic1.flac and "
            "ROOT/txt/p225/p225_001.txt (VCTK 0.92)")
  root = _require_dir(root, layout)
  wav_root = os.path.join(root, "wav48_silence_trimmed")
  txt_root = os.path.join(root, "txt")
  for sub in (wav_root, txt_root):
    _require_dir(sub, layout)
  if mic not in ("mic1", "mic2"):
    raise ValueError(f"load_vctk: mic={mic!r}; use 'mic1' or 'mic2'.")
  scan = _Scan("vctk")
  suffix = f"_{mic}.flac"
  for spk in sorted(os.listdir(wav_root)):
    sdir = os.path.join(wav_root, spk)
    if not os.path.isdir(sdir):
      continue
    for fname in sorted(os.listdir(sdir)):
      if not fname.endswith(suffix):
        continue
      utt = fname[:-len(suffix)]
      scan.add(spk, utt, os.path.join(sdir, fname),
               os.path.join(txt_root, spk, utt + ".txt"))
  return scan.finish(48000, {})


def _libritts_speaker_dirs(root):
  """Yields speaker folders of one split folder or of all split folders."""
  def is_speaker_dir(d):
    return os.path.isdir(d) and os.path.basename(d).isdigit()
  entries = [os.path.join(root, e) for e in sorted(os.listdir(root))]
  speakers = [e for e in entries if is_speaker_dir(e)]
  if speakers:
    return speakers
  out = []
  for split in entries:
    if os.path.isdir(split):
      out.extend(e for e in (os.path.join(split, x)
                             for x in sorted(os.listdir(split)))
                 if is_speaker_dir(e))
  return out


def load_libritts(root: str) -> Corpus:
  """Loads LibriTTS (``<speaker>/<chapter>/<utt>.wav`` + ``.normalized.txt``).

  ``root`` may be the LibriTTS folder (holding ``train-clean-100`` etc.; all
  splits are merged) or a single split folder. Speakers are the numeric
  LibriTTS speaker ids; sample_rate is 24000.
  """
  layout = ("ROOT/<split>/<speaker>/<chapter>/<utt>.wav with "
            "<utt>.normalized.txt (ROOT may also be one split folder)")
  root = _require_dir(root, layout)
  scan = _Scan("libritts")
  spk_dirs = _libritts_speaker_dirs(root)
  if not spk_dirs:
    raise FileNotFoundError(f"No LibriTTS speaker folders under {root}. "
                            f"Expected the layout {layout}.")
  for sdir in spk_dirs:
    spk = os.path.basename(sdir)
    for chapter in sorted(os.listdir(sdir)):
      cdir = os.path.join(sdir, chapter)
      if not os.path.isdir(cdir):
        continue
      for fname in sorted(os.listdir(cdir)):
        if fname.endswith(".wav"):
          utt = fname[:-4]
          scan.add(spk, utt, os.path.join(cdir, fname),
                   os.path.join(cdir, utt + ".normalized.txt"))
  return scan.finish(24000, {})


def load_ljspeech(root: str, use_normalized: bool = True) -> Corpus:
  """Loads LJSpeech (``metadata.csv`` with ``id|text|normalized`` + wavs/).

  Args:
    root: the LJSpeech-1.1 folder.
    use_normalized: use the third column (numbers spelled out) when present.

  Returns:
    Corpus named "ljspeech" with the single speaker "LJ", sample_rate 22050.
  """
  layout = "ROOT/metadata.csv (id|text|normalized text) and ROOT/wavs/<id>.wav"
  root = _require_dir(root, layout)
  meta = os.path.join(root, "metadata.csv")
  if not os.path.isfile(meta):
    raise FileNotFoundError(f"{meta} not found. Expected the layout {layout}.")
  scan = _Scan("ljspeech")
  with open(meta, encoding="utf-8", newline="") as f:
    for row in csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE):
      if not row or not row[0].strip():
        continue
      utt = row[0].strip()
      text = ""
      if use_normalized and len(row) > 2 and row[2].strip():
        text = row[2]
      elif len(row) > 1:
        text = row[1]
      scan.add("LJ", utt, os.path.join(root, "wavs", utt + ".wav"),
               text=" ".join(text.split()))
  return scan.finish(22050, {})


LOADERS: Dict[str, Callable[..., Corpus]] = {
    "generic": load_generic,
    "vctk": load_vctk,
    "libritts": load_libritts,
    "ljspeech": load_ljspeech,
}


def load_corpus(kind: str, root: str, **kwargs) -> Corpus:
  """Loads a corpus with the loader registered under ``kind``."""
  if kind not in LOADERS:
    raise ValueError(f"Unknown corpus kind {kind!r}; choose one of "
                     f"{sorted(LOADERS)}.")
  return LOADERS[kind](root, **kwargs)
