"""Tests of the few-shot facade ``metatts.api`` on a tiny exported model.

The model is a randomly initialised tiny Tacotron exported with
``metatts.training.export`` (8 kHz, 20 mel bins) so that compiling the
adaptation and inference takes seconds. The checks are against independent
computations: the support loss recomputed with ``model.loss`` outside the
jitted loop, the loss of an unpadded batch, a hand-written Meta-SGD step.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from metatts import api
from metatts import functional
from metatts.data.features import FeatureConfig
from metatts.models import build_model
from metatts.training import export
from metatts.types import TTSBatch

SR = 8000
FEATURES = FeatureConfig(sample_rate=SR, n_fft=256, win_length=200,
                         hop_length=80, n_mels=20, fmin=0.0, fmax=4000.0,
                         max_frames=200, max_tokens=64)
MODEL = dict(num_symbols=FEATURES.num_symbols, num_mels=20, num_speakers=4,
             speaker_dim=8, embed_dim=16, encoder_dim=16, encoder_num_convs=1,
             attention_dim=16, location_filters=4, location_kernel_size=5,
             prenet_dims=(16, 16), attention_rnn_dim=32, decoder_rnn_dim=32,
             postnet_dim=16, postnet_num_convs=1, max_frames=200,
             max_tokens=64)
ADAPT = dict(filter="speaker+decoder", optimizer="adam", lr=3e-3,
             default_steps=6, speaker_slot=3)
TEXTS = ["Hello there.", "A short one!", "Meta learning.", "Five clips.",
         "Speak to me."]


def tone(f0, seconds, seed=0, level=0.3):
  """A speech-like clip: harmonics of ``f0`` with a 4 Hz syllable envelope."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * SR)) / SR
  env = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
  x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 6))
  x = level * env * x / 2 + 0.005 * rng.standard_normal(t.shape)
  return x.astype(np.float32)


def random_params(seed=0, **overrides):
  """A tiny Tacotron's config and random params, without running its init.

  ``overrides`` change fields of ``MODEL`` (e.g. a zeroshot Tacotron's
  ``use_speaker_table=False, external_speaker_dim=D``).

  The eager NNX initialisation compiles one kernel per op and shape (15 s of
  CPU here); the API does not care how the values were drawn, so they come
  from numpy: kernels ~ N(0, 1/fan_in), embeddings ~ N(0, 0.3^2), LayerNorm
  scales 1, biases 0.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  model = nnx.eval_shape(lambda: build_model("tacotron",
                                             dict(MODEL, **overrides), 0))
  _, shapes, _ = functional.split(model)
  rng = np.random.default_rng(seed)

  def draw(path, x):
    name = functional.path_keys(path)[-1]
    if name == "scale":
      return np.ones(x.shape, np.float32)
    if name == "bias":
      return np.zeros(x.shape, np.float32)
    if name == "embedding":
      return (0.3 * rng.standard_normal(x.shape)).astype(np.float32)
    fan_in = int(np.prod(x.shape[:-1])) or 1
    return (rng.standard_normal(x.shape) / np.sqrt(fan_in)).astype(np.float32)

  return model.config, jax.tree_util.tree_map_with_path(draw, shapes)


def make_export(directory, *, seed=0, adapt=None, extra=None,
                method="meta-maml"):
  """Exports a tiny random Tacotron as ``directory/<method>/model``."""
  config, params = random_params(seed)
  path = export.export_model(
      os.path.join(directory, method, "model"), method=method,
      model_name="tacotron", model_config=config, params=params,
      feature_config=FEATURES, symbols="characters",
      speakers=["s0", "s1", "s2"], adapt=adapt or ADAPT, extra=extra)
  with open(os.path.join(directory, "run.json"), "w") as f:
    json.dump({"methods": [method], "primary": method}, f)
  return path, params


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("workdir"))
  make_export(wd)
  return wd


@pytest.fixture(scope="module")
def tts(workdir):
  return api.load(workdir)


@pytest.fixture(scope="module")
def clips():
  return [tone(110 + 25 * i, 0.7 + 0.1 * i, seed=i) for i in range(5)]


@pytest.fixture(scope="module")
def loss_jit(tts):
  """``model.loss`` outside the adaptation loop (an independent path)."""
  return jax.jit(functional.make_loss_fn(tts.graphdef, tts.rest))


@pytest.fixture(scope="module")
def voice(tts, clips):
  return tts.adapt(clips, TEXTS, steps=6, seed=0, sample_rate=SR)


# ---------------------------------------------------------------------------
# Loading.


def test_load_resolves_workdir_method_and_export(workdir, tts):
  model_dir = os.path.join(workdir, "meta-maml", "model")
  for path in (workdir, os.path.join(workdir, "meta-maml"), model_dir):
    assert api.resolve_model_dir(path) == model_dir
  assert tts.model_dir == model_dir
  assert tts.vocoder.name == "griffin-lim"  # no WORKDIR/vocoder/model
  assert tts.speaker_slot == 3 and tts.filter_name == "speaker+decoder"
  assert tts.symbols.name == "characters"
  assert tts.feature_config == FEATURES
  with pytest.raises(FileNotFoundError, match="WORKDIR/<method>/model"):
    api.resolve_model_dir(os.path.join(workdir, "nope"))
  with pytest.raises(FileNotFoundError, match="No exported model"):
    api.load(os.path.dirname(workdir))


# ---------------------------------------------------------------------------
# Adaptation.


def test_adapt_losses_match_model_loss_and_decrease(tts, clips, voice,
                                                    loss_jit):
  steps = 6
  assert voice.losses.shape == (steps + 1,)
  assert np.all(np.isfinite(voice.losses))
  assert voice.losses[-1] < voice.losses[0]
  assert np.all(np.diff(voice.losses) < 0)  # Adam on a fixed support set
  # Independent: the same batch through model.loss outside the jitted loop.
  batch = tts.make_batch(tts.prepare_clips(clips, TEXTS, SR), seed=0)
  before, _ = loss_jit(tts.params, batch)
  after, _ = loss_jit(voice.params, batch)
  np.testing.assert_allclose(voice.losses[0], before, rtol=1e-5)
  np.testing.assert_allclose(voice.losses[-1], after, rtol=1e-5)
  # Only the exported filter's groups moved; the new voice is row 3.
  changed = {}
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(tts.params),
                          jax.tree_util.tree_leaves(voice.params)):
    group = functional.group_of(path)
    changed[group] = changed.get(group, False) or not np.array_equal(a, b)
  assert changed == {"encoder": False, "attention": False, "postnet": False,
                     "speaker": True, "decoder": True}
  table = np.asarray(tts.params["speaker"]["table"]["embedding"])
  new_table = np.asarray(voice.params["speaker"]["table"]["embedding"])
  np.testing.assert_array_equal(table[:3], new_table[:3])
  assert not np.array_equal(table[3], new_table[3])
  assert voice.info["clips"][0] == "clip 0 (array)"
  assert voice.info["steps"] == steps and voice.speaker_slot == 3


def test_adam_runs_every_step_count_uninterrupted(tts, clips, voice):
  """``voice.adapt`` (what ``TTS.adapt`` and the evaluation run) with Adam.

  With Adam (this export's protocol) 6 steps must be one uninterrupted run,
  also when 6 is a snapshot of a curve: restarting the optimizer after
  ``CHUNK`` = 5 steps (what the evaluation once did) gives other
  parameters, which the last assertion shows.
  """
  from metatts import voice as voice_lib  # pylint: disable=g-import-not-at-top
  batch = tts.make_batch(tts.prepare_clips(clips, TEXTS, SR), seed=0)
  curve = voice_lib.adapt(tts, tts.params, batch, (0, 5, 6))
  for a, b in zip(jax.tree_util.tree_leaves(curve.params[6]),
                  jax.tree_util.tree_leaves(voice.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(curve.losses[6], voice.losses)
  np.testing.assert_array_equal(curve.losses[0], voice.losses[:1])
  assert voice_lib.CHUNK < 6
  restarted, _ = tts._adapt_jit(tts.params, None, tts.rest, batch,  # pylint: disable=protected-access
                                num_steps=voice_lib.CHUNK)
  restarted, _ = tts._adapt_jit(restarted, None, tts.rest, batch,  # pylint: disable=protected-access
                                num_steps=6 - voice_lib.CHUNK)
  gap = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
            for a, b in zip(jax.tree_util.tree_leaves(restarted),
                            jax.tree_util.tree_leaves(voice.params)))
  assert gap > 1e-4


def test_bucket_padding_leaves_the_loss_unchanged(tts, clips, loss_jit):
  prepared = tts.prepare_clips(clips, TEXTS, SR)
  padded = tts.make_batch(prepared, seed=0)
  lt = max(c.tokens.shape[0] for c in prepared)
  lf = max(c.mel.shape[0] for c in prepared)
  assert padded.tokens.shape[1] % api.TOKEN_BUCKET == 0
  assert padded.mels.shape[1] % api.FRAME_BUCKET == 0
  assert padded.tokens.shape[1] > lt and padded.mels.shape[1] > lf
  tight = TTSBatch(padded.tokens[:, :lt], padded.token_lengths,
                   padded.mels[:, :lf], padded.mel_lengths,
                   padded.speaker_ids, padded.seeds)
  np.testing.assert_allclose(loss_jit(tts.params, padded)[0],
                             loss_jit(tts.params, tight)[0], rtol=2e-5)


def test_adapt_does_not_recompile_for_same_shapes(tts, clips, voice):
  del voice  # compiled the 5-clip, 6-step adaptation
  before = tts.adapt_traces
  other = [tone(200 + 30 * i, 0.75 + 0.1 * i, seed=10 + i) for i in range(5)]
  texts = ["Other words.", "Different one.", "Third clip!", "And fourth.",
           "Last of all."]
  v2 = tts.adapt(other, texts, steps=6, seed=3, sample_rate=SR)
  assert tts.adapt_traces == before
  assert np.all(np.isfinite(v2.losses))


def test_adapt_from_files_equals_adapt_from_arrays(tts, clips, voice,
                                                   tmp_path):
  paths = []
  for i, clip in enumerate(clips):
    path = str(tmp_path / f"c{i}.wav")
    sf.write(path, clip, SR, subtype="FLOAT")
    paths.append(path)
  from_files = tts.adapt(paths, TEXTS, steps=6, seed=0)
  np.testing.assert_allclose(from_files.losses, voice.losses, rtol=1e-5)
  assert from_files.info["clips"] == paths


def test_learned_rates_layout_is_recognised(tmp_path):
  """Meta-SGD / MAML++ inner rates: per parameter, per layer or per step."""
  adapt = dict(ADAPT, optimizer="sgd", lr=0.5)
  _, params = random_params()
  mask = jax.tree_util.tree_leaves(functional.mask_from_filter(
      params, functional.filter_for(adapt["filter"])))
  adapted = [x for x, m in zip(jax.tree_util.tree_leaves(params), mask) if m]
  layouts = {
      False: [np.full(x.shape, 0.01, np.float32) for x in adapted],
      "layer": [np.float32(0.01) for _ in adapted],
      True: [np.full((4,), 0.01, np.float32) for _ in adapted],
  }
  for per_step, rates in layouts.items():
    make_export(str(tmp_path / str(per_step)), adapt=adapt, extra=rates)
    tts = api.load(str(tmp_path / str(per_step)))
    assert len(tts.lrs) == len(adapted)
    assert tts._per_step_lrs == (per_step is True)  # pylint: disable=protected-access
    # Learned rates scale the plain gradient (Meta-SGD): the optimizer's own
    # rate is 1, not the exported lr.
    assert tts._adapt_key[3] == 1.0  # pylint: disable=protected-access
  make_export(str(tmp_path / "bad"), adapt=adapt, extra=layouts[False][:-1])
  with pytest.raises(ValueError, match="learned inner learning rates"):
    api.load(str(tmp_path / "bad"))


# ---------------------------------------------------------------------------
# Synthesis and saving.


def test_synthesize_returns_finite_audio_matching_the_mel(voice):
  audio, sr, mel = voice.synthesize("Hello world. How are you?", seed=0,
                                    return_mel=True)
  assert sr == SR and audio.dtype == np.float32 and audio.ndim == 1
  assert np.all(np.isfinite(audio)) and np.max(np.abs(audio)) <= 0.99 + 1e-6
  assert mel.shape[1] == FEATURES.n_mels and np.all(np.isfinite(mel))
  # Two sentences: frames * hop samples of audio plus one pause.
  pause = int(api.SENTENCE_PAUSE_SECONDS * SR)
  assert audio.shape[0] == mel.shape[0] * FEATURES.hop_length + pause
  # Each sentence between its minimum length and its frame budget.
  per_frame = FEATURES.hop_length / SR
  shortest = sum(np.ceil(api.SYNTH_MIN_SEC_PER_SYMBOL * n / per_frame)
                 for n in (13, 13))  # "hello world." / "how are you?" + EOS
  assert shortest <= mel.shape[0] <= 2 * MODEL["max_frames"]
  again, _ = voice.synthesize("Hello world. How are you?", seed=0)
  np.testing.assert_array_equal(audio, again)


def test_api_and_evaluation_share_the_synthesis_length_rule(tmp_path):
  """A model that predicts "stop" at once speaks min_frames + 1 frames.

  The rule (``tacotron.min_synthesis_frames``: 0.02 s per symbol, here 2
  frames per symbol at 8 kHz / hop 80) is ``metatts.voice.synthesize``'s,
  which the evaluation runs too; the reference is the old
  two-pass cut: decode without stopping (threshold 2.0) and cut at the first
  stop probability > 0.5 at or after min_frames.
  """
  from metatts.models import tacotron  # pylint: disable=g-import-not-at-top
  config, params = random_params(2)
  params["decoder"]["stop_proj"]["bias"] = np.full_like(
      params["decoder"]["stop_proj"]["bias"], 50.0)
  path = export.export_model(
      str(tmp_path / "stop"), method="transfer", model_name="tacotron",
      model_config=config, params=params, feature_config=FEATURES,
      symbols="characters", speakers=["s0", "s1", "s2"], adapt=ADAPT)
  tts = api.load(path)
  voice = tts.voice(0)
  texts = ["Hi.", "Hi there, you."]  # one token bucket (16)
  lengths, compiled = {}, []
  for text in texts:
    ids = tts.split_text(text)[0]
    _, _, mel = voice.synthesize(text, return_mel=True)
    compiled.append(tts._infer_jit._cache_size())  # pylint: disable=protected-access
    lengths[text] = mel.shape[0]
    n = ids.shape[0]
    assert api.SYNTH_MIN_SEC_PER_SYMBOL == tacotron.SYNTH_MIN_SEC_PER_SYMBOL
    assert mel.shape[0] == 2 * n + 1
    # The old two-pass reference on the same padded input.
    lb = api._bucket(n, api.TOKEN_BUCKET, config.max_tokens)  # pylint: disable=protected-access
    tokens = np.zeros((1, lb), np.int32)
    tokens[0, :n] = ids
    full = tacotron.synthesize(
        functional.merge(tts.graphdef, tts.params, tts.rest), tokens, [n],
        [0], max_frames=config.max_frames, stop_threshold=2.0)
    probs = np.asarray(full.stop_probs[0])
    hits = np.nonzero(probs[2 * n:] > 0.5)[0]
    assert mel.shape[0] == 2 * n + int(hits[0]) + 1
  # Two texts of one token bucket but different min_frames: one compilation
  # (the cache is shared with other models of this graph: count the growth).
  assert compiled[1] == compiled[0]


def test_save_and_load_voice_synthesize_identically(voice, tmp_path):
  out = voice.save(str(tmp_path / "voice"))
  for name in ("voice.json", "model.json", "params"):
    assert os.path.exists(os.path.join(out, name)), name
  with open(os.path.join(out, "voice.json")) as f:
    record = json.load(f)
  assert record["speaker_slot"] == 3 and record["steps"] == 6
  assert record["base_model_hash"] == voice.tts.hash
  np.testing.assert_allclose(record["losses"], voice.losses)
  loaded = api.load_voice(out)
  for a, b in zip(jax.tree_util.tree_leaves(voice.params),
                  jax.tree_util.tree_leaves(loaded.params)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(loaded.losses, voice.losses)
  text = "Same seed."
  np.testing.assert_array_equal(voice.synthesize(text, seed=4)[0],
                                loaded.synthesize(text, seed=4)[0])
  with pytest.raises(FileNotFoundError, match="voice.save"):
    api.load_voice(str(tmp_path))


def test_voice_loads_after_the_base_model_is_gone(tmp_path, clips):
  base, _ = make_export(str(tmp_path / "wd"), seed=1)
  tts = api.load(base)
  voice = tts.adapt(clips, TEXTS, steps=6, seed=0, sample_rate=SR)  # compiled
  out = voice.save(str(tmp_path / "v"))
  shutil.rmtree(str(tmp_path / "wd"))
  loaded = api.load_voice(out)
  np.testing.assert_array_equal(voice.synthesize("Still here.")[0],
                                loaded.synthesize("Still here.")[0])
  assert loaded.info["clips"] == [f"clip {i} (array)" for i in range(5)]


def _workdir_with_vocoder(workdir, wd, kind):
  """A copy of ``workdir`` with a tiny ``kind`` vocoder export beside it."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from metatts import models  # pylint: disable=g-import-not-at-top
  shutil.copytree(workdir, wd)
  common = dict(n_mels=20, sample_rate=SR, hop_length=80,
                upsample_factors=(8, 10), stacks=1, layers_per_stack=3)
  if kind == "nsf":  # its envelope inverts the features' own mel
    common.update(n_fft=FEATURES.n_fft, win_length=FEATURES.win_length,
                  fmin=FEATURES.fmin, fmax=FEATURES.fmax)
  config = models.model_config(kind, {"size": "tiny", **common})
  _, params, _ = functional.split(models.build_model(kind, config,
                                                     nnx.Rngs(0)))
  export.export_model(os.path.join(wd, "vocoder", "model"),
                      method="vocoder", model_name=kind,
                      model_config=config, params=params,
                      feature_config=FEATURES, symbols="characters",
                      speakers=[], adapt=ADAPT)
  return wd


@pytest.mark.parametrize("kind", ["wavenet", "nsf"])
def test_trained_vocoder_from_workdir(workdir, tmp_path, voice, kind):
  """A WORKDIR/vocoder/model export is the default vocoder; voices copy it."""
  wd = _workdir_with_vocoder(workdir, str(tmp_path / "wd"), kind)
  tts = api.load(wd)
  assert tts.vocoder.name == kind
  v = api.Voice(tts, voice.params, voice.speaker_slot, voice.info)
  audio, sr, mel = v.synthesize("Still here.", return_mel=True)
  assert sr == SR and np.all(np.isfinite(audio))
  assert audio.shape[0] == mel.shape[0] * FEATURES.hop_length
  out = v.save(str(tmp_path / "v"))
  assert os.path.isfile(os.path.join(out, "vocoder", "model", "model.json"))
  assert api.load_voice(out).tts.vocoder.name == kind
  assert api.load(wd, vocoder="griffin-lim").vocoder.name == "griffin-lim"


def test_adapting_the_vocoder_gives_the_voice_its_own(workdir, tmp_path,
                                                      clips):
  """adapt(..., vocoder_steps=N) fine-tunes a copy of the nsf vocoder on the
  clips; the voice speaks and saves it, the base vocoder stays as it was."""
  from metatts import vocoders  # pylint: disable=g-import-not-at-top
  from metatts.models import nsf  # pylint: disable=g-import-not-at-top
  from metatts.models import wavenet  # pylint: disable=g-import-not-at-top
  wd = _workdir_with_vocoder(workdir, str(tmp_path / "wd"), "nsf")
  tts = api.load(wd)
  base_params = jax.tree.map(np.asarray, functional.split(tts.vocoder.model)[1])
  voice = tts.adapt(clips, TEXTS, steps=2, seed=3, sample_rate=SR,
                    vocoder_steps=3)
  voc = voice.vocoder
  assert isinstance(voc, vocoders.NSFVocoder) and voc is not tts.vocoder
  assert voice.info["vocoder_steps"] == 3 and voc.adapted_steps == 3
  losses = voice.info["vocoder_losses"]
  assert len(losses) == 4 and losses[-1] < losses[0], losses
  # The last loss is the adapted model's own loss on the support windows
  # (rebuilt independently: the same clips' mels, audio, F0 and seed).
  prepared = tts.prepare_clips(clips, TEXTS, SR)
  c = voc.model.config
  batch = wavenet.make_vocoder_batch(np.random.default_rng(3), [
      (p.mel, p.audio, nsf.analyse_f0(p.audio, p.mel.shape[0], SR,
                                      c.hop_length)) for p in prepared],
                                     vocoders.ADAPT_WINDOW_FRAMES,
                                     c.hop_length)
  own = float(voc.model.loss(jax.tree.map(jnp.asarray, batch))[0])
  np.testing.assert_allclose(own, losses[-1], rtol=1e-4)
  # The base vocoder is untouched; the adapted one differs.
  jax.tree.map(np.testing.assert_array_equal, base_params,
               jax.tree.map(np.asarray, functional.split(tts.vocoder.model)[1]))
  mel = np.asarray(prepared[0].mel)
  key = jax.random.key(0)
  assert not np.array_equal(voc(mel, key), tts.vocoder(mel, key))
  # Saved and loaded, the voice speaks with its adapted vocoder.
  out = voice.save(str(tmp_path / "v"))
  loaded = api.load_voice(out)
  np.testing.assert_array_equal(loaded.vocoder(mel, key), voc(mel, key))
  np.testing.assert_array_equal(loaded.synthesize("Still here.")[0],
                                voice.synthesize("Still here.")[0])
  # Only a trained source-filter vocoder adapts.
  gl = api.load(workdir)
  with pytest.raises(ValueError, match="vocoder_steps=2: only a trained"):
    gl.adapt(clips, TEXTS, steps=1, sample_rate=SR, vocoder_steps=2)


def test_wavenet_vocoder_padding_keeps_the_samples():
  """Bucket padding of the mel leaves every generated sample unchanged."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from metatts.models import wavenet  # pylint: disable=g-import-not-at-top
  config = wavenet.wavenet_config("tiny", n_mels=20, sample_rate=SR,
                                  hop_length=80, upsample_factors=(8, 10),
                                  stacks=1, layers_per_stack=3)
  model = wavenet.WaveNet(config, rngs=nnx.Rngs(0))
  vocoder = api.WaveNetVocoder(model, {"adapt": {}}, "unused")
  mel = np.random.default_rng(0).normal(-4.0, 2.0, (37, 20)).astype(
      np.float32)
  key = jax.random.key(5)
  audio = vocoder(mel, key)  # padded to 64 frames inside
  assert audio.shape == (37 * 80,) and audio.dtype == np.float32
  assert np.all(np.abs(audio) <= 1.0)
  reference = wavenet.generate_jit(model, jnp.asarray(mel)[None], key)
  np.testing.assert_allclose(audio, np.asarray(reference)[0], atol=1e-6)


# ---------------------------------------------------------------------------
# Bad input.


def test_bad_clips_name_the_clip_and_the_fix(tts, clips, tmp_path):
  good = clips[0]
  cases = [
      ([np.zeros(SR, np.float32)], ["Hello there."], "silent"),
      ([good[:SR // 10]], ["Hi."], "too_short"),
      ([good], [""], "empty"),
      ([good], ["   "], "empty"),
      ([good], ["\u4f60\u597d"], "empty after normalization"),
      ([tone(150, 0.35)], ["This transcript is far too long for it."],
       "does not fit the audio"),
      ([good, good], ["One."], "2 clips but 1 transcripts"),
      ([], [], "Got 0 clips"),
      ([good] * 11, ["Hello there."] * 11, "1 to 10 clips"),
      (good, "Hello there.", "list of clips"),
  ]
  for wavs, texts, message in cases:
    with pytest.raises(ValueError, match=message):
      tts.prepare_clips(wavs, texts, sample_rate=SR)
  with pytest.raises(ValueError, match="Clip 1.*silent"):
    tts.prepare_clips([good, np.zeros(SR)], TEXTS[:2], sample_rate=SR)
  with pytest.raises(ValueError, match="sample_rate"):
    tts.prepare_clips([good], TEXTS[:1])
  broken = tmp_path / "broken.wav"
  broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
  with pytest.raises(ValueError, match="broken.wav"):
    tts.prepare_clips([str(broken)], TEXTS[:1])
  with pytest.raises(FileNotFoundError, match="missing.wav"):
    tts.prepare_clips([str(tmp_path / "missing.wav")], TEXTS[:1])
  with pytest.raises(ValueError, match="steps"):
    tts.adapt([good], TEXTS[:1], steps=-1, sample_rate=SR)


def test_bad_text_to_speak(voice):
  for text, message in [("", "empty"), ("   ", "empty"),
                        ("\u4f60\u597d", "nothing speakable|empty after"),
                        ("...", "nothing speakable"), (42, "pass a str")]:
    with pytest.raises(ValueError, match=message):
      voice.synthesize(text)


def test_notebook_is_valid_nbformat_and_python():
  path = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "notebooks", "few_shot_voice.ipynb")
  with open(path, encoding="utf-8") as f:
    nb = json.load(f)
  assert nb["nbformat"] == 4 and nb["cells"]
  try:
    import nbformat  # pylint: disable=g-import-not-at-top
  except ImportError:
    nbformat = None
  if nbformat is not None:
    nbformat.validate(nbformat.reads(json.dumps(nb), as_version=4))
  code = []
  for cell in nb["cells"]:
    assert cell["cell_type"] in ("markdown", "code")
    assert isinstance(cell["source"], list)
    if cell["cell_type"] == "code":
      assert cell["outputs"] == [] and cell["execution_count"] is None
      # Shell escapes ("!pip ...") are IPython, not Python.
      src = "".join(line for line in cell["source"]
                    if not line.lstrip().startswith("!"))
      compile(src, cell.get("id", "cell"), "exec")  # raises on a typo
      code.append(src)
  text = "\n".join(code)
  for call in ("run(config, WORKDIR)", "load(WORKDIR)", ".adapt(",
               ".synthesize(", "Audio(", "imshow(", "load_voice("):
    assert call in text, call
