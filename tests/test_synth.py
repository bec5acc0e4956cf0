"""Tests for metatts.data.synth (the embedded synthetic corpus)."""

import collections
import json
import logging
import os
import shutil
import warnings

import librosa
import numpy as np
import pytest
import soundfile as sf

with warnings.catch_warnings():
  warnings.simplefilter("ignore")
  import pyworld

from metatts.data import synth

needs_synth = pytest.mark.skipif(
    shutil.which("flite") is None or shutil.which("espeak-ng") is None,
    reason="flite/espeak-ng not installed (apt-get install flite espeak-ng)")

# Small but complete: two seen voices (2 train + 1 heldout_seen speakers
# each) and one unseen voice (2 speakers), 4-5 short utterances per speaker.
MICRO = dict(
    name="micro", voices=("flite-awb", "flite-slt", "espeak-us-m3"),
    heldout_voice="espeak-us-m3", n_sentences=20, sentences_per_voice=6,
    min_words=4, max_words=7, train_per_voice=2, heldout_seen_per_voice=1,
    unseen_speakers=2, utts_per_speaker=(4, 5))
# Even smaller, for the byte-determinism and rebuild checks.
NANO = dict(MICRO, name="nano", voices=("flite-awb", "espeak-us-m3"),
            sentences_per_voice=3, train_per_voice=1, unseen_speakers=1,
            utts_per_speaker=(2, 3))


def built_corpus(spec, out):
  """Builds the synthetic corpus ``spec`` in ``out``; (root, manifest)."""
  synth.build_corpus(spec, str(out), seed=0, workers=2, progress=False)
  with open(out / "manifest.json", encoding="utf-8") as f:
    return str(out), json.load(f)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
  return built_corpus(MICRO, tmp_path_factory.mktemp("micro"))


def _files(root):
  out = {}
  for dirpath, _, names in os.walk(root):
    for n in names:
      if n.endswith((".wav", ".txt")):
        p = os.path.join(dirpath, n)
        with open(p, "rb") as f:
          out[os.path.relpath(p, root)] = f.read()
  return out


def test_sentences_distinct_lengths_deterministic():
  a = synth.generate_sentences(400, seed=0, min_words=4, max_words=14)
  assert len(set(a)) == 400
  counts = [synth.word_count(s) for s in a]
  assert min(counts) >= 4 and max(counts) <= 14
  assert max(counts) - min(counts) >= 8  # varied lengths
  assert all(s[0].isupper() and s[-1] in ".?" for s in a)
  assert a == synth.generate_sentences(400, seed=0)
  assert a != synth.generate_sentences(400, seed=1)
  assert synth.word_count("Yesterday, the old man fixed a box.") == 7
  with pytest.raises(ValueError, match="widen the word range"):
    synth.generate_sentences(5, min_words=2, max_words=3)


@needs_synth
def test_layout_manifest_and_splits(micro):
  root, m = micro
  assert m["format"] == "metatts-corpus" and m["version"] == 1
  assert m["sample_rate"] == 16000 and m["name"] == "micro"
  assert len(m["build"]["hash"]) == 64
  spk = m["speakers"]
  splits = collections.Counter(v["split"] for v in spk.values())
  assert splits == {"train": 4, "heldout_seen": 2, "heldout_unseen": 2}
  train_voices = {v["base_voice"] for v in spk.values()
                  if v["split"] == "train"}
  unseen_voices = {v["base_voice"] for v in spk.values()
                   if v["split"] == "heldout_unseen"}
  assert unseen_voices == {"espeak-us-m3"}
  assert not train_voices & unseen_voices
  train_f0 = {v["f0_scale"] for v in spk.values() if v["split"] == "train"}
  train_warp = {v["warp"] for v in spk.values() if v["split"] == "train"}
  for v in spk.values():
    if v["split"] == "heldout_seen":
      assert v["base_voice"] in train_voices
      assert v["f0_scale"] not in train_f0 and v["warp"] not in train_warp
  for s, meta in spk.items():
    wavs = sorted(f for f in os.listdir(os.path.join(root, s))
                  if f.endswith(".wav"))
    assert 4 <= len(wavs) == meta["n_utterances"] <= 5
    texts = []
    for w in wavs:
      info = sf.info(os.path.join(root, s, w))
      assert (info.samplerate, info.channels, info.subtype) == (
          16000, 1, "PCM_16")
      assert 0.5 < info.duration < 6.0
      with open(os.path.join(root, s, w[:-4] + ".txt"),
                encoding="utf-8") as f:
        text = f.read()
      assert text.endswith("\n") and text.count("\n") == 1
      texts.append(text.strip())
    assert len(set(texts)) == len(texts)  # no sentence twice per speaker


@needs_synth
def test_loudness_normalized_and_not_clipped(micro):
  root, m = micro
  spk = sorted(m["speakers"])[0]
  for w in sorted(os.listdir(os.path.join(root, spk)))[:4]:
    if not w.endswith(".wav"):
      continue
    x, _ = sf.read(os.path.join(root, spk, w))
    assert np.abs(x).max() < 0.99
    # Active-frame RMS within 3 dB of the -20 dBFS target (or peak-limited).
    n = len(x) // 160
    power = np.mean(x[:n * 160].reshape(n, 160)**2, axis=1)  # 10 ms frames
    active = power[power > power.max() * 1e-4]
    db = 10 * np.log10(np.mean(active))
    assert -23.0 < db < -17.0 or np.abs(x).max() > 0.95


@needs_synth
def test_generic_loader_reads_the_corpus(micro):
  corpora = pytest.importorskip("metatts.data.corpora")
  root, m = micro
  corpus = corpora.load_generic(root)
  assert set(corpus.speakers) == set(m["speakers"])
  assert len(corpus.utterances) == sum(
      v["n_utterances"] for v in m["speakers"].values())
  assert not sum(corpus.skipped.values())
  assert {corpus.speakers[s]["split"] for s in corpus.speakers} == {
      "train", "heldout_seen", "heldout_unseen"}


@needs_synth
def test_cache_skips_unchanged_build(micro, caplog):
  root, m = micro
  before = {p: os.path.getmtime(os.path.join(root, p)) for p in _files(root)}
  with caplog.at_level(logging.INFO, logger="metatts.data.synth"):
    synth.build_corpus(MICRO, root, seed=0, workers=2, progress=False)
  assert "up to date" in caplog.text
  after = {p: os.path.getmtime(os.path.join(root, p)) for p in _files(root)}
  assert before == after


@needs_synth
def test_deterministic_bytes_and_rebuild_on_change(tmp_path, caplog):
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  synth.build_corpus(NANO, a, seed=3, workers=2, progress=False)
  synth.build_corpus(NANO, b, seed=3, workers=1, progress=False)
  fa, fb = _files(a), _files(b)
  assert len(fa) == 2 * sum(
      json.load(open(os.path.join(a, "manifest.json")))["speakers"][s][
          "n_utterances"] for s in os.listdir(a) if not s.endswith(".json"))
  assert fa == fb  # same seed -> same bytes, whatever the worker count
  old_hash = json.load(open(os.path.join(b, "manifest.json")))["build"]["hash"]
  with caplog.at_level(logging.INFO, logger="metatts.data.synth"):
    synth.build_corpus(NANO, b, seed=4, workers=1, progress=False)
  assert "rebuilding" in caplog.text
  new = json.load(open(os.path.join(b, "manifest.json")))
  assert new["build"]["hash"] != old_hash and new["build"]["seed"] == 4
  assert _files(b) != fa
  # Every file on disk belongs to the new build (old ones removed).
  listed = {s for s in new["speakers"]}
  assert {d for d in os.listdir(b) if os.path.isdir(os.path.join(b, d))
          } == listed


@needs_synth
def test_perturbations_change_pitch_rate_and_envelope():
  text = "The old farmer carried a heavy box near the river."
  x = synth.synthesize_base("flite-slt", text)
  feat = synth.analyze(x, 16000, 10.0)

  def render(**kw):
    return synth.resynthesize(
        synth.perturb(feat, synth.Perturbation(**kw), 16000), 16000, 10.0)

  y1, y2 = render(), render(f0_scale=1.25)
  # Independent f0 estimate: WORLD's Harvest (the build uses DIO +
  # StoneMask). librosa.pyin is not used: its numba kernels segfault with
  # numba 0.68.1 + numpy 2.4 here.
  f1, _ = pyworld.harvest(y1, 16000, f0_floor=60.0, f0_ceil=600.0,
                          frame_period=10.0)
  f2, _ = pyworld.harvest(y2, 16000, f0_floor=60.0, f0_ceil=600.0,
                          frame_period=10.0)
  n = min(len(f1), len(f2))
  both = (f1[:n] > 0) & (f2[:n] > 0)
  assert both.sum() > 50
  ratio = np.median(f2[:n][both] / f1[:n][both])
  assert abs(ratio - 1.25) < 0.03, ratio
  # And by hand: autocorrelation pitch of a voiced 64 ms window.
  mid = int(np.flatnonzero(both)[both.sum() // 2]) * 160

  def acf_f0(y):
    w = y[mid:mid + 1024] * np.hanning(1024)
    r = np.correlate(w, w, "full")[1023:]
    lo, hi = 16000 // 600, 16000 // 60
    return 16000 / (lo + np.argmax(r[lo:hi]))

  assert abs(acf_f0(y2) / acf_f0(y1) - 1.25) < 0.1
  # Rate 1.25 shortens the clip by 1/1.25.
  y3 = render(rate=1.25)
  assert abs(len(y3) / len(y1) - 0.8) < 0.02
  # Warp 1.12 moves the spectral envelope up: spectral centroid rises.
  y4 = render(warp=1.12)
  c1 = librosa.feature.spectral_centroid(y=y1, sr=16000).mean()
  c4 = librosa.feature.spectral_centroid(y=y4, sr=16000).mean()
  assert c4 / c1 > 1.04
  # Breathiness raises the aperiodicity floor; tilt -3 dB/oct darkens.
  p = synth.perturb(feat, synth.Perturbation(breathiness=0.4), 16000)
  assert p.ap.min() >= 0.1 - 1e-9 and p.ap.mean() > feat.ap.mean()
  t = synth.perturb(feat, synth.Perturbation(tilt=-3.0), 16000)
  k4k = int(4000 / 8000 * (feat.sp.shape[1] - 1))
  gain = 10 * np.log10(t.sp[:, k4k] / feat.sp[:, k4k])
  np.testing.assert_allclose(gain, -3.0 * 2.0, atol=1e-6)  # 2 octaves


def test_config_errors():
  with pytest.raises(ValueError, match="Unknown synth preset 'huge'"):
    synth.get_config("huge")
  with pytest.raises(ValueError, match=r"Unknown synth config keys \['voicez'"):
    synth.get_config({"voicez": ("flite-awb",)})
  with pytest.raises(ValueError, match="Unknown base voice 'flite-bob'"):
    synth.get_config(dict(MICRO, voices=("flite-awb", "flite-bob")))
  with pytest.raises(ValueError, match="raise sentences_per_voice"):
    synth.get_config(dict(MICRO, utts_per_speaker=(4, 9)))
  with pytest.raises(ValueError, match="heldout_voice"):
    synth.get_config(dict(MICRO, heldout_voice="flite-rms"))
  with pytest.raises(ValueError, match="unseen values"):
    synth.get_config(dict(MICRO, f0_scales_heldout=(1.0,)))
  cfg = synth.get_config(dict(MICRO, voices=["flite-awb", "espeak-us-m3"]))
  assert cfg.voices == ("flite-awb", "espeak-us-m3")
  assert synth.get_config("tiny") is synth.PRESETS["tiny"]


def test_default_preset_size():
  cfg = synth.PRESETS["default"]
  seen = len(cfg.voices) - 1
  n = seen * (cfg.train_per_voice + cfg.heldout_seen_per_voice) + (
      cfg.unseen_speakers)
  assert n >= 100 and cfg.utts_per_speaker == (20, 40)
  plans = synth.plan_speakers(cfg, cfg.voices, seed=0)
  assert len(plans) == n
  assert all(20 <= len(p.sentences) <= 40 for p in plans)
  assert all(len(set(p.sentences)) == len(p.sentences) for p in plans)
  assert len({p.speaker_id for p in plans}) == n
  # Within a voice no two speakers share (f0 scale, warp).
  pairs = collections.Counter((p.voice, p.perturbation.f0_scale,
                               p.perturbation.warp) for p in plans)
  assert max(pairs.values()) == 1
  # A missing voice does not change the other voices' speakers.
  fewer = synth.plan_speakers(cfg, [v for v in cfg.voices if v != "flite-awb"],
                              seed=0)
  assert [p for p in plans if p.voice != "flite-awb"] == fewer


def test_missing_binary_and_voices(monkeypatch, tmp_path, caplog):
  real_which = shutil.which
  monkeypatch.setattr(synth.shutil, "which",
                      lambda b: None if b == "flite" else real_which(b))
  with pytest.raises(FileNotFoundError,
                     match=r"apt-get update && apt-get install -y flite"):
    synth.synthesize_base("flite-awb", "Hello there.")
  monkeypatch.setattr(synth.shutil, "which", lambda b: None)
  with caplog.at_level(logging.WARNING, logger="metatts.data.synth"):
    with pytest.raises(FileNotFoundError,
                       match=r"apt-get install -y espeak-ng .*flite"):
      synth.build_corpus(NANO, str(tmp_path / "x"), progress=False)
  assert "Skipping base voice flite-awb" in caplog.text


@needs_synth
def test_unavailable_voice_is_skipped(monkeypatch, tmp_path, caplog):
  monkeypatch.setitem(synth.VOICES, "espeak-bogus",
                      synth.BaseVoice("espeak", "xx-nonexistent", "espeak-ng"))
  cfg = dict(NANO, voices=("flite-awb", "espeak-bogus", "espeak-us-m3"),
             utts_per_speaker=(2, 2))
  with caplog.at_level(logging.WARNING, logger="metatts.data.synth"):
    root = synth.build_corpus(cfg, str(tmp_path / "c"), workers=1,
                              progress=False)
  assert "Skipping base voice espeak-bogus" in caplog.text
  m = json.load(open(os.path.join(root, "manifest.json")))
  assert "espeak-bogus" in m["build"]["voices_skipped"]
  assert {v["base_voice"] for v in m["speakers"].values()} == {
      "flite-awb", "espeak-us-m3"}


@needs_synth
def test_foreign_output_folder_is_refused(tmp_path):
  (tmp_path / "my_thesis.tex").write_text("do not delete")
  with pytest.raises(ValueError, match="not empty.*pass an empty or new"):
    synth.build_corpus(NANO, str(tmp_path), progress=False)
  assert (tmp_path / "my_thesis.tex").exists()
  assert synth.main(["--preset", "tiny", "--out", str(tmp_path)]) == 2


@needs_synth
def test_features_and_episode_sampler_on_the_corpus(micro, tmp_path):
  corpora = pytest.importorskip("metatts.data.corpora")
  features = pytest.importorskip("metatts.data.features")
  from metatts.data import sampler as smp  # pylint: disable=g-import-not-at-top
  root, m = micro
  train = corpora.load_generic(root).split("train")
  store = features.build_features(train, features.FeatureConfig(),
                                  str(tmp_path / "feat"), progress=False)
  by_spk = store.by_speaker()
  assert set(by_spk) == {s for s, v in m["speakers"].items()
                         if v["split"] == "train"}
  s = smp.EpisodeSampler(by_spk, num_tasks=2, num_support=2, num_query=2,
                         num_buckets=2, seed=0)
  task = s.sample(np.random.default_rng(0))
  assert task.support.mels.shape[:2] == (2, 2)
  assert task.support.mels.shape[-1] == 80
  # 1.5-6 s clips at a 12.5 ms hop.
  assert 100 < task.support.mel_lengths.max() <= task.support.mels.shape[2]
  assert (task.query.token_lengths > 10).all()
