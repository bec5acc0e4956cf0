"""Tests for the synthesizers' timings and the word-boundary metric.

``metatts.data.synth`` records flite's and festival's own word/phone end
times; ``metatts.evaluation.alignment`` scores an alignment against them.
The real-clip tests build a 14-clip corpus (flite, festival, espeak-ng voices;
speaking rates 0.85 and 1.15, so the timings go through the time stretch)
in a temporary folder: about 15 s.
"""

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from metatts.audio import text as atext
from metatts.data import corpora, features, synth
from metatts.evaluation import alignment as al

from test_synth import built_corpus

HOP, SR = 200, 16000
HOP_MS = 1000.0 * HOP / SR

needs_synth = pytest.mark.skipif(
    any(shutil.which(b) is None for b in ("flite", "text2wave", "espeak-ng")),
    reason="flite/festival/espeak-ng not installed "
    "(apt-get install flite festival festvox-kallpc16k espeak-ng)")

TIMED = dict(
    name="timed",
    voices=("flite-slt", "flite-kal16", "festival-kal", "espeak-us-m3"),
    heldout_voice="espeak-us-m3", n_sentences=12, sentences_per_voice=2,
    min_words=5, max_words=9, train_per_voice=2, heldout_seen_per_voice=0,
    unseen_speakers=1, utts_per_speaker=(2, 2), rates=(0.85, 1.15))


def _ids(text, symbols="characters"):
  return atext.text_to_ids(text, symbols)


# ---------------------------------------------------------------------------
# The metric on hand-made inputs.


def test_word_token_ends_characters():
  tokens = _ids("Hi, don't go.")  # h i , _ d o n ' t _ g o . EOS
  assert atext.ids_to_text(tokens) == "hi, don't go."
  np.testing.assert_array_equal(al.word_token_ends(tokens, "characters"),
                                [1, 8, 11])
  # Trailing padding and EOS are no words.
  padded = np.concatenate([tokens, np.zeros(5, np.int32)])
  np.testing.assert_array_equal(al.word_token_ends(padded, "characters"),
                                [1, 8, 11])


@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="espeak-ng not installed")
def test_word_token_ends_phonemes_follow_spaces():
  tokens = _ids("Please carry the old box.", "phonemes")
  ipa = atext.ids_to_text(tokens, "phonemes")
  words = ipa.rstrip(".").split(" ")
  ends = al.word_token_ends(tokens, "phonemes")
  assert len(ends) == len(words) == 5
  # The last token of each word is its last IPA character.
  for w, e in zip(words, ends):
    assert atext.PHONEMES.symbols[tokens[e]] == w[-1]


def test_word_end_times_by_hand():
  tokens = _ids("ab cd.")  # a b _ c d . EOS
  d = np.array([2, 3, 1, 4, 2, 1, 1])
  # "ab" ends after 5 frames: boundary between frames 4 and 5, at 4.5 hops;
  # "cd" after 2+3+1+4+2 = 12 frames, at 11.5 hops.
  np.testing.assert_allclose(
      al.word_end_times(d, tokens, "characters", HOP, SR),
      [4.5 * HOP / SR, 11.5 * HOP / SR])
  err = al.word_boundary_errors(d, tokens, "characters",
                                [0.050, 0.150], HOP, SR, signed=True)
  np.testing.assert_allclose(err, [56.25 - 50.0, 143.75 - 150.0])
  assert al.word_boundary_errors(d, tokens, "characters", [0.05], HOP,
                                 SR) is None


@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="espeak-ng not installed")
def test_words_espeak_joins_are_matched_to_the_reference():
  text = "There was a little blanket in the garden."
  tokens = _ids(text, "phonemes")
  words = tuple(text.rstrip(".").split())
  # espeak-ng writes "ðɛɹwˌʌz ɐ lˈɪɾəl blˈæŋkɪt ɪnðə ɡˈɑːɹdən": 6 words, 8 said.
  assert al.word_token_ends(tokens, "phonemes").size == 6
  pairs = al.match_words(tokens, "phonemes", words)
  np.testing.assert_array_equal(
      pairs, [[0, 1], [1, 2], [2, 3], [3, 4], [4, 6], [5, 7]])
  ends = 0.1 * np.arange(1, 9)  # inside the 100 frames (1.25 s)
  timings = corpora.Timings(words, ends, ("pau",), np.array([0.9]))
  d = al.durations_from_word_ends(tokens, "phonemes", timings, 100, HOP, SR)
  err = al.word_boundary_errors(d, tokens, "phonemes", timings, HOP, SR)
  assert err.shape == (6,) and err.max() <= HOP_MS / 2 + 1e-9
  # Bare end times cannot be matched: skipped.
  assert al.word_boundary_errors(d, tokens, "phonemes", ends, HOP, SR) is None
  # Words that are not what was said: no pairing.
  assert al.match_words(tokens, "phonemes", (
      "Seven", "quick", "zebras", "jumped", "over", "many", "foxes",
      "today")) is None


def test_character_words_are_matched_too():
  tokens = _ids("Hi, don't go.")
  np.testing.assert_array_equal(
      al.match_words(tokens, "characters", ["hi", "do", "nt", "go"]),
      [[0, 0], [1, 2], [2, 3]])


def test_durations_from_alignment_hard_soft_and_padding():
  rng = np.random.default_rng(0)
  d = np.array([3, 1, 0, 4, 2])
  t, l = int(d.sum()), d.size
  hard = np.zeros((t + 3, l + 2))  # 3 padded frames, 2 padded tokens
  hard[np.arange(t), np.repeat(np.arange(l), d)] = 1.0
  hard[t:, -1] = 1.0  # padding frames point at a padding token
  np.testing.assert_array_equal(
      al.durations_from_alignment(hard, num_frames=t, num_tokens=l)[:l], d)
  soft = np.exp(4.0 * hard + 0.3 * rng.standard_normal(hard.shape))
  soft /= soft.sum(axis=1, keepdims=True)
  out = al.durations_from_alignment(soft[None], num_frames=t, num_tokens=l)
  np.testing.assert_array_equal(out, np.concatenate([d, [0, 0]]))
  with pytest.raises(ValueError, match=r"\[T, L\]"):
    al.durations_from_alignment(np.zeros(5))


def test_uniform_durations_and_summary():
  np.testing.assert_array_equal(al.uniform_durations(4, 10), [3, 3, 2, 2])
  stats = al.summarize([np.array([1.0, 3.0]), None, np.array([10.0])])
  assert stats.median_ms == 3.0 and stats.num_boundaries == 3
  assert stats.num_utterances == 2 and stats.num_skipped == 1
  assert np.isnan(al.summarize([None]).median_ms)


# ---------------------------------------------------------------------------
# Real clips from the corpus builder.


@pytest.fixture(scope="module")
def timed_corpus(tmp_path_factory):
  return built_corpus(TIMED, tmp_path_factory.mktemp("timed"))


@pytest.fixture(scope="module")
def timed_examples(timed_corpus, tmp_path_factory):
  corpus = corpora.load_generic(timed_corpus[0])
  store = features.build_features(
      corpus, features.FeatureConfig(symbols="phonemes"),
      str(tmp_path_factory.mktemp("feat")), progress=False)
  return [ex for ex in store.examples if ex.timings is not None]


def _frame_db(audio, sr, hop_s=0.005):
  hop = int(hop_s * sr)
  n = audio.size // hop
  rms = np.sqrt(np.mean(audio[:n * hop].reshape(n, hop)**2, axis=1) + 1e-20)
  return 20 * np.log10(rms / rms.max()), hop_s


@needs_synth
def test_manifest_records_timings_of_flite_and_festival(timed_corpus):
  root, manifest = timed_corpus
  summary = manifest["timings"]
  assert summary["version"] == synth.TIMINGS_VERSION
  assert summary["voices_with_timings"] == ["festival-kal", "flite-kal16",
                                            "flite-slt"]
  assert summary["utterances_with_timings"] == 12  # 6 speakers x 2 clips
  assert summary["utterances_without"] == 2  # espeak-ng: none
  for utt, rec in manifest["utterances"].items():
    assert rec["speaker"] == utt.rsplit("_", 1)[0]
    assert manifest["speakers"][rec["speaker"]]["engine"] != "espeak"
    with open(os.path.join(root, rec["speaker"], utt + ".txt"),
              encoding="utf-8") as f:
      text = f.read()
    assert [w.lower() for w in rec["words"]] == [
        w.strip(",.?").lower() for w in text.split()]


@needs_synth
def test_timings_match_the_audio(timed_corpus):
  """Every word holds speech, speech is over after the last word, and the
  synthesizer's pauses between words are silent in the perturbed clip.

  The clips are time-stretched by 1/0.85 or 1/1.15: times not mapped through
  the rate change would be off by 100-400 ms at the end and fail this.
  """
  root, manifest = timed_corpus
  rates = set()
  for utt, rec in manifest["utterances"].items():
    rates.add(manifest["speakers"][rec["speaker"]]["rate"])
    audio, sr = sf.read(os.path.join(root, rec["speaker"], utt + ".wav"))
    dur = audio.size / sr
    ends = np.asarray(rec["word_ends"])
    assert np.all(np.diff(ends) > 0) and 0 < ends[0] and ends[-1] <= dur
    p_ends = np.asarray(rec["phone_ends"])
    assert np.all(np.diff(p_ends) > 0) and p_ends[-1] <= dur + 1e-9
    assert set(ends) <= set(p_ends)  # a word ends where a phone ends
    db, hop_s = _frame_db(audio, sr)
    starts = np.concatenate([[0.0], ends[:-1]])
    for w, s, e in zip(rec["words"], starts, ends):
      assert db[int(s / hop_s):int(e / hop_s) + 1].max() > -25.0, (utt, w)
    assert db[int((ends[-1] + 0.03) / hop_s):].max() < -30.0, utt
    p_starts = np.concatenate([[0.0], p_ends[:-1]])
    for k, (p, s, e) in enumerate(zip(rec["phones"], p_starts, p_ends)):
      if p == "pau" and 0 < k < len(p_ends) - 1 and e - s > 0.08:
        mid = db[int((s + 0.25 * (e - s)) / hop_s):int(
            (s + 0.75 * (e - s)) / hop_s)]
        assert mid.max() < -30.0, (utt, k)
  assert rates == {0.85, 1.15}


@needs_synth
def test_examples_carry_timings_on_the_mel_clock(timed_corpus, timed_examples):
  assert len(timed_examples) == 12
  root, manifest = timed_corpus
  for ex in timed_examples:
    rec = manifest["utterances"][ex.utt_id]
    shift = np.asarray(rec["word_ends"]) - ex.timings.word_ends
    # One trim offset for the whole clip (at most the synth's 50 ms margin),
    # except where the cache's trimming cut the clip's end: clamped there.
    end = ex.timings.phone_ends[-1]
    assert end <= ex.mel.shape[0] * HOP / SR
    inside = ex.timings.word_ends < end
    np.testing.assert_allclose(shift[inside], shift[0], atol=1e-9)
    assert 0.0 <= shift[0] <= 0.05
    assert np.all(ex.timings.word_ends[~inside] == end)


@needs_synth
def test_reference_durations_score_within_half_a_hop(timed_examples):
  errs = []
  for ex in timed_examples:
    d = al.durations_from_word_ends(ex.tokens, "phonemes", ex.timings,
                                    ex.mel.shape[0], HOP, SR)
    if d is None:
      errs.append(None)
      continue
    assert d.sum() == ex.mel.shape[0]
    errs.append(al.word_boundary_errors(d, ex.tokens, "phonemes",
                                        ex.timings, HOP, SR))
  stats = al.summarize(errs)
  # espeak-ng's joined words ("ɪnðə") are matched, so nothing is skipped.
  assert stats.num_utterances == 12 and stats.num_skipped == 0
  assert max(np.max(e) for e in errs if e is not None) <= HOP_MS / 2 + 1e-6


@needs_synth
def test_uniform_alignment_fails_the_20ms_aim(timed_examples):
  errs = [al.word_boundary_errors(
      al.uniform_durations(ex.tokens.size, ex.mel.shape[0]), ex.tokens,
      "phonemes", ex.timings, HOP, SR) for ex in timed_examples]
  stats = al.summarize(errs)
  assert stats.num_utterances == 12
  assert stats.median_ms > 20.0, stats


@needs_synth
def test_shifting_boundaries_by_k_frames_moves_errors_by_k_hops(
    timed_examples):
  for ex in timed_examples:
    d = al.durations_from_word_ends(ex.tokens, "phonemes", ex.timings,
                                    ex.mel.shape[0], HOP, SR)
    if d is None:
      continue
    base = al.word_boundary_errors(d, ex.tokens, "phonemes", ex.timings, HOP,
                                   SR, signed=True)
    for k in (1, 3, -min(2, d[0])):
      moved = d.copy()
      moved[0] += k  # every word end moves k frames
      err = al.word_boundary_errors(moved, ex.tokens, "phonemes", ex.timings,
                                    HOP, SR, signed=True)
      np.testing.assert_allclose(err - base, k * HOP_MS, atol=1e-9)


@needs_synth
def test_existing_build_gets_timings_without_resynthesis(timed_corpus,
                                                         tmp_path, caplog):
  src, manifest = timed_corpus
  out = tmp_path / "old"
  shutil.copytree(src, out)
  old = dict(manifest)
  del old["utterances"], old["timings"]  # a build from before timings
  with open(out / "manifest.json", "w", encoding="utf-8") as f:
    json.dump(old, f)
  wavs = sorted(out.glob("*/*.wav"))
  stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in wavs}
  synth.build_corpus(TIMED, str(out), seed=0, workers=1, progress=False)
  with open(out / "manifest.json", encoding="utf-8") as f:
    upgraded = json.load(f)
  assert upgraded["utterances"] == manifest["utterances"]
  assert upgraded["timings"]["n_problems"] == 0
  assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in wavs} == stamps

  # A clip that is not what the synthesizer gives now: its voice gets none.
  del upgraded["timings"]
  with open(out / "manifest.json", "w", encoding="utf-8") as f:
    json.dump(upgraded, f)
  victim = next(p for p in wavs if p.parent.name.startswith("flite-slt"))
  audio, sr = sf.read(victim, dtype="int16")
  sf.write(victim, audio[:-160], sr, subtype="PCM_16")
  summary = synth.add_timings(str(out), workers=1, progress=False)
  assert summary["n_problems"] == 1
  assert summary["voices_with_timings"] == ["festival-kal", "flite-kal16"]


# ----------------------------------------------------------------------------
# alignment_shape: closed forms.


def test_alignment_shape_of_hard_diagonal_antidiagonal_and_stuck_paths():
  n = 11
  diag = np.eye(n, dtype=np.float32)
  s = al.alignment_shape(diag)
  assert (s.monotonic, s.diagonal_deviation, s.coverage) == (1.0, 0.0, 1.0)
  # Reversed: every move goes back; |1 - 2t/(n-1)| averages to 6/11 for n=11.
  s = al.alignment_shape(diag[::-1])
  assert s.monotonic == 0.0 and s.coverage == 1.0
  np.testing.assert_allclose(s.diagonal_deviation,
                             np.mean(np.abs(1 - 2 * np.arange(n) / (n - 1))))
  # Stuck on the first symbol (attention keeps a little weight on the
  # others; exact zeros would be padding): |t/(T-1)| averages to 1/2, 1 of n
  # symbols covered.
  stuck = np.full((n, n), 1e-3, np.float32)
  stuck[:, 0] = 1
  s = al.alignment_shape(stuck)
  assert s.monotonic == 1.0 and s.coverage == 1 / n
  np.testing.assert_allclose(s.diagonal_deviation, 0.5)


def test_alignment_shape_drops_padding_and_durations_stretch_the_path():
  # Durations (2, 3, 1) over 6 frames, padded to 9 frames x 5 symbols.
  a = np.zeros((9, 5), np.float32)
  for t, j in enumerate([0, 0, 1, 1, 1, 2]):
    a[t, j] = 1
  s = al.alignment_shape(a)
  j = np.array([0, 0, 1, 1, 1, 2]) / 2
  np.testing.assert_allclose(s.diagonal_deviation,
                             np.mean(np.abs(j - np.arange(6) / 5)))
  assert s.monotonic == 1.0 and s.coverage == 1.0
  with pytest.raises(ValueError, match="no non-zero"):
    al.alignment_shape(np.zeros((3, 3)))
  with pytest.raises(ValueError, match="expected"):
    al.alignment_shape(np.zeros(3))


def test_workdir_shapes_reads_the_samples_layout(tmp_path, capsys):
  for method, steps, a in (("transfer", 0, np.eye(4)),
                           ("transfer", 5, np.eye(4)[::-1]),
                           ("meta-fomaml", 5, np.eye(4))):
    folder = tmp_path / "samples" / method / "shots_5" / f"steps_{steps}" / "spk"
    folder.mkdir(parents=True)
    np.save(folder / "u1.align.npy", a)
  shapes = al.workdir_shapes(str(tmp_path))
  assert sorted(shapes) == ["meta-fomaml", "transfer"]
  assert shapes["transfer"][5][0].monotonic == 1.0
  assert shapes["transfer"][5][5].monotonic == 0.0
  assert al.main([str(tmp_path)]) == 0
  out = capsys.readouterr().out
  assert "| transfer | 5 | 5 | 1 | 0.000 |" in out
  assert al.main([str(tmp_path / "nothing")]) == 2
