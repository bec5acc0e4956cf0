"""The learned aligner against the synthesizer's own word timings.

An independent check of ``metatts.models.aligner`` (issue 11, item 4): the
RAD-TTS aligner of a 'tiny' duration-based Tacotron is trained through
``DurationTacotron.align`` (the model's symbol embedding and mel
normalization feeding it) on the aligner's losses only (forward-sum, with
the binarization loss phased in; ``benchmarks/aligner_timings.py``) for
300 steps on a small flite corpus built here, then its hard MAS
durations of held-out clips are scored with the word-boundary metric
(``metatts.evaluation.alignment``) against flite's own word ends.

Token units: espeak-ng IPA phonemes (the model's input), compared at word
ends, since flite's CMU phones have no one-to-one map to IPA characters (see
the metric's module docstring).

Held out: one speaker per voice that the aligner never trains on (a
``heldout_seen`` speaker: a voice it knows, with pitch, formant, rate,
breathiness and tilt perturbations from the held-out grids, which interleave
the training ones), reading
sentences that no training clip reads (training clips of those sentences are
dropped). The corpus build (120 clips) and the training take about 20 s each
on an idle 2-core CPU.
"""

import os
import shutil
import sys

import pytest

from metatts.data import corpora, features, synth
from metatts.evaluation import alignment as al

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "benchmarks"))
import aligner_timings  # pylint: disable=g-import-not-at-top,wrong-import-position

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("flite") is None,
                       reason="flite not installed (apt-get install flite)"),
]

# 3 flite voices x (4 training + 1 held-out speaker) x 8 clips of 3-6 words;
# each voice reads 40 of 200 sentences, so a held-out speaker's 8 sentences
# remove only a few training clips. (flite-rms is the unseen voice the config
# needs; it gets no speakers.)
CORPUS = dict(
    name="aligner-timed", voices=("flite-awb", "flite-slt", "flite-kal16",
                                  "flite-rms"),
    heldout_voice="flite-rms", n_sentences=200, sentences_per_voice=40,
    min_words=3, max_words=6, train_per_voice=4, heldout_seen_per_voice=1,
    unseen_speakers=0, utts_per_speaker=(8, 8))
STEPS = 300
HOP, SR = 200, 16000


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
  root = synth.build_corpus(CORPUS, str(tmp_path_factory.mktemp("corpus")),
                            seed=0, workers=2, progress=False)
  store = features.build_features(
      corpora.load_generic(root), features.FeatureConfig(symbols="phonemes"),
      str(tmp_path_factory.mktemp("features")), progress=False)
  train, held = aligner_timings.split_examples(store)
  return store, train, held


@pytest.fixture(scope="module")
def trained(examples):
  store, train, held = examples
  model = aligner_timings.train_aligner(
      train, features.FeatureConfig(symbols="phonemes").num_symbols,
      steps=STEPS, seed=0)
  return model, aligner_timings.hard_durations(model, held)


def test_held_out_clips_are_new_speakers_reading_new_sentences(examples):
  store, train, held = examples
  split = {s: m["split"] for s, m in store.speakers.items()}
  assert len(held) == 24 and all(e.timings is not None for e in held)
  assert {split[e.speaker] for e in held} == {"heldout_seen"}
  assert {split[e.speaker] for e in train} == {"train"}
  assert not {e.text for e in held} & {e.text for e in train}
  assert len(train) >= 60


def test_learned_alignment_beats_uniform_on_held_out_clips(examples,
                                                           trained):
  _, _, held = examples
  _, durations = trained
  for d, e in zip(durations, held):  # MAS: every token >= 1 frame, all used
    assert d.shape == e.tokens.shape and d.min() >= 1
    assert d.sum() == e.mel.shape[0]
  scores = aligner_timings.score(durations, held, HOP, SR)
  learned, uniform = scores.learned, scores.uniform
  assert learned.num_skipped == 0 and learned.num_utterances == len(held)
  assert learned.num_boundaries == uniform.num_boundaries > 100
  # Measured with 300 steps: 23.4 ms median (seeds 1 and 2: 33.2 and 23.6;
  # 400 steps: 23.4 and 28.6) against 46.8 ms for the uniform alignment of
  # the same clips. The aim is 20 ms; this CPU-test-sized training
  # does not reach it (docs/evaluation.md has the 5-minute run on the
  # default corpus), so the bounds are what it reaches across seeds: below
  # 35 ms and at least 25% below uniform (35.1 ms here). The uniform
  # alignment (46.75 ms) fails both.
  assert learned.median_ms < 35.0, scores
  assert learned.median_ms < 0.75 * uniform.median_ms, scores
  # The reference durations are the quantization floor (<= half a hop).
  assert scores.floor.median_ms <= 6.25


def test_uniform_durations_fail_the_absolute_bound(examples):
  """The alignment that knows nothing is far above the 35 ms bound."""
  _, _, held = examples
  uniform = [al.uniform_durations(len(e.tokens), len(e.mel)) for e in held]
  stats = aligner_timings.score(uniform, held, HOP, SR).learned
  assert stats.median_ms > 40.0, stats

