"""Tests of the few-shot facade ``metatts.api`` on a ``zeroshot`` export.

A zeroshot export is a Tacotron without speaker table, conditioned on an
external vector, plus the speaker encoder that makes the vector from clips
(``metatts.methods.zeroshot.export_zeroshot_model``). Here both are tiny and
random (8 kHz, 20 mel bins; see ``test_api``). The checks compare the API with
independent computations and with the evaluation's path
(``metatts.voice.adapt_and_synthesize``): the 0-step vector against the
encoder run eagerly and averaged by hand, the adapted parameters against
``metatts.meta.adapt`` on a hand-written loss, the evaluation's audio
against the API's, and the saved voice against the original, bit for bit.
"""

import json
import os
import shutil
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from metatts import __main__ as cli
from metatts import api
from metatts import functional
from metatts import meta
from metatts import voice as voice_lib
from metatts.methods import zeroshot
from metatts.models import speaker_encoder

sys.path.insert(0, os.path.dirname(__file__))
from test_api import FEATURES, SR, TEXTS, random_params, tone  # noqa: E402  pylint: disable=g-import-not-at-top

DIM = 8  # speaker vector size
ADAPT = dict(filter="speaker+decoder", optimizer="sgd", lr=0.05,
             default_steps=3, speaker_slot=3)
STEPS = 3
K = 3  # clips


def make_zeroshot_export(directory, seed=0, stop_bias=None):
  """Exports a tiny random zeroshot model as ``directory/zeroshot/model``."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  config, acoustic = random_params(seed, use_speaker_table=False,
                                   external_speaker_dim=DIM)
  if stop_bias is not None:
    bias = acoustic["decoder"]["stop_proj"]["bias"]
    acoustic["decoder"]["stop_proj"]["bias"] = np.full_like(bias, stop_bias)
  ecfg = speaker_encoder.speaker_encoder_config(
      "tiny", n_mels=FEATURES.n_mels, conv_channels=(8,), lstm_units=8,
      embed_dim=DIM)
  _, eparams, _ = functional.split(
      speaker_encoder.SpeakerEncoder(ecfg, rngs=nnx.Rngs(seed + 1)))
  params = {"acoustic": acoustic, "speaker_encoder": eparams}
  path = zeroshot.export_zeroshot_model(
      os.path.join(directory, "zeroshot", "model"), model_config=config,
      encoder_config=ecfg, params=params, feature_config=FEATURES,
      symbols="characters", speakers=["s0", "s1", "s2"], adapt=ADAPT,
      info={"train_steps": 0})
  with open(os.path.join(directory, "run.json"), "w") as f:
    json.dump({"methods": ["zeroshot"], "primary": "zeroshot"}, f)
  return path, params


@pytest.fixture(scope="module")
def export(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("zs_workdir"))
  path, params = make_zeroshot_export(wd)
  return types.SimpleNamespace(workdir=wd, path=path, params=params)


@pytest.fixture(scope="module")
def tts(export):
  return api.load(export.workdir)


@pytest.fixture(scope="module")
def clips():
  return [tone(110 + 25 * i, 0.7 + 0.1 * i, seed=i) for i in range(K)]


@pytest.fixture(scope="module")
def batch(tts, clips):
  return tts.make_batch(tts.prepare_clips(clips, TEXTS[:K], SR))


@pytest.fixture(scope="module")
def voice(tts, clips):
  return tts.adapt(clips, TEXTS[:K], steps=STEPS, sample_rate=SR)


def test_load_finds_the_zeroshot_export_and_its_encoder(export, tts):
  for path in (export.workdir, os.path.join(export.workdir, "zeroshot"),
               export.path):
    assert api.resolve_model_dir(path) == export.path
  assert tts.zeroshot and tts.encoder is not None
  assert tts.model_dir == export.path and tts.info["method"] == "zeroshot"
  assert tts.encoder.config.embed_dim == tts.config.external_speaker_dim
  for want, got in ((export.params["acoustic"], tts.params),
                    (export.params["speaker_encoder"], tts.encoder_params)):
    for a, b in zip(jax.tree_util.tree_leaves(want),
                    jax.tree_util.tree_leaves(got)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_zero_steps_is_the_encoders_mean_vector(tts, clips, batch):
  v0 = tts.adapt(clips, TEXTS[:K], steps=0, sample_rate=SR)
  assert v0.losses.shape == (1,) and v0.info["zeroshot"]
  for a, b in zip(jax.tree_util.tree_leaves(tts.params),
                  jax.tree_util.tree_leaves(v0.params["acoustic"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # Independent: the clip vectors of the encoder module (padding is masked),
  # averaged and re-normalized by hand (normalize=True).
  @jax.jit
  def clip_vectors(eparams, mels, lengths):
    enc = functional.merge(tts.encoder_graphdef, eparams, tts.encoder_rest)
    return enc(mels, lengths)  # [K, D]

  e = np.asarray(clip_vectors(tts.encoder_params, batch.mels,
                              batch.mel_lengths), np.float64)
  want = e.mean(0) / np.linalg.norm(e.mean(0))
  np.testing.assert_allclose(v0.speaker_vector, want, rtol=1e-5, atol=1e-6)


def test_steps_adapt_the_vector_with_the_exported_protocol(tts, voice,
                                                          batch):
  """``TTS.adapt`` against ``meta.adapt`` on a hand-written loss."""
  v0 = voice_lib.start(tts, batch)

  def loss_fn(params, b):
    model = functional.merge(tts.graphdef, params["acoustic"], tts.rest)
    vectors = jnp.broadcast_to(params["speaker_vector"],
                               (b.tokens.shape[0], DIM))
    return model.loss(b, speaker_vectors=vectors)

  want, losses = jax.jit(lambda p, b: meta.adapt(
      p, b, loss_fn, inner_optimizer=voice_lib.OPTIMIZERS[ADAPT["optimizer"]](
          ADAPT["lr"]), num_steps=STEPS,
      filter=functional.filter_for(ADAPT["filter"])))(v0, batch)
  assert set(want) == {"acoustic", "speaker_vector"}
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(want),
                          jax.tree_util.tree_leaves(voice.params)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5,
                               atol=1e-6, err_msg=jax.tree_util.keystr(path))
  np.testing.assert_allclose(voice.losses, np.asarray(losses), rtol=1e-5)
  assert voice.losses.shape == (STEPS + 1,)
  assert voice.losses[-1] < voice.losses[0]
  # The vector is adapted (filter group "speaker"), the encoder is not used.
  assert not np.allclose(voice.speaker_vector, v0["speaker_vector"])


def test_evaluation_path_gives_the_api_audio(tts, clips, voice):
  """The evaluation's call on the prepared clips = adapt + synthesize."""
  text = "Hello there."
  speech, adapted = voice_lib.adapt_and_synthesize(
      tts, tts.prepare_clips(clips, TEXTS[:K], SR), [text], (0, STEPS))
  np.testing.assert_array_equal(adapted.losses[STEPS], voice.losses)
  audio, _ = voice.synthesize(text)
  np.testing.assert_array_equal(speech[STEPS][0].audio, audio)


def test_adapt_does_not_recompile_for_other_clips(tts, voice):
  del voice  # compiled the K-clip, STEPS-step adaptation
  before = tts.adapt_traces
  other = [tone(200 + 30 * i, 0.75 + 0.1 * i, seed=10 + i) for i in range(K)]
  v2 = tts.adapt(other, ["Other words.", "Different one.", "Third clip!"],
                 steps=STEPS, sample_rate=SR)
  assert tts.adapt_traces == before
  assert not np.allclose(v2.speaker_vector, 0.0)


def test_voice_speaks_with_its_vector_and_saves_bit_identically(
    voice, tmp_path):
  text = "Hello there."
  audio, sr, mel = voice.synthesize(text, seed=1, return_mel=True)
  assert sr == SR and np.all(np.isfinite(audio)) and mel.shape[1] == 20
  # The vector conditions the speech: another vector, another mel.
  other = api.Voice(voice.tts, dict(voice.params, speaker_vector=-jnp.asarray(
      voice.speaker_vector)), voice.speaker_slot, voice.info)
  _, _, mel_other = other.synthesize(text, seed=1, return_mel=True)
  n = min(mel.shape[0], mel_other.shape[0])
  assert np.max(np.abs(mel[:n] - mel_other[:n])) > 1e-4
  out = voice.save(str(tmp_path / "voice"))
  with open(os.path.join(out, "voice.json")) as f:
    record = json.load(f)
  np.testing.assert_array_equal(np.asarray(record["speaker_vector"],
                                           np.float32), voice.speaker_vector)
  assert not os.path.exists(os.path.join(out, "speaker_encoder"))
  loaded = api.load_voice(out)
  assert loaded.tts.zeroshot and loaded.tts.encoder is None
  np.testing.assert_array_equal(loaded.speaker_vector, voice.speaker_vector)
  for a, b in zip(jax.tree_util.tree_leaves(voice.params),
                  jax.tree_util.tree_leaves(loaded.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  again, _ = loaded.synthesize(text, seed=1)
  np.testing.assert_array_equal(again, audio)
  # A saved voice speaks but cannot clone new clips (no encoder).
  with pytest.raises(ValueError, match="without its speaker encoder"):
    loaded.tts.adapt([tone(150, 0.8)], ["Hello there."], steps=0,
                     sample_rate=SR)
  with open(os.path.join(out, "voice.json")) as f:
    record = json.load(f)
  record["speaker_vector"] = record["speaker_vector"][:-1]
  with open(os.path.join(out, "voice.json"), "w") as f:
    json.dump(record, f)
  with pytest.raises(ValueError, match="speaker_vector"):
    api.load_voice(out)


def test_voice_without_clips_is_refused(tts):
  with pytest.raises(ValueError, match=r"zeroshot model.*steps=0"):
    tts.voice()
  with pytest.raises(ValueError, match="zeroshot model"):
    tts.voice(0)


def test_synthesis_uses_the_length_rule(tmp_path, clips):
  """A model that stops at once speaks min_frames + 1 frames."""
  path, params = make_zeroshot_export(str(tmp_path / "stop"), seed=2,
                                      stop_bias=50.0)
  tts = api.load(path)
  voice = tts.adapt(clips, TEXTS[:K], steps=0, sample_rate=SR)
  texts = ["Hi.", "Hi there, you."]
  lengths = [voice.synthesize(t, return_mel=True)[2].shape[0] for t in texts]
  # 0.02 s per symbol = 2 frames per symbol at 8 kHz / hop 80.
  assert lengths == [2 * len(tts.split_text(t)[0]) + 1 for t in texts]
  del params


def test_cli_adapt_and_say(export, tts, voice, tmp_path, capsys):
  del tts  # the fixtures compiled the adaptation and synthesis in-process
  clips_dir = tmp_path / "clips"
  clips_dir.mkdir()
  for i in range(K):
    sf.write(str(clips_dir / f"c{i}.wav"),
             tone(110 + 25 * i, 0.7 + 0.1 * i, seed=i), SR, subtype="FLOAT")
    (clips_dir / f"c{i}.txt").write_text(TEXTS[i] + "\n")
  voice_dir = str(tmp_path / "voice")
  code = cli.main(["adapt", "--model", os.path.join(export.workdir,
                                                     "zeroshot"),
                   "--clips", str(clips_dir), "--out", voice_dir,
                   "--steps", str(STEPS)])
  out = capsys.readouterr()
  assert code == 0, out.err
  assert "speaker encoder" in out.out
  wav = str(tmp_path / "hello.wav")
  code = cli.main(["say", "--voice", voice_dir, "Hello", "there.", "-o", wav])
  assert code == 0, capsys.readouterr().err
  written, sr = sf.read(wav, dtype="float32")
  audio, _ = api.load_voice(voice_dir).synthesize("Hello there.", seed=0)
  assert sr == SR and written.shape == audio.shape
  np.testing.assert_allclose(written, audio, atol=2.0 / 32768)
  # The same clips as files give the voice the API made from the arrays.
  np.testing.assert_allclose(api.load_voice(voice_dir).speaker_vector,
                             voice.speaker_vector, rtol=1e-5, atol=1e-6)


def test_damaged_or_missing_speaker_encoder_is_one_line(export, tmp_path,
                                                         capsys):
  """The encoder's Orbax folder gets the acoustic parameters' treatment: a
  damaged one is an ``ExportError`` of one line naming the folder and the
  fix (no TensorStore spec dump), also through the CLI; a missing one names
  the folder."""
  from metatts.training import export as export_lib  # pylint: disable=g-import-not-at-top
  damaged = str(tmp_path / "damaged")
  shutil.copytree(export.path, damaged)
  enc_dir = os.path.join(damaged, "speaker_encoder")
  data = os.path.join(enc_dir, "ocdbt.process_0", "d")
  assert os.listdir(data)
  for name in os.listdir(data):  # truncate every data file
    with open(os.path.join(data, name), "r+b") as f:
      f.truncate(16)
  with pytest.raises(export_lib.ExportError) as info:
    api.load(damaged)
  message = str(info.value)
  assert message.startswith(f"The speaker encoder in {enc_dir} cannot be "
                            "restored ("), message
  assert "Re-run training" in message and "\n" not in message
  assert len(message) < 600 and "tensorstore_spec" not in message
  # The CLI prints that line and nothing else.
  clips_dir = tmp_path / "clips"
  clips_dir.mkdir()
  sf.write(str(clips_dir / "c0.wav"), tone(110, 0.8), SR, subtype="FLOAT")
  (clips_dir / "c0.txt").write_text(TEXTS[0] + "\n")
  capsys.readouterr()
  code = cli.main(["adapt", "--model", damaged, "--clips", str(clips_dir),
                   "--out", str(tmp_path / "voice"), "--steps", "1"])
  err = capsys.readouterr().err
  assert code == 2, err
  # Which parameter Orbax reads first (and so names) varies between runs, so
  # the CLI's line is compared by its shape, not character for character.
  head = message.split(" (", 1)[0]
  tail = message.rsplit(")", 1)[1]
  assert err.startswith(f"error: {head} ("), err
  assert err.endswith(f"){tail}\n") and err.count("\n") == 1, err
  assert not os.path.exists(tmp_path / "voice")
  # A missing encoder folder: the export is partial.
  shutil.rmtree(enc_dir)
  with pytest.raises(FileNotFoundError,
                     match=f"{enc_dir} is missing: the zeroshot export is "
                     "partial.*Re-run training"):
    api.load(damaged)

