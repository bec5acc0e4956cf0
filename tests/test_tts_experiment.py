"""Tests of the end-to-end TTS experiment (metatts.experiments.tts).

The two slow tests share one smoke run (``quickstart.py:smoke``: a 5-speaker
synthetic corpus, a microscopic Tacotron, 4 training steps per method):

* the run writes the documented workdir layout, exports that load back with
  the trained parameters, and samples for every method;
* every method was adapted with the identical protocol (clips, steps,
  optimizer, filter, learning rate);
* ``kill -9`` during training, then a restart, ends with exactly the
  parameters and final loss of the uninterrupted run.

The fast tests check the pieces against hand computation.
"""

import json
import os
import signal
import subprocess
import sys
import time
import types

import jax
import numpy as np
import pytest

from metatts import clips
from metatts.experiments import adaptation
from metatts.experiments import tts

from tts_smoke import CONFIG, REPO
from tts_smoke import check_evaluation_equals_api as _check_evaluation_equals_api
from tts_smoke import final_params as _final_params
from tts_smoke import smoke_config as _smoke_config


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp("tts"))
  config = _smoke_config(tmp)
  # The vocoder's stage of the pipeline is tested by test_configs.py's
  # base:tiny and full:vctk runs; here it would only add its compiles.
  config.vocoder.enabled = False
  workdir = os.path.join(tmp, "run")
  result = tts.run(config, workdir)
  return types.SimpleNamespace(tmp=tmp, config=config, workdir=workdir,
                               result=result)


@pytest.mark.slow
def test_smoke_run_layout_export_and_protocol(smoke):
  w = smoke.workdir
  for name in ("config.json", "run.json", "samples/manifest.json",
               "samples/protocol.json"):
    assert os.path.isfile(os.path.join(w, name)), name
  run = json.load(open(os.path.join(w, "run.json")))
  assert run["methods"] == ["transfer", "meta-fomaml"]
  assert run["primary"] == "meta-fomaml"
  # Equal budget: pre-training and one-step FOMAML see the same clip passes.
  assert run["budget"]["transfer"] == run["budget"]["meta-fomaml"] == 4 * 2 * 4
  slot = run["speaker_slot"]
  assert slot == len(run["speakers"]) == 3
  for method in ("transfer", "meta-fomaml"):
    assert os.path.isdir(os.path.join(w, method, "checkpoints", "4"))
    assert os.path.isfile(os.path.join(w, method, "metrics.json"))
    params, info = _final_params(os.path.join(w, method))
    assert info["method"] == method and info["model"] == "tacotron"
    assert info["adapt"] == {"filter": "speaker+decoder", "optimizer": "sgd",
                             "lr": 0.01, "default_steps": 20,
                             "speaker_slot": slot}
    assert info["speakers"] == run["speakers"]
    table = np.asarray(params["speaker"]["table"]["embedding"])
    assert table.shape[0] == slot + 1
    if method == "transfer":
      # The new-voice row is the mean of the trained rows.
      np.testing.assert_allclose(table[slot], table[:slot].mean(0),
                                 rtol=1e-5, atol=1e-6)
  # Samples: every method (scratch included) x shots x steps x speaker.
  manifest = json.load(open(os.path.join(w, "samples", "manifest.json")))
  assert sorted(set(manifest["speakers"].values())) == ["heldout_seen",
                                                        "heldout_unseen"]
  for method in ("transfer", "meta-fomaml", "scratch"):
    for k in (1, 2):
      for s in (0, 2):
        for spk in manifest["speakers"]:
          folder = os.path.join(w, "samples", method, f"shots_{k}",
                                f"steps_{s}", spk)
          wavs = [f for f in os.listdir(folder) if f.endswith(".wav")]
          assert len(wavs) == 1, folder
          ref = os.path.join(w, "samples", "reference", spk, wavs[0])
          assert os.path.isfile(ref)
  # One protocol for all: same clips, steps, optimizer, filter, lr.
  protocol = json.load(open(os.path.join(w, "samples", "protocol.json")))
  assert sorted(protocol) == ["meta-fomaml", "scratch", "transfer"]
  first = protocol["transfer"]
  for method, rec in protocol.items():
    assert rec["protocol"] == first["protocol"], method
    for spk, r in rec["speakers"].items():
      assert r["evaluation"] == first["speakers"][spk]["evaluation"]
      for k, sk in r["shots"].items():
        assert sk["support"] == first["speakers"][spk]["shots"][k]["support"]
        # Support and evaluation texts never overlap.
        assert not set(sk["support"]) & set(r["evaluation"])
  for spk, r in protocol["scratch"]["speakers"].items():
    assert np.isfinite(r["shots"]["2"]["support_loss"]["2"])
  assert not os.path.exists(os.path.join(w, "vocoder"))  # disabled here


@pytest.mark.slow
def test_evaluation_audio_is_what_the_api_gives(smoke, tmp_path):
  """The evaluation's samples are ``metatts.load(...).adapt(...)
  .synthesize(...)`` on the same clips, seed and steps, sample for sample."""
  _check_evaluation_equals_api(smoke.config, smoke.workdir, tmp_path,
                               ("meta-fomaml", "scratch"))


@pytest.mark.slow
def test_kill9_resume_equals_uninterrupted(smoke):
  """SIGKILL after the first checkpoint; the restart ends identically."""
  workdir = os.path.join(smoke.tmp, "killed")
  args = [sys.executable, os.path.join(REPO, "experiments", "main.py"),
          f"--config={CONFIG}:smoke", f"--workdir={workdir}",
          f"--config.data.root={smoke.config.data.root}",
          f"--config.data.cache_dir={smoke.config.data.cache_dir}",
          "--config.methods=('transfer',)", "--config.adapt.enabled=False",
          "--config.vocoder.enabled=False", "--config.progress=False"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  marker = os.path.join(workdir, "transfer", "checkpoints", "2",
                        "commit_success.txt")
  deadline = time.time() + 600
  while not os.path.exists(marker) and proc.poll() is None:
    assert time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.05)
  killed = proc.poll() is None
  if killed:
    proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert killed, "training finished before it could be killed"
  assert not os.path.exists(os.path.join(workdir, "transfer", "model"))
  out = subprocess.run(args, cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  run = json.load(open(os.path.join(workdir, "run.json")))
  assert run["training"]["transfer"]["resumed_from"] == 2
  resumed, _ = _final_params(os.path.join(workdir, "transfer"))
  reference, _ = _final_params(os.path.join(smoke.workdir, "transfer"))
  for a, b in zip(jax.tree_util.tree_leaves(resumed),
                  jax.tree_util.tree_leaves(reference)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  m1 = json.load(open(os.path.join(workdir, "transfer", "metrics.json")))
  m2 = json.load(open(os.path.join(smoke.workdir, "transfer",
                                   "metrics.json")))
  last = lambda m: [h for h in m["history"] if "train/loss" in h][-1]  # noqa: E731
  assert last(m1)["train/loss"] == last(m2)["train/loss"]


# ----------------------------------------------------------------------------
# Fast tests of the pieces.


class _Ex(types.SimpleNamespace):
  pass


def _examples(speaker, n, frames=10, tokens=5, text_prefix="t"):
  rng = np.random.default_rng(len(speaker) + n)
  return [_Ex(speaker=speaker, utt_id=f"{speaker}_{i:03d}",
              text=f"{text_prefix}{i}", tokens=np.arange(1, tokens + 1,
                                                         dtype=np.int32),
              mel=rng.standard_normal((frames + i, 4)).astype(np.float32),
              audio_path=f"/x/{speaker}_{i}.wav") for i in range(n)]


def _protocol(**kw):
  args = dict(filter="speaker+decoder", optimizer="sgd", lr=0.01,
              steps=(0, 5), shots=(1, 3), num_eval=2, seed=0,
              speaker_slot=7)
  args.update(kw)
  return adaptation.Protocol(**args)


def test_select_clips_is_deterministic_disjoint_and_nested():
  heldout = {"heldout_seen": {"a": _examples("a", 8), "b": _examples("b", 4)},
             "heldout_unseen": {"c": _examples("c", 6)}}
  p = _protocol()
  sel = adaptation.select_clips(heldout, p)
  again = adaptation.select_clips(heldout, p)
  # b has 4 texts < 3 + 2 and is left out.
  assert [(s.split, s.speaker) for s in sel] == [("heldout_seen", "a"),
                                                 ("heldout_unseen", "c")]
  for s, t in zip(sel, again):
    assert [e.utt_id for e in s.support] == [e.utt_id for e in t.support]
    assert len(s.support) == 3 and len(s.evaluation) == 2
    assert not {e.text for e in s.support} & {e.text for e in s.evaluation}
  other = adaptation.select_clips(heldout, p._replace(seed=1))
  assert ([e.utt_id for e in other[0].support]
          != [e.utt_id for e in sel[0].support]
          or [e.utt_id for e in other[1].support]
          != [e.utt_id for e in sel[1].support])


def test_support_batch_of_cached_examples_is_bucketed():
  exs = _examples("a", 2)  # 5 tokens, 10 and 11 frames, 4 mels
  batch = clips.make_batch([clips.from_example(e) for e in exs],
                           speaker_slot=7, max_tokens=64, max_frames=300,
                           num_mels=4)
  assert batch.tokens.shape == (2, clips.TOKEN_BUCKET)
  assert batch.mels.shape == (2, clips.FRAME_BUCKET, 4)
  np.testing.assert_array_equal(batch.mel_lengths, [10, 11])
  np.testing.assert_array_equal(batch.speaker_ids, [7, 7])
  np.testing.assert_array_equal(batch.mels[1, :11], exs[1].mel)
  assert not np.asarray(batch.mels[0, 10:]).any()
  assert batch.seeds is None  # the model's fixed masks, as TTS.adapt
  # The bucket never passes the model's limit (nor cuts a clip).
  capped = clips.make_batch([clips.from_example(e) for e in exs],
                            speaker_slot=0, max_tokens=8, max_frames=16,
                            num_mels=4)
  assert capped.tokens.shape == (2, 8) and capped.mels.shape == (2, 16, 4)


def test_protocol_from_config_validates():
  c = tts.default_config().adapt
  p = adaptation.protocol_from_config(c, 5)
  assert p.steps == (0, 5, 20, 100) and p.shots == (1, 5)
  assert p.speaker_slot == 5 and p.optimizer == "sgd"
  c.optimizer = "rmsprop"
  with pytest.raises(ValueError, match="optimizer"):
    adaptation.protocol_from_config(c, 5)
  c.optimizer = "sgd"
  c.filter = "speakr"
  with pytest.raises(ValueError, match="speakr"):
    adaptation.protocol_from_config(c, 5)


def test_set_slot_to_mean_and_clip_passes():
  table = np.arange(12, dtype=np.float32).reshape(4, 3)
  params = {"speaker": {"table": {"embedding": table}}, "decoder": {"w": 1}}
  out = tts.set_slot_to_mean(params, 3)
  np.testing.assert_allclose(out["speaker"]["table"]["embedding"][3],
                             [3.0, 4.0, 5.0])
  np.testing.assert_array_equal(out["speaker"]["table"]["embedding"][:3],
                                table[:3])
  assert params["speaker"]["table"]["embedding"][3, 0] == 9.0  # not mutated
  t = tts.default_config().train  # N=4, K=5, Q=5
  assert tts.clip_passes("transfer", t, 10) == 10 * 4 * 10
  assert tts.clip_passes("meta-fomaml", t, 10) == 10 * 4 * (5 + 5)
  # Reptile: 3 support passes, and one query pass for the gradient of the
  # parameters the filter (speaker+decoder) leaves out of the inner loop.
  assert tts.clip_passes("meta-reptile", t, 10) == 10 * 4 * (5 * 3 + 5)
  t.filter = "all"  # no such parameters: no query pass
  assert tts.clip_passes("meta-reptile", t, 10) == 10 * 4 * 5 * 3
  t.filter = "speaker+decoder"
  # The anchor term: one more query pass per task.
  t.anchor_weight = 1.0
  assert tts.clip_passes("meta-fomaml", t, 10) == 10 * 4 * (5 + 5 + 5)
  assert tts.clip_passes("meta-reptile", t, 10) == 10 * 4 * (5 * 3 + 5 + 5)
  assert tts.clip_passes("transfer", t, 10) == 10 * 4 * 10  # unchanged
  with pytest.raises(ValueError, match="anchor_weight"):
    tts.make_learner("meta-imaml", t, "all")
  tts.make_learner("transfer", t, "all")  # pre-training: no anchor, no error
  t.anchor_weight = 0.0
  with pytest.raises(ValueError, match="known methods"):
    tts.make_learner("meta-foo", t, "all")
  # The NaN/Inf guard of the loop gets the run's threshold.
  c = tts.default_config()
  c.train.max_skipped = 3
  lc = tts._loop_config(c, 7)  # pylint: disable=protected-access
  assert (lc.max_skipped, lc.num_steps, lc.seed) == (3, 7, c.seed)


def test_equal_budget_steps():
  """Each method gets the clip passes of num_steps pre-training steps."""
  t = tts.default_config().train  # N=4, K=5, Q=5; 40 clip passes per step
  t.num_steps = 150
  assert t.equal_budget  # the default
  budget = 150 * 4 * (5 + 5)
  assert tts.steps_for_budget("transfer", t) == 150
  assert tts.steps_for_budget("meta-fomaml", t) == 150  # 1 inner step
  t.inner_steps.fomaml = 5  # 4 x (5 x 5 + 5) = 120 passes per meta-step
  assert tts.steps_for_budget("meta-fomaml", t) == 50
  assert tts.clip_passes("meta-fomaml", t, 50) == budget
  # 4 x (5 x 3 + 5) = 80 (the query pass of the parameters outside the filter)
  assert tts.steps_for_budget("meta-reptile", t) == 75
  assert tts.clip_passes("meta-reptile", t, 75) == budget
  t.num_steps = 1
  assert tts.steps_for_budget("meta-fomaml", t) == 1  # never 0
  t.num_steps = 150
  t.equal_budget = False
  assert tts.steps_for_budget("meta-fomaml", t) == 150


def test_task_stream_depends_only_on_seed_and_step():
  train = {s: _examples(s, 6, text_prefix=s) for s in ("a", "b", "c")}
  data = tts.Data("/x", None, train, {}, ["a", "b", "c"],
                  adaptation_buckets(), {})
  c = tts.default_config()
  c.train.num_tasks, c.train.num_support, c.train.num_query = 2, 2, 1
  key = np.asarray(jax.random.PRNGKey(0))
  full = tts.task_factory(data, c, None)(key, 0)
  first = [next(full) for _ in range(5)]
  resumed = tts.task_factory(data, c, None)(key, 3)
  for expect in first[3:]:
    got = next(resumed)
    for a, b in zip(jax.tree_util.tree_leaves(expect),
                    jax.tree_util.tree_leaves(got)):
      np.testing.assert_array_equal(a, b)
  # Meta methods put every clip on the new-voice slot.
  slotted = next(tts.task_factory(data, c, 3)(key, 0))
  assert (slotted.support.speaker_ids == 3).all()
  assert (slotted.query.speaker_ids == 3).all()
  np.testing.assert_array_equal(slotted.support.mels, first[0].support.mels)


def adaptation_buckets():
  from metatts.data import sampler  # pylint: disable=g-import-not-at-top
  return sampler.Buckets((8,), (32,))


@pytest.mark.slow
def test_voice_notebook_runs_headless_on_the_smoke_run(smoke, tmp_path):
  """notebooks/few_shot_voice.ipynb executed by nbclient on this module's
  smoke run (``METATTS_NOTEBOOK_WORKDIR``: no training of its own) in a fresh
  folder: no error cell and nothing Colab-only runs, the reloaded voice
  speaks identically, the figures and audio display, and the voice folder
  lands under the working directory with the user's umask."""
  from notebook_runner import modes, run_notebook  # pylint: disable=g-import-not-at-top
  before = sorted(os.listdir(smoke.workdir))
  done = run_notebook("few_shot_voice.ipynb", tmp_path, umask=0o027,
                      env={"METATTS_NOTEBOOK_WORKDIR": smoke.workdir})
  print(f"few_shot_voice.ipynb executed in {done.seconds:.1f} s")
  assert not done.outputs("error")
  text = done.text
  assert f"Reusing the trained models in {smoke.workdir}" in text, text[-3000:]
  assert "Trained:" not in text
  # The held-out speaker of the run's own corpus, and its 5 clips.
  data = tts.prepare_data(smoke.config, progress=False)
  speaker, examples = sorted(data.heldout["heldout_unseen"].items())[0]
  assert f"Held-out speaker: {speaker}" in text
  for e in examples[:5]:
    assert f"  {os.path.basename(e.audio_path)}: {e.text}" in text
  assert f"model: {os.path.join(smoke.workdir, 'meta-fomaml', 'model')}" in (
      text)
  voice_dir = tmp_path / "voices" / "heldout"
  assert f"{voice_dir} identical audio: True" in text, text[-3000:]
  assert done.count("image/png") == 2  # the loss curve and the mels
  assert done.count("text/html") >= 3  # the reference and two Audio players
  with open(voice_dir / "voice.json") as f:
    saved = json.load(f)
  assert saved["steps"] == 20 and len(saved["losses"]) >= 20
  assert np.all(np.isfinite(saved["losses"]))
  # Written only under the working directory, with the umask's modes.
  assert sorted(os.listdir(tmp_path)) == ["voices"]
  assert sorted(os.listdir(smoke.workdir)) == before
  found = modes(tmp_path)
  assert found["voices"] == found["voices/heldout"] == 0o750
  assert found["voices/heldout/voice.json"] == 0o640
  loose = {p: m for p, m in found.items() if m & 0o007}
  assert not loose, loose  # nothing for "other" under umask 027


def test_meta_clip_norm_clips_the_outer_update_to_that_norm():
  """With Reptile's SGD outer step (epsilon 1) the update is the clipped
  pseudo-gradient: its global norm is meta_clip_norm when the raw one is
  larger, and the raw one (reported as grad_norm) is unchanged."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from metatts.types import Task  # pylint: disable=g-import-not-at-top
  t = tts.default_config().train
  t.reptile_outer, t.reptile_epsilon, t.inner_lr = "sgd", 1.0, 0.5
  t.inner_steps.reptile = 2

  def loss_fn(params, batch):
    x, y = batch
    return 0.5 * jnp.mean((x @ params["w"] - y) ** 2), {}

  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 4, 3)).astype(np.float32)
  tasks = Task(support=(x, 5.0 * x.sum(-1)), query=(x, 5.0 * x.sum(-1)))
  params = {"w": jnp.zeros(3)}

  def update(clip):
    t.meta_clip_norm = clip
    learner = tts.make_learner("meta-reptile", t, "all")
    state = learner.init(params)
    new, metrics = learner.step(state, tasks, loss_fn)
    return float(jnp.linalg.norm(new.params["w"])), float(metrics["grad_norm"])

  raw, raw_norm = update(0.0)
  assert raw > 1.0 and abs(raw - raw_norm) < 1e-4 * raw
  clipped, reported = update(0.25)
  assert abs(clipped - 0.25) < 1e-5
  assert abs(reported - raw_norm) < 1e-4 * raw_norm
  t.meta_clip_norm = 0.0
