"""Tests of the experiment configs in ``experiments/configs``.

``base.py`` and ``full.py`` describe runs of hours to days that no CPU test
can afford, so they are checked in two ways:

* every file and argument loads and its values are valid *without
  training*: the methods, filters, adaptation protocol, ``init_from``, the
  learners, the vocoder and the Tacotron size (built with ``nnx.eval_shape``,
  no compile), plus the command in each docstring;
* the same configs run end to end with only their *sizes* swapped for the
  ``quickstart.py:smoke`` ones: ``full.py:vctk`` / ``full.py:libritts`` on
  small corpora written here in the real VCTK 0.92 / LibriTTS layouts (their
  held-out speaker ids, 48 / 24 kHz audio), and the ``base.py`` study with
  every one of its methods (started from part-way through ``transfer``) on
  the synthetic smoke corpus.

The end-to-end runs are compile-bound; each runs in a subprocess with a
persistent XLA cache shared by the module and
``--xla_backend_optimization_level=0``. Measured on the shared 2-core CPU
(load ~5): the value tests 9 s; vctk 81 s, libritts 20 s, base-tiny 169 s
(five methods that nothing else compiles, 15-39 s each); 280 s in all. The
``base.py`` run (``build_case("base-tiny")``) is the in-process fixture of
``test_tts_duration.py``, which shares it with the duration model's tests.
"""

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import types

from flax import nnx
import jax
import numpy as np
import pytest
import soundfile as sf

from metatts import functional
from metatts.data import features as dfeat
from metatts.experiments import adaptation
from metatts.experiments import tts
from metatts.experiments import validation
from metatts.experiments import vocoder as vocoder_lib
from metatts.models import tacotron
from metatts.models import wavenet

from tts_smoke import REPO
from tts_smoke import smoke_config

CONFIG_DIR = os.path.join(REPO, "experiments", "configs")

# (file, argument or None for the default, is a tts config).
TTS_CONFIGS = [("quickstart", None), ("quickstart", "quickstart"),
               ("quickstart", "smoke"), ("base", None), ("base", "study"),
               ("base", "large"), ("full", None), ("full", "vctk"),
               ("full", "libritts"), ("vocoder", None), ("vocoder", "meta"),
               ("vocoder", "smoke")]
SINUSOID_ARGS = [None, "maml", "fomaml,smoke", "reptile,quick",
                 "metasgd,paper", "imaml,smoke", "pretrain,smoke"]
BAD_ARGS = {"quickstart": ("quickstart", "smoke"), "base": ("study", "large"),
            "full": ("libritts", "vctk"),
            "sinusoid": ("maml", "smoke", "quick", "paper")}


def load_module(name):
  """Imports ``experiments/configs/<name>.py`` under a private name."""
  spec = importlib.util.spec_from_file_location(
      f"_metatts_config_{name}", os.path.join(CONFIG_DIR, name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(name, arg):
  module = load_module(name)
  return module.get_config() if arg is None else module.get_config(arg)


def _id(case):
  return f"{case[0]}:{case[1] or 'default'}"


# ----------------------------------------------------------------------------
# Values, without training.


def tacotron_of(config, num_train_speakers=100):
  """The TacotronConfig ``tts.run`` builds for ``config`` (no corpus)."""
  fc = dfeat.FeatureConfig.from_config(config.data.features)
  data = types.SimpleNamespace(
      feature_config=fc, speakers=[f"s{i}" for i in range(num_train_speakers)])
  return tts.tacotron_config(config, data)


def count_params(mcfg):
  """Parameters of a Tacotron, from abstract shapes only (no compile)."""
  from metatts import models  # pylint: disable=g-import-not-at-top
  name = {"TacotronConfig": "tacotron",
          "DurationTacotronConfig": "duration_tacotron"}[type(mcfg).__name__]
  abstract = nnx.eval_shape(lambda: models.build_model(name, mcfg,
                                                       nnx.Rngs(0)))
  leaves = jax.tree_util.tree_leaves(nnx.state(abstract, nnx.Param))
  return sum(int(np.prod(x.shape)) for x in leaves)


@pytest.fixture(scope="module")
def param_counts():
  return {}


@pytest.mark.parametrize("case", TTS_CONFIGS, ids=_id)
def test_tts_config_values_are_valid(case, param_counts):
  c = get_config(*case)
  # The vocoder study runs the tts config's data and vocoder stages only.
  assert c.experiment == ("vocoder" if case[0] == "vocoder" else "tts")
  validation.validate(c)
  defaults = tts.default_config()
  # No key that default_config lacks: tts.run would silently ignore it.
  def keys(d, prefix=""):
    out = set()
    for k, v in d.items():
      if hasattr(v, "items") and k not in ("model", "features",
                                           "synth_overrides", "inner_steps"):
        out |= keys(v, prefix + k + ".")
      else:
        out.add(prefix + k)
    return out
  assert keys(c) <= keys(defaults), sorted(keys(c) - keys(defaults))
  assert c.data.corpus in tts.CORPORA
  if c.data.corpus == "synth":  # the preset and its overrides exist
    import dataclasses  # pylint: disable=g-import-not-at-top
    from metatts.data import synth  # pylint: disable=g-import-not-at-top
    fields = {f.name for f in dataclasses.fields(
        synth.get_config(c.data.synth_preset))}
    assert set(c.data.synth_overrides.to_dict()) <= fields
  assert c.methods and all(m in tts.METHODS for m in c.methods), c.methods
  assert len(set(c.methods)) == len(c.methods)
  functional.filter_for(c.train.filter)
  functional.filter_for(c.adapt.filter)
  protocol = adaptation.protocol_from_config(c.adapt, 100)
  assert protocol.shots and protocol.steps
  assert int(c.adapt.default_steps) >= 0
  # init_from is empty or a method trained earlier in the same run.
  assert c.train.init_from in ("",) + tuple(c.methods)
  ordered = tts._ordered_methods(c)  # pylint: disable=protected-access
  assert sorted(ordered) == sorted(c.methods)
  if c.train.init_from:
    assert ordered[0] == c.train.init_from
  for m in c.methods:  # builds each learner (no compile)
    learner = tts.make_learner(m, c.train, c.train.filter)
    assert callable(learner.init) and callable(learner.step)
    assert tts.clip_passes(m, c.train, int(c.train.num_steps)) > 0
  # The meta-batch: N tasks of K support + Q query clips.
  for k in ("num_steps", "num_tasks", "num_support", "num_query",
            "checkpoint_every", "log_every"):
    assert int(c.train[k]) >= 1, k
  # (the vocoder study's loop is the vocoder's, with train's checkpointing)
  trained = c.vocoder if c.experiment == "vocoder" else c.train
  assert int(c.train.checkpoint_every) <= int(trained.num_steps)
  # Features and the Tacotron size.
  fc = dfeat.FeatureConfig.from_config(c.data.features)
  mcfg = tacotron_of(c)
  assert int(c.data.max_frames) <= mcfg.max_frames
  assert int(c.data.max_tokens) <= mcfg.max_tokens
  assert int(c.data.max_frames) <= fc.max_frames
  assert 16 % mcfg.reduction_factor == 0  # buckets are multiples of 16
  assert mcfg.num_mels == fc.n_mels
  param_counts[_id(case)] = count_params(mcfg)
  # The vocoder, built as train_vocoder builds it.
  v = c.vocoder
  vname, vcfg = vocoder_lib._vocoder_model_config(c, fc)  # pylint: disable=protected-access
  assert vname == v.model and vcfg.n_mels == fc.n_mels
  assert int(np.prod(vcfg.upsample_factors)) == fc.hop_length
  assert v.method in tts.METHODS
  if v.enabled:
    for k in ("num_steps", "num_tasks", "num_support", "num_query",
              "window_frames", "clips_per_speaker", "eval_speakers"):
      assert int(v[k]) >= 1, k
    assert int(v.clips_per_speaker) >= 1
  if c.experiment == "vocoder":
    assert v.enabled
  # Held-out speakers named by the config are all adapted.
  named = tuple(c.data.heldout_unseen) + tuple(c.data.heldout_seen)
  assert len(set(named)) == len(named)
  if named:
    assert int(c.adapt.max_speakers) >= len(c.data.heldout_unseen)
  if c.eval.enabled:
    assert set(c.eval.metrics) <= {"secs", "eer", "mcd", "wer"}


@pytest.mark.parametrize("name,arg", [("quickstart", "quickstart"),
                                      ("quickstart", "smoke"),
                                      ("base", "study"), ("base", "large"),
                                      ("full", "vctk"), ("full", "libritts"),
                                      ("vocoder", "study"), ("vocoder", "meta"),
                                      ("vocoder", "smoke")])
def test_docstring_names_the_exact_command(name, arg):
  doc = load_module(name).__doc__
  flat = " ".join(re.sub(r"\\\s*\n", " ", doc).split())
  command = f"experiments/main.py --config experiments/configs/{name}.py"
  assert command in flat, (name, command)
  default = load_module(name).get_config.__defaults__[0]
  if arg != default:  # the argument is spelt as the --config path takes it
    assert f"{name}.py:{arg}" in flat, (name, arg)



def test_speech_config_is_the_quickstart_with_the_duration_model():
  """speech.py: the quickstart's corpus, methods and protocol with the
  duration Tacotron on phonemes (values checked without training)."""
  c, q = get_config("speech", None), get_config("quickstart", None)
  assert c.experiment == "tts" and c.name == "speech"
  assert tuple(c.methods) == tuple(q.methods)
  assert (c.data.root, c.data.synth_preset) == (q.data.root,
                                                q.data.synth_preset)
  assert c.model.name == "duration_tacotron"
  assert c.data.features.symbols == "phonemes"
  assert c.train.init_from == "transfer" and c.train.init_from in c.methods
  assert float(c.adapt.lr) == float(c.train.inner_lr) == 0.01
  # Meta-training from the transfer export diverged at the pre-training
  # rate 3e-3 and held at 3e-4 (docs/results/adaptation.md).
  assert float(c.train.outer_lr) == 3e-3
  assert float(c.train.meta_outer_lr) == 3e-4
  assert "wer" in c.eval.metrics
  for m in c.methods:
    learner = tts.make_learner(m, c.train, c.train.filter)
    assert callable(learner.step)
  mcfg = tacotron_of(c)
  assert type(mcfg).__name__ == "DurationTacotronConfig"
  assert mcfg.reduction_factor == 1 and mcfg.num_mels == 80
  assert int(c.data.max_frames) <= mcfg.max_frames
  doc = " ".join(re.sub(r"\\\s*\n", " ",
                        load_module("speech").__doc__).split())
  assert ("experiments/main.py --config experiments/configs/speech.py"
          in doc)
  with pytest.raises(ValueError, match="no argument"):
    get_config("speech", "tiny")

def test_model_sizes_are_ordered(param_counts):
  if len(param_counts) < len(TTS_CONFIGS):
    for case in TTS_CONFIGS:  # run alone: fill the counts
      param_counts[_id(case)] = count_params(tacotron_of(get_config(*case)))
  p = param_counts
  assert p["quickstart:smoke"] < p["quickstart:quickstart"]
  # The study's duration Tacotron is CPU-sized; large is the GPU variant.
  assert p["quickstart:smoke"] < p["base:study"]
  assert p["base:study"] * 10 < p["base:large"] < p["full:vctk"]
  assert p["full:vctk"] == p["full:libritts"] > 10_000_000
  assert p["base:default"] == p["base:study"]
  assert p["full:default"] == p["full:vctk"]
  # The Tacotron 2 widths of Shen et al. (2018) for the full size.
  full = tacotron_of(get_config("full", "vctk"))
  assert (full.encoder_dim, full.decoder_rnn_dim, full.attention_rnn_dim,
          full.postnet_dim, full.reduction_factor) == (512, 1024, 1024, 512,
                                                       1)
  base = tacotron_of(get_config("base", "large"))
  assert (base.encoder_dim, base.decoder_rnn_dim, base.reduction_factor) == (
      256, 512, 2)
  # The speaker table has a row per training speaker plus the new voice's.
  assert tacotron_of(get_config("base", "study"), 7).num_speakers == 8


@pytest.mark.parametrize("arg", SINUSOID_ARGS)
def test_sinusoid_config_args(arg):
  from metatts import meta  # pylint: disable=g-import-not-at-top
  c = get_config("sinusoid", arg)
  assert c.experiment == "sinusoid"
  assert c.method in load_module("sinusoid").METHODS
  assert c.method == "pretrain" or hasattr(meta, c.method)
  assert int(c.num_steps) >= 1 and int(c.num_inner_steps) >= 1


@pytest.mark.parametrize("name", sorted(BAD_ARGS))
def test_unknown_argument_names_the_choices(name):
  with pytest.raises(ValueError) as e:
    load_module(name).get_config("nonsense-size")
  msg = str(e.value)
  assert "nonsense-size" in msg
  for choice in BAD_ARGS[name]:
    assert choice in msg, (name, choice, msg)


# ----------------------------------------------------------------------------
# End to end at smoke sizes.

SENTENCES = ("Please call Stella.", "Ask her to bring these things.",
             "Six spoons of fresh snow peas for her brother.",
             "We also need a small snake.", "She can scoop these things.",
             "The rainbow is a division.")
CLIPS_PER_SPEAKER = 4  # >= K + Q = 2 + 2 and max(shots) + num_eval = 3
# 2.85 s clips and the longest sentence put the real-layout corpora in the
# bucket of the synthetic smoke corpus, (48 tokens, 224 frames), so the
# compiled programs are shared through the XLA cache (speed only).
SECONDS = 2.85


def speechlike(sr, seed, seconds=SECONDS):
  """A voiced, syllable-modulated harmonic tone (a speaker-specific f0)."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(sr * seconds)) / sr
  f0 = rng.uniform(90.0, 240.0) * (1 + 0.05 * np.sin(2 * np.pi * 5.0 * t))
  phase = 2 * np.pi * np.cumsum(f0) / sr
  x = sum(np.sin(k * phase) / k for k in range(1, 8))
  syllables = 0.55 + 0.45 * np.sin(2 * np.pi * rng.uniform(3, 5) * t) ** 2
  x = x * syllables * np.hanning(t.shape[0])
  x += 0.003 * rng.standard_normal(t.shape[0])
  return (0.25 * x / np.max(np.abs(x))).astype(np.float32)


def _write(path, text):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def write_vctk(root, speakers):
  """VCTK 0.92: wav48_silence_trimmed/pXXX/pXXX_NNN_mic{1,2}.flac + txt/."""
  for s, spk in enumerate(speakers):
    for i in range(CLIPS_PER_SPEAKER):
      utt = f"{spk}_{i + 1:03d}"
      for mic in ("mic1", "mic2"):
        path = os.path.join(root, "wav48_silence_trimmed", spk,
                            f"{utt}_{mic}.flac")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sf.write(path, speechlike(48000, 100 * s + i), 48000)
      _write(os.path.join(root, "txt", spk, utt + ".txt"),
             SENTENCES[(s + i) % len(SENTENCES)] + "\n")
  # As in VCTK 0.92, p315 has audio but no transcripts.
  path = os.path.join(root, "wav48_silence_trimmed", "p315",
                      "p315_001_mic1.flac")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sf.write(path, speechlike(48000, 999), 48000)


def write_libritts(root, speakers_by_split):
  """LibriTTS: <split>/<speaker>/<chapter>/<utt>.wav + .normalized.txt."""
  s = 0
  for split, speakers in speakers_by_split.items():
    for spk in speakers:
      chapter = str(1000 + 7 * s)
      d = os.path.join(root, split, spk, chapter)
      os.makedirs(d, exist_ok=True)
      for i in range(CLIPS_PER_SPEAKER):
        utt = f"{spk}_{chapter}_000001_{i:06d}"
        sf.write(os.path.join(d, utt + ".wav"), speechlike(24000, 100 * s + i),
                 24000)
        text = SENTENCES[(s + i) % len(SENTENCES)]
        _write(os.path.join(d, utt + ".normalized.txt"), text)
        _write(os.path.join(d, utt + ".original.txt"), text.upper())
      s += 1


def shrink_to_smoke(c, tmp, vocoder=True):
  """Keeps the config's choices, swaps its sizes for the smoke ones."""
  smoke = smoke_config(tmp)
  c.data.features = copy.deepcopy(smoke.data.features)
  for k in ("max_tokens", "max_frames", "num_buckets", "cache_dir"):
    c.data[k] = smoke.data[k]
  c.model = copy.deepcopy(smoke.model)
  for k in ("num_steps", "num_tasks", "num_support", "num_query",
            "log_every", "checkpoint_every"):
    c.train[k] = smoke.train[k]
  for k in ("steps", "shots", "num_eval", "max_speakers",
            "griffin_lim_iters"):
    c.adapt[k] = smoke.adapt[k]
  c.eval.enabled = False
  c.vocoder = copy.deepcopy(smoke.vocoder)
  c.vocoder.enabled = vocoder
  c.progress = False
  return smoke


def check_run(c, workdir, result, methods, heldout_unseen, heldout_seen=()):
  """The run trained, exported and adapted what the config names."""
  assert result["methods"][0] == c.train.init_from
  assert sorted(result["methods"]) == sorted(methods)
  run = json.load(open(os.path.join(workdir, "run.json")))
  for m in methods:
    assert run["training"][m]["final"], m
    assert np.isfinite(run["training"][m]["final"]["train/loss"]), m
    assert run["training"][m]["num_skipped"] == 0, m
    model_json = os.path.join(workdir, m, "model", "model.json")
    info = json.load(open(model_json))
    assert info["method"] == m
    assert info["speakers"] == run["speakers"]
    assert not set(info["speakers"]) & (set(heldout_unseen) |
                                        set(heldout_seen))
  protocol = json.load(open(os.path.join(workdir, "samples",
                                         "protocol.json")))
  assert sorted(protocol) == sorted(list(methods) + ["scratch"])
  manifest = json.load(open(os.path.join(workdir, "samples",
                                         "manifest.json")))
  want = {s: "heldout_unseen" for s in heldout_unseen}
  want.update({s: "heldout_seen" for s in heldout_seen})
  assert manifest["speakers"] == want
  for m, rec in protocol.items():
    assert {s: r["split"] for s, r in rec["speakers"].items()} == want, m
    for spk, r in rec["speakers"].items():
      assert np.isfinite(r["shots"]["1"]["support_loss"]["2"]), (m, spk)
      for steps in (0, 2):
        folder = os.path.join(workdir, "samples", m, "shots_1",
                              f"steps_{steps}", spk)
        assert any(f.endswith(".wav") for f in os.listdir(folder)), folder
  import metatts  # pylint: disable=g-import-not-at-top
  primary = metatts.load(workdir)
  assert primary.info["method"] == run["primary"]
  assert primary.model_dir == os.path.join(workdir, run["primary"], "model")
  assert primary.config.num_speakers == run["speaker_slot"] + 1
  assert primary.vocoder.name == ("wavenet" if c.vocoder.enabled
                                  else "griffin-lim")
  return run


TRAIN_SPEAKERS = {"vctk": ("p233", "p234", "p236"),
                  "libritts": ("19", "26", "40")}
E2E_METHODS = {"vctk": ("transfer", "meta-fomaml"),
               "libritts": ("transfer",)}  # all methods: base.py


DURATION_SMOKE_MODEL = {
    "name": "duration_tacotron", "size": "tiny", "embed_dim": 16,
    "encoder_dim": 16, "encoder_num_convs": 1, "aligner_dim": 16,
    "duration_dim": 16, "decoder_dim": 16, "decoder_num_convs": 2,
    "postnet_dim": 16, "postnet_num_convs": 2, "speaker_dim": 8,
    "max_frames": 320}


def build_case(case, tmp, write):
  """The config of an end-to-end case (and, if ``write``, its corpus).

  ``full.py:vctk`` / ``full.py:libritts``: the config's corpus kind,
  held-out ids, methods' ``init_from``, filters and protocol on a corpus in
  the real layout under ``tmp``, every size from ``quickstart.py:smoke``.
  ``base-tiny``: the ``base.py`` study's methods (started from part-way
  through transfer), 2 steps each, on the synthetic smoke corpus.
  """
  if case == "base-tiny":
    c = get_config("base", "study")
    smoke = shrink_to_smoke(c, tmp, vocoder=False)  # the study has none
    # The study's duration Tacotron on phonemes, at the smoke sizes.
    c.model = DURATION_SMOKE_MODEL
    c.data.features.symbols = "phonemes"
    for k in ("corpus", "root", "synth_preset", "synth_overrides",
              "synth_seed"):
      c.data[k] = copy.deepcopy(smoke.data[k])
  else:
    c = get_config("full", case)
    heldout = tuple(c.data.heldout_unseen)
    root = os.path.join(tmp, case)
    if write and case == "vctk":
      write_vctk(root, TRAIN_SPEAKERS[case] + heldout)
    elif write:
      # The held-out ids are LibriTTS test-clean speakers.
      write_libritts(root, {"train-clean-100": TRAIN_SPEAKERS[case],
                            "test-clean": heldout})
    # The vocoder on real 48 kHz audio here, on synthetic audio in base-tiny.
    shrink_to_smoke(c, tmp, vocoder=case == "vctk")
    c.data.root = root
    c.methods = E2E_METHODS[case]
    c.adapt.max_speakers = len(heldout)  # every named held-out speaker
  c.train.num_steps = c.train.checkpoint_every = 2
  c.vocoder.num_steps = 2
  c.adapt.shots = (1,)
  return c


def _worker(case, tmp):
  """Subprocess body: writes the corpus, runs ``tts.run``, saves the result."""
  c = build_case(case, tmp, write=True)
  tick = time.perf_counter()
  result = tts.run(c, os.path.join(tmp, "run"))
  result["test_seconds"] = time.perf_counter() - tick
  with open(os.path.join(tmp, "result.json"), "w") as f:
    json.dump(result, f, default=str)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
  """One persistent XLA cache for the module's runs (same shapes recompile
  nowhere: the initializer, the transfer step, the vocoder, the adapter):
  the session's (tests/conftest.py), or the module's own when it is off."""
  return (os.environ.get("JAX_COMPILATION_CACHE_DIR")
          or str(tmp_path_factory.mktemp("xla-cache")))


def run_case(case, tmp, cache):
  """Runs ``_worker`` in a fresh process.

  Returns:
    ``(config, result, stdout)``: the case's config, ``tts.run``'s summary
    and what the run printed.

  A subprocess so that the XLA cache and the faster-compiling CPU backend
  (``--xla_backend_optimization_level=0``: the same programs, less LLVM
  optimization; these runs are compile-bound) touch no other test.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache,
             XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                        " --xla_backend_optimization_level=0").strip(),
             PYTHONPATH=os.pathsep.join(
                 [REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
  tick = time.perf_counter()
  out = subprocess.run([sys.executable, os.path.abspath(__file__), case, tmp],
                       cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=900)
  assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-5000:])
  with open(os.path.join(tmp, "result.json")) as f:
    result = json.load(f)
  print(f"{case}: {time.perf_counter() - tick:.1f} s wall (tts.run "
        f"{result['test_seconds']:.1f} s: "
        f"{ {k: round(v, 1) for k, v in result['timings'].items()} })")
  return build_case(case, tmp, write=False), result, out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("corpus", ["vctk", "libritts"])
def test_full_config_runs_on_real_layout(tmp_path, compile_cache, corpus):
  c, result, stdout = run_case(corpus, str(tmp_path), compile_cache)
  assert c.name == f"full-{corpus}" and c.data.corpus == corpus
  assert c.train.init_from == "transfer"
  heldout = tuple(c.data.heldout_unseen)
  assert len(heldout) == 8 and not c.data.heldout_seen
  workdir = str(tmp_path / "run")
  run = check_run(c, workdir, result, E2E_METHODS[corpus], heldout)
  assert run["speakers"] == sorted(TRAIN_SPEAKERS[corpus])
  assert run["speaker_slot"] == len(TRAIN_SPEAKERS[corpus])
  for m in E2E_METHODS[corpus]:
    # Equal budget: multi-inner-step learners make fewer (>= 1) steps.
    steps = tts.steps_for_budget(m, c.train)
    assert run["training"][m]["steps"] == steps, m
    assert os.path.isdir(os.path.join(workdir, m, "checkpoints",
                                      str(steps))), m
  # 48 kHz VCTK / 24 kHz LibriTTS were resampled to the features' rate.
  with open(os.path.join(workdir, "transfer", "model", "model.json")) as f:
    fc = json.load(f)["feature_config"]
  assert fc["sample_rate"] == dfeat.FeatureConfig().sample_rate
  assert fc["n_mels"] == 20  # the smoke size replaced full's 80
  for m in E2E_METHODS[corpus][1:]:
    source = os.path.join(workdir, "transfer", "model")
    assert f"[{m}] initialized from {source} (transfer)." in stdout, m
  if corpus == "vctk":
    # The vocoder's held-out NLL with no heldout_seen split on a real corpus.
    nll = run["vocoder"]["heldout_nll"]
    assert sorted(nll) == ["heldout_unseen"]
    assert np.isfinite(nll["heldout_unseen"]["1"]["2"])


if __name__ == "__main__":
  _worker(sys.argv[1], sys.argv[2])
