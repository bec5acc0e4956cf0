"""Tests for metatts.data.corpora on fixtures in the exact real layouts."""

import json
import os

import numpy as np
import pytest
import soundfile as sf

from metatts.data import corpora as C


def tone(sr, seconds=0.4, f0=140.0):
  t = np.arange(int(sr * seconds)) / sr
  x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
  return (0.2 * np.hanning(t.shape[0]) * x).astype(np.float32)


def write_audio(path, sr, fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sf.write(path, tone(sr), sr, format=fmt)


def write_text(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def make_vctk(root):
  """VCTK 0.92: wav48_silence_trimmed/pXXX/pXXX_YYY_mic{1,2}.flac + txt/."""
  for spk in ("p225", "p226"):
    for i in (1, 2, 3):
      utt = f"{spk}_{i:03d}"
      for mic in ("mic1", "mic2"):
        write_audio(os.path.join(root, "wav48_silence_trimmed", spk,
                                 f"{utt}_{mic}.flac"), 48000)
      write_text(os.path.join(root, "txt", spk, utt + ".txt"),
                 f"Please call Stella number {i}.\n")
  # p315 has audio but no transcripts in VCTK 0.92.
  write_audio(os.path.join(root, "wav48_silence_trimmed", "p315",
                           "p315_001_mic1.flac"), 48000)
  write_text(os.path.join(root, "txt", "p226", "p226_003.txt"), "   \n")


def make_libritts(root, split="train-clean-100"):
  for spk, chapter in (("19", "198"), ("26", "495")):
    for i in (1, 2):
      utt = f"{spk}_{chapter}_000000_00000{i}"
      d = os.path.join(root, split, spk, chapter)
      write_audio(os.path.join(d, utt + ".wav"), 24000)
      write_text(os.path.join(d, utt + ".normalized.txt"),
                 f"Chapter {i} of the book.")
      write_text(os.path.join(d, utt + ".original.txt"), "ignored")
  # Missing normalized transcript.
  write_audio(os.path.join(root, split, "26", "495",
                           "26_495_000000_000009.wav"), 24000)


def make_ljspeech(root):
  rows = ["LJ001-0001|Printing, in the only sense|Printing, in the only sense",
          "LJ001-0002|In 1878 he came|In eighteen seventy-eight he came",
          "LJ001-0003|no normalized column",
          "LJ001-0004|missing audio|missing audio",
          "LJ001-0005||"]
  write_text(os.path.join(root, "metadata.csv"), "\n".join(rows) + "\n")
  for i in (1, 2, 3, 5):
    write_audio(os.path.join(root, "wavs", f"LJ001-000{i}.wav"), 22050)


def make_generic(root, manifest=True):
  speakers = {"spk_a": "train", "spk_b": "heldout_seen",
              "spk_c": "heldout_unseen"}
  for spk in speakers:
    for i in range(3):
      write_audio(os.path.join(root, spk, f"{spk}_{i}.wav"), 16000,
                  fmt="WAV")
      write_text(os.path.join(root, spk, f"{spk}_{i}.txt"),
                 f"Sentence number {i} for {spk}.")
  if manifest:
    write_text(os.path.join(root, "manifest.json"), json.dumps({
        "format": "metatts-corpus", "version": 1, "name": "tiny",
        "sample_rate": 16000,
        "speakers": {s: {"split": sp, "base_voice": "slt", "f0_scale": 1.1}
                     for s, sp in speakers.items()},
        "build": {"seed": 0}}))


def test_vctk_layout(tmp_path):
  root = str(tmp_path / "VCTK-Corpus-0.92")
  make_vctk(root)
  corpus = C.load_vctk(root)
  assert corpus.name == "vctk" and corpus.sample_rate == 48000
  assert [u.utt_id for u in corpus.utterances] == [
      "p225_001", "p225_002", "p225_003", "p226_001", "p226_002"]
  assert all(u.audio_path.endswith("_mic1.flac") and os.path.isabs(
      u.audio_path) for u in corpus.utterances)
  assert corpus.utterances[0].text == "Please call Stella number 1."
  assert corpus.skipped == {"missing_transcript": 1, "empty_text": 1}
  assert set(corpus.speakers) == {"p225", "p226"}
  assert corpus.speakers["p225"]["split"] == "train"
  mic2 = C.load_vctk(root, mic="mic2")
  assert all(u.audio_path.endswith("_mic2.flac") for u in mic2.utterances)
  assert len(mic2.utterances) == 5


@pytest.mark.parametrize("at_split", [False, True])
def test_libritts_layout(tmp_path, at_split):
  root = str(tmp_path / "LibriTTS")
  make_libritts(root)
  make_libritts(root, split="dev-clean")
  corpus = C.load_libritts(os.path.join(root, "train-clean-100")
                           if at_split else root)
  n_splits = 1 if at_split else 2
  assert len(corpus.utterances) == 4 * n_splits
  assert corpus.skipped == {"missing_transcript": n_splits}
  assert set(corpus.speakers) == {"19", "26"}
  assert corpus.utterances[0].text == "Chapter 1 of the book."
  assert corpus.sample_rate == 24000


def test_ljspeech_layout(tmp_path):
  root = str(tmp_path / "LJSpeech-1.1")
  make_ljspeech(root)
  corpus = C.load_ljspeech(root)
  texts = {u.utt_id: u.text for u in corpus.utterances}
  assert texts == {"LJ001-0001": "Printing, in the only sense",
                   "LJ001-0002": "In eighteen seventy-eight he came",
                   "LJ001-0003": "no normalized column"}
  assert corpus.skipped == {"missing_audio": 1, "empty_text": 1}
  assert list(corpus.speakers) == ["LJ"]
  raw = C.load_ljspeech(root, use_normalized=False)
  assert {u.utt_id: u.text for u in raw.utterances}["LJ001-0002"] == (
      "In 1878 he came")


def test_generic_with_manifest_and_splits(tmp_path):
  root = str(tmp_path / "corpus")
  make_generic(root)
  # Bad entries: a wav without transcript, an empty transcript, an empty
  # (unreadable) wav, and a speaker folder missing from the manifest.
  write_audio(os.path.join(root, "spk_a", "orphan.wav"), 16000, fmt="WAV")
  write_audio(os.path.join(root, "spk_b", "blank.wav"), 16000, fmt="WAV")
  write_text(os.path.join(root, "spk_b", "blank.txt"), "\n")
  write_text(os.path.join(root, "spk_c", "zero.txt"), "hello")
  open(os.path.join(root, "spk_c", "zero.wav"), "wb").close()
  write_audio(os.path.join(root, "stranger", "x.wav"), 16000, fmt="WAV")
  corpus = C.load_generic(root)
  assert corpus.name == "tiny" and corpus.sample_rate == 16000
  assert len(corpus.utterances) == 9
  assert corpus.skipped == {"missing_transcript": 1, "empty_text": 1,
                            "unreadable": 1, "speaker_not_in_manifest": 1}
  assert corpus.speakers["spk_b"] == {"split": "heldout_seen",
                                      "base_voice": "slt", "f0_scale": 1.1}
  held = corpus.split("heldout_unseen")
  assert set(held.speakers) == {"spk_c"}
  assert {u.speaker for u in held.utterances} == {"spk_c"}
  assert [u.utt_id for u in corpus.by_speaker()["spk_a"]] == [
      "spk_a_0", "spk_a_1", "spk_a_2"]


def test_generic_without_manifest(tmp_path):
  root = str(tmp_path / "handmade")
  make_generic(root, manifest=False)
  corpus = C.load_corpus("generic", root)
  assert corpus.name == "handmade" and corpus.sample_rate is None
  assert all(m == {"split": "train"} for m in corpus.speakers.values())
  assert len(corpus.utterances) == 9 and corpus.skipped == {}


def test_bad_manifest(tmp_path):
  root = tmp_path / "c"
  root.mkdir()
  (root / "manifest.json").write_text("{not json")
  with pytest.raises(ValueError, match="manifest.json"):
    C.load_generic(str(root))
  (root / "manifest.json").write_text(json.dumps(
      {"format": "metatts-corpus", "version": 1,
       "speakers": {"a": {"split": "test"}}}))
  with pytest.raises(ValueError, match="heldout_unseen"):
    C.load_generic(str(root))


@pytest.mark.parametrize("kind, expect", [
    ("generic", "<speaker>/<utt>.wav"),
    ("vctk", "wav48_silence_trimmed"),
    ("libritts", "normalized.txt"),
    ("ljspeech", "metadata.csv"),
])
def test_missing_folder_names_path_and_layout(tmp_path, kind, expect):
  missing = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError) as e:
    C.load_corpus(kind, missing)
  assert missing in str(e.value) and expect in str(e.value)


def test_incomplete_layouts(tmp_path):
  (tmp_path / "vctk" / "wav48_silence_trimmed").mkdir(parents=True)
  with pytest.raises(FileNotFoundError, match="txt"):
    C.load_vctk(str(tmp_path / "vctk"))
  (tmp_path / "lj").mkdir()
  with pytest.raises(FileNotFoundError, match="metadata.csv"):
    C.load_ljspeech(str(tmp_path / "lj"))
  (tmp_path / "libri").mkdir()
  with pytest.raises(FileNotFoundError, match="speaker folders"):
    C.load_libritts(str(tmp_path / "libri"))


def test_unknown_kind_lists_kinds(tmp_path):
  with pytest.raises(ValueError, match="generic.*libritts.*ljspeech.*vctk"):
    C.load_corpus("timit", str(tmp_path))
