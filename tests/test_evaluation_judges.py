"""Resemblyzer, PocketSphinx and Griffin-Lim judges on real synthetic voices.

Clips come from Debian's flite voices (awb: Scottish male, rms: US male,
slt: US female), which are three clearly different speakers.
"""

import shutil
import subprocess

import numpy as np
import pytest

from metatts.evaluation import _deps, audio_io, eer, secs, vocoding, wer

pytestmark = [
    pytest.mark.skipif(shutil.which("flite") is None,
                       reason="Debian package flite is not installed"),
    pytest.mark.skipif(not (_deps.available("resemblyzer")
                            and _deps.available("pocketsphinx")),
                       reason="pip install 'metatts[evaluation]' is missing"),
]

VOICES = ("awb", "rms", "slt")
SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore every summer.",
    "Please call Stella and ask her to bring these things with her.",
)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
  """{voice: [(wav [S] at 16 kHz, text)]}."""
  root = tmp_path_factory.mktemp("flite")
  out = {}
  for v in VOICES:
    out[v] = []
    for i, text in enumerate(SENTENCES):
      path = root / f"{v}_{i}.wav"
      subprocess.run(["flite", "-voice", v, "-t", text, "-o", str(path)],
                     check=True)
      wav, sr = audio_io.load_wav(str(path))
      assert sr == 16000
      out[v].append((wav, text))
  return out


@pytest.fixture(scope="module")
def embeddings(clips):
  return {v: np.stack([secs.embed_utterance(w, 16000) for w, _ in c])
          for v, c in clips.items()}


def test_same_speaker_more_similar_than_different(embeddings):
  same, diff = [], []
  for a in VOICES:
    for b in VOICES:
      sim = secs.cosine(embeddings[a][:, None], embeddings[b][None])  # [U, U]
      if a == b:
        same += list(sim[~np.eye(len(SENTENCES), dtype=bool)])
      else:
        diff += list(sim.ravel())
  assert min(same) > max(diff), (min(same), max(diff))
  np.testing.assert_allclose(np.linalg.norm(embeddings["slt"], axis=1), 1.0,
                             rtol=1e-5)


def test_speaker_similarity_and_ceilings(clips, embeddings):
  slt = [w for w, _ in clips["slt"]]
  awb = [w for w, _ in clips["awb"]]
  own = secs.speaker_similarity(slt[:1], slt[1:], 16000)
  other = secs.speaker_similarity(awb[:1], slt[1:], 16000)
  assert own.shape == (1,) and own[0] > other[0] + 0.1
  loo = secs.leave_one_out_similarity(embeddings["slt"])
  assert loo[0] == pytest.approx(own[0], abs=1e-5)  # same definition
  with pytest.raises(ValueError, match=">= 2 real clips"):
    secs.leave_one_out_similarity(embeddings["slt"][:1])


def test_real_trials_separate_speakers(embeddings):
  tar, non = eer.leave_one_out_trials(embeddings)
  assert tar.size == 9 and non.size == 18
  assert eer.equal_error_rate(tar, non).eer == 0.0


def test_griffin_lim_keeps_the_speaker(clips, embeddings):
  wav = clips["rms"][0][0]
  voc = vocoding.vocode_real(wav, 16000, n_iter=16)
  assert voc.shape == wav.shape
  again = vocoding.vocode_real(wav, 16000, n_iter=16)
  np.testing.assert_array_equal(voc, again)  # seeded initial phase
  e = secs.embed_utterance(voc, 16000)
  enroll = {v: secs.speaker_embedding(embeddings[v][1:]) for v in VOICES}
  sims = {v: float(secs.cosine(e, enroll[v])) for v in VOICES}
  assert max(sims, key=sims.get) == "rms", sims


def test_pocketsphinx_recognizes_clear_speech(clips):
  wavs = [w for w, _ in clips["slt"]]
  texts = [t for _, t in clips["slt"]]
  score, hyps = wer.wer_of_clips(wavs, texts, 16000)
  assert score < 0.25, hyps
  # A clip against the wrong text scores far worse.
  assert wer.word_error_rate(texts[1], hyps[0]) > 0.7
  assert wer.get_decoder() is wer.get_decoder()  # loaded once


def test_transcript_does_not_depend_on_the_clips_decoded_before(clips):
  """Each clip is decoded as by a fresh decoder (the parallel judge relies on
  it); PocketSphinx's carried-over CMN would change a quiet, noisy clip's
  words after a loud one."""
  loud = clips["awb"][0][0]
  w = clips["awb"][1][0]
  quiet = 0.05 * w + 0.003 * np.random.default_rng(0).normal(size=w.size)
  first = wer.transcribe(quiet, 16000)
  wer.transcribe(loud, 16000)
  assert wer.transcribe(quiet, 16000) == first
  ps = _deps.require("pocketsphinx")
  dec = ps.Decoder(samprate=16000, loglevel="FATAL", maxhmmpf=3000, maxwpf=10)
  dec.start_utt()
  dec.process_raw((np.clip(quiet, -1.0, 1.0) * 32767.0).astype("<i2").tobytes(),
                  full_utt=True)
  dec.end_utt()
  fresh = dec.hyp()
  assert first == ("" if fresh is None else fresh.hypstr)


def test_encoder_loaded_once_and_rejects_silence():
  assert secs.get_encoder() is secs.get_encoder()
  rng = np.random.default_rng(0)
  with pytest.raises(ValueError, match="all zeros"):
    secs.embed_utterance(np.zeros(16000), 16000, "silent.wav")
  with pytest.raises(ValueError, match="silent.wav"):
    secs.embed_utterance(1e-4 * rng.normal(size=800) + 0, 16000, "silent.wav")


@pytest.mark.skipif(not (_deps.available("speechmos")
                         and _deps.available("onnxruntime")),
                    reason="optional: pip install speechmos onnxruntime")
def test_dnsmos_prefers_clean_speech(clips):
  from metatts.evaluation import naturalness
  wav = clips["slt"][0][0]
  clean = naturalness.dnsmos(wav, 16000)
  noisy = naturalness.dnsmos(
      np.clip(wav + 0.1 * np.random.default_rng(0).normal(size=wav.size), -1,
              1), 16000)
  assert 1.0 <= noisy < clean <= 5.0
