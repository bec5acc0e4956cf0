"""Tests for metatts.data.features (feature cache)."""

import os
import time

import numpy as np
import pytest
import soundfile as sf

from metatts.audio import features as afeat
from metatts.audio import io as aio
from metatts.audio import text as atext
from metatts.data import corpora as C
from metatts.data import features as F

SR = 16000


def tone(seconds=0.5, f0=150.0, sr=SR, amp=0.2):
  t = np.arange(int(sr * seconds)) / sr
  x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
  return (amp * np.hanning(t.shape[0]) * x).astype(np.float32)


def write(root, spk, utt, audio, text, sr=SR):
  d = os.path.join(root, spk)
  os.makedirs(d, exist_ok=True)
  sf.write(os.path.join(d, utt + ".wav"), audio, sr, subtype="PCM_16")
  with open(os.path.join(d, utt + ".txt"), "w", encoding="utf-8") as f:
    f.write(text)
  return os.path.join(d, utt + ".wav")


@pytest.fixture()
def corpus_root(tmp_path):
  root = str(tmp_path / "corpus")
  for s, f0 in (("alice", 200.0), ("bob", 110.0)):
    for i in range(3):
      write(root, s, f"{s}_{i}", tone(0.4 + 0.1 * i, f0), f"{s} says {i}.")
  # Bad clips, each of which must be skipped and counted.
  write(root, "bad", "silent", np.zeros(SR // 2, np.float32), "quiet")
  write(root, "bad", "clipped", np.clip(tone(0.5) * 30, -1, 1), "loud")
  write(root, "bad", "long", tone(2.0), "long one")  # > max_frames
  write(root, "bad", "empty", tone(0.5), "?!")
  write(root, "bad", "wordy", tone(0.5), "word " * 30)  # > max_tokens
  write(root, "bad", "rate", tone(0.5, sr=22050), "other rate", sr=22050)
  with open(os.path.join(root, "bad", "junk.wav"), "wb") as f:
    f.write(b"garbage bytes, not a wav file")
  with open(os.path.join(root, "bad", "junk.txt"), "w") as f:
    f.write("junk")
  return root


CFG = F.FeatureConfig(max_frames=120, max_tokens=100)


def test_feature_config_defaults_hash_and_from_config():
  c = F.FeatureConfig()
  assert (c.sample_rate, c.hop_length, c.n_mels, c.n_fft, c.win_length) == (
      16000, 200, 80, 1024, 800)
  assert c.num_symbols == atext.CHARACTERS.num_symbols
  assert c.hash() == F.FeatureConfig().hash()
  assert c.hash() != c._replace(n_mels=40).hash()
  assert F.FeatureConfig.from_config({"n_mels": 40}).n_mels == 40
  ml_collections = pytest.importorskip("ml_collections")
  cd = ml_collections.ConfigDict({"symbols": "phonemes", "max_frames": 500})
  assert F.FeatureConfig.from_config(cd) == c._replace(symbols="phonemes",
                                                       max_frames=500)
  with pytest.raises(ValueError, match="n_mel.*valid keys"):
    F.FeatureConfig.from_config({"n_mel": 40})
  with pytest.raises(ValueError, match="characters"):
    F.FeatureConfig.from_config({"symbols": "letters"})


def test_compute_log_mel_equals_unbucketed():
  mc = afeat.MelConfig()
  # 39 frames (bucket 128, mostly padding) and 128 frames (bucket full).
  for n in (7777, 25600 - 1):
    x = tone(n / SR)
    np.testing.assert_allclose(F.compute_log_mel(x, mc),
                               afeat.log_mel_spectrogram(x, mc), atol=1e-4)


def test_build_reuse_incremental_and_skips(corpus_root, tmp_path):
  cache = str(tmp_path / "cache")
  corpus = C.load_generic(corpus_root)
  store = F.build_features(corpus, CFG, cache, progress=False)
  assert store.root == os.path.join(cache, CFG.hash())
  # 6 good clips + the 22.05 kHz one, resampled (the documented policy).
  assert len(store) == 7 and store.stats == {"computed": 13, "reused": 0}
  assert store.skipped == {"silent": 1, "clipped": 1, "too_long": 1,
                           "empty_text": 1, "too_many_tokens": 1,
                           "unreadable": 1}
  by = store.by_speaker()
  assert sorted(by) == ["alice", "bad", "bob"]
  assert [e.utt_id for e in by["alice"]] == ["alice_0", "alice_1", "alice_2"]
  assert [e.utt_id for e in by["bad"]] == ["rate"]
  assert set(store.speakers) == {"alice", "bad", "bob"}
  ex = by["alice"][1]
  assert isinstance(ex.mel, np.memmap) and ex.mel.dtype == np.float32
  # The cached mel is the log-mel of the loaded, trimmed, normalized clip.
  audio = aio.load_clip(ex.audio_path, SR, min_seconds=CFG.min_seconds,
                        max_seconds=CFG.max_seconds)
  ref = np.asarray(afeat.log_mel_spectrogram(audio, CFG.mel_config()))
  assert ex.mel.shape == ref.shape and ex.mel.shape[1] == 80
  np.testing.assert_allclose(ex.mel, ref, atol=1e-4)
  np.testing.assert_array_equal(ex.tokens, atext.text_to_ids("alice says 1."))
  rate = by["bad"][0]
  assert abs(rate.mel.shape[0] - (1 + int(0.5 * 16000) // 200)) <= 12

  # Second build: nothing recomputed, same numbers, same skip counts.
  again = F.build_features(C.load_generic(corpus_root), CFG, cache,
                           progress=False)
  assert again.stats == {"computed": 0, "reused": 13}
  assert again.skipped == store.skipped
  np.testing.assert_array_equal(again.by_speaker()["alice"][1].mel, ex.mel)

  # Change one file (new content, new mtime): only it is recomputed.
  time.sleep(0.01)
  write(corpus_root, "bob", "bob_2", tone(0.7, 90.0), "bob says 2.")
  third = F.build_features(C.load_generic(corpus_root), CFG, cache,
                           progress=False)
  assert third.stats == {"computed": 1, "reused": 12}
  new = third.by_speaker()["bob"][2]
  assert new.mel.shape[0] != by["bob"][2].mel.shape[0]
  # A transcript edit alone also triggers recomputation of that utterance.
  with open(os.path.join(corpus_root, "alice", "alice_0.txt"), "w") as f:
    f.write("alice said zero.")
  fourth = F.build_features(C.load_generic(corpus_root), CFG, cache,
                            progress=False)
  assert fourth.stats == {"computed": 1, "reused": 12}
  assert fourth.by_speaker()["alice"][0].text == "alice said zero."

  # Another feature config gets its own folder and computes from scratch.
  other = F.build_features(C.load_generic(corpus_root),
                           CFG._replace(n_mels=40), cache, progress=False)
  assert other.root != store.root and other.stats["computed"] == 13
  assert other.by_speaker()["alice"][0].mel.shape[1] == 40


def test_scan_skips_are_included(corpus_root, tmp_path):
  os.remove(os.path.join(corpus_root, "alice", "alice_0.txt"))
  corpus = C.load_generic(corpus_root)
  store = F.build_features(corpus, CFG, str(tmp_path / "c"), progress=False)
  assert store.skipped["missing_transcript"] == 1
  assert len(store) == 6
