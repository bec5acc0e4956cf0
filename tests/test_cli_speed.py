"""What keeps a warm `python -m metatts say` / `adapt` fast (issue 13, item 5).

* The CLI keeps the traces of the adaptation, Tacotron inference and
  Griffin-Lim (``metatts.compile_cache.stored_jit``): a warm run reads them
  instead of tracing, and gives the same voice and WAV bytes as a cold run
  and as the library without them.
* ``adapt`` and ``say`` keep a voice's say cache (``metatts.say_cache``):
  a later ``say`` speaks from it without importing flax, optax or Orbax,
  with the same WAV bytes, and falls back to loading (and validating) the
  voice when anything in its folder changed.

* The voice path does not import torch (via tensorboardX), scipy.signal,
  librosa or numba (together ~8 s of a 12 s warm `say` on a 2-core CPU,
  docs/benchmarks.md).
* The numpy code that replaced librosa on that path gives librosa's numbers
  bit for bit (librosa is the independent reference), so every cached
  feature, trimmed clip and synthesized WAV stays byte-identical.
"""

import json
import os
import subprocess
import sys
from typing import Any, NamedTuple

import librosa
import numpy as np
import pytest

from metatts import __main__ as cli
from metatts import api
from metatts import compile_cache
from metatts import vocoders
from metatts import voice as voice_lib
from metatts.audio import features as afeat
from metatts.audio import io as aio

sys.path.insert(0, os.path.dirname(__file__))
from test_api import SR, make_export  # noqa: E402  pylint: disable=g-import-not-at-top
from test_cli import write_clips  # noqa: E402  pylint: disable=g-import-not-at-top

HEAVY = ("torch", "tensorboardX", "scipy.signal", "librosa", "numba")


def test_voice_path_imports_stay_light():
  code = (
      "import sys\n"
      "from metatts import __main__, api, clips, voice, vocoders\n"
      "from metatts.training import export\n"
      "from metatts.audio import features, io\n"
      f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True).stdout.strip().splitlines()[-1]
  assert out == "[]", f"the voice path imports {out}"


def test_training_package_names_still_import():
  from metatts import training  # pylint: disable=g-import-not-at-top
  from metatts.training import checkpoint, loop  # pylint: disable=g-import-not-at-top
  assert training.train is loop.train
  assert training.Checkpointer is checkpoint.Checkpointer
  with pytest.raises(AttributeError, match="no attribute 'nope'"):
    training.nope  # pylint: disable=pointless-statement


def test_slaney_mel_scale_equals_librosa_bit_for_bit():
  rng = np.random.default_rng(0)
  hz = np.concatenate([np.linspace(0.0, 24000.0, 20001),
                       rng.uniform(0.0, 30000.0, 5000),
                       [999.9999999, 1000.0, np.nextafter(1000.0, 2e3)]])
  np.testing.assert_array_equal(afeat.hz_to_mel(hz),
                                librosa.hz_to_mel(hz, htk=False))
  mels = np.concatenate([np.linspace(0.0, 80.0, 20001),
                         rng.uniform(0.0, 60.0, 5000),
                         [np.nextafter(15.0, 0.0), 15.0]])
  np.testing.assert_array_equal(afeat.mel_to_hz(mels),
                                librosa.mel_to_hz(mels, htk=False))
  for f in (0, 0.0, 55.0, 999.0, 1000, 7600.0, 8000.0, 11025.0):
    got, ref = afeat.hz_to_mel(f), librosa.hz_to_mel(f, htk=False)
    assert got == ref and np.ndim(got) == np.ndim(ref) == 0
    assert afeat.mel_to_hz(ref) == librosa.mel_to_hz(ref, htk=False)
  # Not a tautology: the HTK scale differs from Slaney's above 0 Hz.
  assert afeat.hz_to_mel(8000.0) != librosa.hz_to_mel(8000.0, htk=True)


@pytest.mark.parametrize("sr,n_fft,n_mels,fmin,fmax", [
    (16000, 1024, 80, 0.0, 8000.0), (16000, 1024, 80, 55.0, 7600.0),
    (22050, 512, 40, 0.0, None), (24000, 2048, 128, 80.0, None)])
def test_filterbank_equals_the_librosa_scale_version(sr, n_fft, n_mels, fmin,
                                                     fmax):
  """The filterbank built on librosa's scale (the code before the change)."""
  top = sr / 2 if fmax is None else fmax
  fft_freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
  mel_pts = np.linspace(librosa.hz_to_mel(fmin, htk=False),
                        librosa.hz_to_mel(top, htk=False), n_mels + 2)
  hz_pts = librosa.mel_to_hz(mel_pts, htk=False)
  ramps = hz_pts[:, None] - fft_freqs[None, :]
  lower = -ramps[:-2] / np.diff(hz_pts)[:-1, None]
  upper = ramps[2:] / np.diff(hz_pts)[1:, None]
  ref = np.maximum(0.0, np.minimum(lower, upper))
  ref *= (2.0 / (hz_pts[2:n_mels + 2] - hz_pts[:n_mels]))[:, None]
  got = afeat.mel_filterbank(afeat.MelConfig(
      sample_rate=sr, n_fft=n_fft, win_length=n_fft, hop_length=n_fft // 4,
      n_mels=n_mels, fmin=fmin, fmax=fmax))
  np.testing.assert_array_equal(got, ref.astype(np.float32))


def _librosa_bounds(x, top_db, frame, hop, margin):
  rms = librosa.feature.rms(y=x, frame_length=frame, hop_length=hop,
                            center=False, dtype=np.float64)[0]
  if rms.max() <= 1e-10:
    return (0, x.shape[0]), rms, None
  db = librosa.amplitude_to_db(rms, ref=np.max, amin=1e-10, top_db=None)
  active = np.flatnonzero(db > -top_db)
  return ((max(0, int(active[0]) * hop - margin),
           min(x.shape[0], int(active[-1]) * hop + frame + margin)), rms, db)


@pytest.mark.parametrize("frame,hop,margin,top_db", [
    (400, 160, 320, 40.0), (160, 160, 320, 40.0), (1024, 256, 0, 30.0)])
def test_silence_bounds_equal_librosa_bit_for_bit(frame, hop, margin, top_db):
  rng = np.random.default_rng(frame + hop)
  t = np.arange(16000) / 16000.0
  tone = np.sin(2 * np.pi * 220 * t) * np.minimum(1.0, 5 * t)
  signals = [np.r_[np.zeros(4000), tone * 0.3, 1e-4 * rng.normal(size=3000)],
             np.r_[1e-3 * rng.normal(size=2500), tone[:9000] * 0.05],
             rng.normal(size=int(rng.integers(frame + 1, 30000))) * 0.1,
             np.zeros(5000)]
  signals += [rng.normal(size=int(rng.integers(frame + 1, 20000))) *
              10.0 ** rng.uniform(-6, 0) for _ in range(20)]
  for x in signals:
    bounds, rms, db = _librosa_bounds(x, top_db, frame, hop, margin)
    assert aio.silence_bounds(x, top_db, frame, hop, margin) == bounds
    np.testing.assert_array_equal(aio.frame_rms(x, frame, hop), rms)
    if db is not None:
      np.testing.assert_array_equal(
          aio._db_below_loudest(rms), db)  # pylint: disable=protected-access
  # The trimmed tone: the bounds actually move (not a no-op).
  assert aio.silence_bounds(signals[0], 40.0, frame, hop, margin)[0] > 3000


# ----------------------------------------------------------------------------
# Stored traces (metatts.compile_cache.stored_jit): the CLI's warm runs skip
# tracing and lowering, and compute the same bits.


class _Pair(NamedTuple):
  total: Any
  parts: Any


def _fresh_store(monkeypatch, tmp_path):
  """Traces go to tmp_path/traces (the session's XLA cache stays)."""
  import jax  # pylint: disable=g-import-not-at-top
  assert jax.config.jax_compilation_cache_dir  # tests/conftest.py
  folder = os.path.join(str(tmp_path), "traces")
  monkeypatch.setitem(compile_cache._STATE, "dir", str(tmp_path))  # pylint: disable=protected-access
  # An absolute TRACE_DIR wins in os.path.join(cache folder, TRACE_DIR), so
  # the CLI's enable() (which finds the session's folder) writes here too.
  monkeypatch.setattr(compile_cache, "TRACE_DIR", folder)
  return folder


def test_stored_jit_round_trips_trees_and_skips_tracing(monkeypatch,
                                                        tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  folder = _fresh_store(monkeypatch, tmp_path)
  traced = []

  def fun(params, x, *, n):
    traced.append(n)
    y = x
    for _ in range(n):
      y = jnp.tanh(y @ params["layers"][0]["w"] + params["b"])
    return _Pair(total=jnp.sum(y), parts={"y": {0: y, 1: -y},
                                          "k": [y * 2, None]})

  # Dicts with int keys, as NNX parameter trees have for layer lists.
  params = {"layers": {0: {"w": jnp.eye(3) * 0.5}}, "b": jnp.arange(3.0)}
  x = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)
  want = jax.jit(fun, static_argnames=("n",))(params, x, n=2)
  with compile_cache.storing_traces():
    first = compile_cache.stored_jit(fun, name="toy", key=("toy", 1),
                                     static_argnames=("n",))
    got1 = first(params, x, n=2)
    assert first.stored == 1 and first.loaded == 0
    assert len(os.listdir(folder)) == 1
    # A new process is a new object: it reads the trace, tracing nothing.
    traced.clear()
    again = compile_cache.stored_jit(fun, name="toy", key=("toy", 1),
                                     static_argnames=("n",))
    got2 = again(params, x, n=2)
    assert again.loaded == 1 and traced == []
    # Another closure key or static value is another trace.
    other = compile_cache.stored_jit(fun, name="toy", key=("toy", 2),
                                     static_argnames=("n",))
    other(params, x, n=2)
    other(params, x, n=3)
    assert other.stored == 2 and len(os.listdir(folder)) == 3
    # Without the function (``say`` from a voice's cache): found by its
    # name, key text and argument tree, called with flat leaves.
    call = compile_cache.StoredCall(
        "toy", first.key_text,
        compile_cache.tree_text(jax.tree.structure((params, x))))
    traced.clear()
    got3 = call(jax.tree.leaves((params, x)), n=2)
    assert traced == [] and type(got3).__name__ == "_Pair"
    assert got3._fields == ("total", "parts") and got3.parts["k"][1] is None
    for a, b in zip(jax.tree.leaves(got3), jax.tree.leaves(want)):
      assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    with pytest.raises(compile_cache.TraceMissing):
      call(jax.tree.leaves((params, x)), n=4)  # never traced
    with pytest.raises(compile_cache.TraceMissing):
      compile_cache.StoredCall("toy", "other key", call.in_tree_text)(
          jax.tree.leaves((params, x)), n=2)
  with pytest.raises(compile_cache.TraceMissing, match="off"):
    call(jax.tree.leaves((params, x)), n=2)  # outside storing_traces
  for got in (got1, got2):
    assert isinstance(got, _Pair) and got.parts["k"][1] is None
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
  # Outside storing_traces (the API, the evaluation): plain jax.jit.
  traced.clear()
  outside = compile_cache.stored_jit(lambda *a, **k: fun(*a, **k),
                                     name="toy", key=("toy", 1),
                                     static_argnames=("n",))
  outside(params, x, n=2)
  assert outside.loaded == outside.stored == 0 and traced == [2]


def test_stored_jit_falls_back_to_jit(monkeypatch, tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  folder = _fresh_store(monkeypatch, tmp_path)

  def with_callback(x):  # host callbacks cannot be exported
    return jax.pure_callback(lambda v: np.asarray(v) * 2,
                             jax.ShapeDtypeStruct(x.shape, x.dtype), x)

  with compile_cache.storing_traces():
    f = compile_cache.stored_jit(with_callback, name="cb", key=())
    np.testing.assert_array_equal(f(jnp.ones(3)), 2 * np.ones(3))
    g = compile_cache.stored_jit(lambda x, y: x * y, name="scalar", key=())
    assert float(g(jnp.float32(2.0), 3.0)) == 6.0  # a Python scalar
    # A damaged file is traced again and replaced.
    h = compile_cache.stored_jit(lambda x: x + 1, name="damaged", key=())
    h(jnp.ones(2))
    (name,) = [n for n in os.listdir(folder) if n.startswith("damaged-")]
    with open(os.path.join(folder, name), "r+b") as fh:
      fh.truncate(40)
    h2 = compile_cache.stored_jit(lambda x: x + 1, name="damaged", key=())
    np.testing.assert_array_equal(h2(jnp.ones(2)), 2 * np.ones(2))
    assert h2.loaded == 0 and h2.stored == 1
  assert f.stored == g.stored == 0
  assert sorted(n.split("-")[0] for n in os.listdir(folder)) == ["damaged"]


def _new_functions():
  """What a new process has: no jitted or stored function yet."""
  voice_lib.adapt_function.cache_clear()
  voice_lib.infer_function.cache_clear()
  vocoders._griffin_lim_function.cache_clear()  # pylint: disable=protected-access


@pytest.mark.slow  # ~40 s idle, 85 s busy: compiles adapt/infer/GL twice
def test_cli_warm_run_loads_traces_and_gives_identical_voice_and_wav(
    monkeypatch, tmp_path, capsys):
  """Cold (traces written), warm (traces read, nothing traced) and the
  library without the store give the same parameters and WAV bytes."""
  import jax  # pylint: disable=g-import-not-at-top
  folder = _fresh_store(monkeypatch, tmp_path)
  workdir = str(tmp_path / "model")
  make_export(workdir)
  clips = write_clips(str(tmp_path / "clips"))
  text = ["Hello", "there."]

  compiles = []  # XLA programs built (or loaded) from stored traces
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, secs, **kw: compiles.append(kw.get("fun_name"))
      if event.endswith("backend_compile_duration") and
      kw.get("fun_name") == "jit(call_exported)" else None)

  def cli_run(tag):
    _new_functions()
    voice_dir, wav = str(tmp_path / f"voice_{tag}"), str(tmp_path / f"{tag}.wav")
    compiles.clear()
    # Two chunks of 5 steps: the second starts from device arrays, the
    # first from the restored host arrays, and both use one program.
    assert cli.main(["adapt", "--model", workdir, "--clips", clips, "--out",
                     voice_dir, "--steps", "10", "--no-progress"]) == 0
    # (1 in the cold run; a warm run in this process may find it in
    # jax's in-memory cache.)
    assert len(compiles) <= 1 and (tag != "cold" or compiles), compiles
    traces = sum(voice_lib.ADAPT_TRACES.values())
    assert cli.main(["say", "--voice", voice_dir, "-o", wav, *text]) == 0
    with open(wav, "rb") as f:
      return api.load_voice(voice_dir).params, f.read(), traces

  before = sum(voice_lib.ADAPT_TRACES.values())
  cold_params, cold_wav, cold_traces = cli_run("cold")
  names = sorted(n.split("-")[0] for n in os.listdir(folder))
  assert {"adapt_resumable_fn", "infer_fn", "mel_to_audio"} <= set(names), (
      names)
  assert cold_traces > before  # the cold run traced the adaptation
  warm_params, warm_wav, warm_traces = cli_run("warm")
  assert warm_traces == cold_traces  # ... the warm run did not
  capsys.readouterr()
  # The library path without stored traces (plain jax.jit), as before.
  _new_functions()
  tts = api.load(workdir)
  paths = sorted(os.path.join(clips, n) for n in os.listdir(clips)
                 if n.endswith(".wav"))
  texts = [open(p[:-4] + ".txt").read().strip() for p in paths]
  voice = tts.adapt_clips(tts.prepare_clips(paths, texts), steps=10,
                          progress=lambda *a: None)
  plain_wav = str(tmp_path / "plain.wav")
  aio.save_wav(plain_wav, voice.synthesize(" ".join(text))[0], SR)
  with open(plain_wav, "rb") as f:
    plain = f.read()
  assert cold_wav == warm_wav == plain
  for got in (cold_params, warm_params):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(voice.params)):
      assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_trace_keys_read_versions_without_importing_flax_or_optax():
  """The key of a stored trace takes each library's version from its
  installed metadata when the library is not imported (a cached ``say``
  imports neither flax nor optax); both sources agree, so the keys do."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top,unused-import
  import optax  # pylint: disable=g-import-not-at-top,unused-import
  for name in ("jax", "jaxlib", "flax", "optax", "numpy", "ml_dtypes"):
    assert compile_cache._version(name) == metadata.version(name), name  # pylint: disable=protected-access
  from metatts.meta import inner  # pylint: disable=g-import-not-at-top
  assert compile_cache.UNROLL_ENV == inner.UNROLL_ENV


def test_say_speaks_from_the_voice_cache_without_the_model_stack(
    monkeypatch, tmp_path, capsys):
  """``adapt`` writes the voice's say cache; once the model's inference was
  traced, ``say`` in a new process speaks from it without importing flax,
  optax or Orbax, and writes the WAV bytes of the loaded voice; a damaged
  entry or any change to the voice folder sends ``say`` back to loading
  the voice (which validates it)."""
  from metatts import say_cache  # pylint: disable=g-import-not-at-top
  _fresh_store(monkeypatch, tmp_path)
  workdir = str(tmp_path / "model")
  make_export(workdir)
  clips = write_clips(str(tmp_path / "clips"))
  words = ["Hello", "there."]

  def adapt(name, steps):
    voice_dir = str(tmp_path / name)
    assert cli.main(["adapt", "--model", workdir, "--clips", clips, "--out",
                     voice_dir, "--steps", str(steps), "--no-progress"]) == 0
    return voice_dir

  _new_functions()
  first = adapt("first", 2)
  with compile_cache.storing_traces():  # as inside the CLI
    assert say_cache.load(first, None) is not None  # written by adapt
    assert say_cache.load(first, "griffin-lim") is None  # another entry
  # No inference trace yet: this say loads the voice and stores the trace.
  assert cli.main(["say", "--voice", first, "-o", str(tmp_path / "a.wav"),
                   *words]) == 0
  # Another voice of the model: its entry, written by adapt, is what the
  # next say speaks from (the traces are the model's, shared).
  voice_dir = adapt("second", 4)
  code = (
      "import sys\n"
      "from metatts import __main__ as m\n"
      f"status = m.main(['say', '--voice', {voice_dir!r}, '-o', "
      f"{str(tmp_path / 'b.wav')!r}, *{words!r}])\n"
      "print(status, sorted(x for x in ('flax', 'optax', 'orbax') "
      "if x in sys.modules))\n")
  # The user's set-up: the cache folder from METATTS_COMPILE_CACHE (not the
  # test session's XLA folder), holding the traces and the say cache.
  env = {k: v for k, v in os.environ.items()
         if k != "JAX_COMPILATION_CACHE_DIR"}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=600, check=True,
                       env=dict(env, METATTS_COMPILE_CACHE=str(tmp_path)))
  assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr
  loaded, sr = api.load_voice(voice_dir).synthesize(" ".join(words))
  aio.save_wav(str(tmp_path / "c.wav"), loaded, sr)
  with open(tmp_path / "b.wav", "rb") as b, open(tmp_path / "c.wav", "rb") as c:
    assert b.read() == c.read()
  # The cached voice speaks like the loaded one, sentence by sentence.
  with compile_cache.storing_traces():
    cached = say_cache.load(voice_dir, None)
    got, sr = cached.synthesize("Hello there. How are you?", seed=3)
  want, _ = api.load_voice(voice_dir).synthesize("Hello there. How are you?",
                                                 seed=3)
  assert sr == SR and got.tobytes() == want.tobytes()
  # A damaged entry (settings that fail, then junk) never fails a say.
  with compile_cache.storing_traces():
    folder = say_cache._entry_dir(voice_dir, None)  # pylint: disable=protected-access
  entry_path = os.path.join(folder, say_cache.ENTRY_FILE)
  with open(entry_path) as f:
    entry = json.load(f)
  entry["config"]["max_frames"] = 0
  for damage in (json.dumps(entry), "{not json"):
    with open(entry_path, "w") as f:
      f.write(damage)
    assert cli.main(["say", "--voice", voice_dir, "-o",
                     str(tmp_path / "d.wav"), *words]) == 0
    with open(tmp_path / "b.wav", "rb") as b, \
        open(tmp_path / "d.wav", "rb") as d:
      assert b.read() == d.read()
  # A hand-edited voice.json (here: another speaker slot) is a miss, so
  # say validates it again and refuses the bad slot.
  path = os.path.join(voice_dir, "voice.json")
  with open(path) as f:
    record = json.load(f)
  record["speaker_slot"] = 9999
  with open(path, "w") as f:
    json.dump(record, f)
  with compile_cache.storing_traces():
    assert say_cache.load(voice_dir, None) is None
  capsys.readouterr()
  assert cli.main(["say", "--voice", voice_dir, "-o",
                   str(tmp_path / "e.wav"), "Hi."]) == 2
  assert "speaker_slot" in capsys.readouterr().err


def test_say_cache_is_written_only_for_the_folder_it_loaded(monkeypatch,
                                                             tmp_path):
  """A voice replaced between loading and storing (another adapt --out)
  is not cached under the new files' fingerprint."""
  from metatts import say_cache  # pylint: disable=g-import-not-at-top
  _fresh_store(monkeypatch, tmp_path)
  workdir = str(tmp_path / "model")
  make_export(workdir)
  clips = write_clips(str(tmp_path / "clips"))
  voice_dir = str(tmp_path / "voice")
  _new_functions()
  assert cli.main(["adapt", "--model", workdir, "--clips", clips, "--out",
                   voice_dir, "--steps", "1", "--no-progress"]) == 0
  with compile_cache.storing_traces():
    seen = say_cache.fingerprint(voice_dir, None)
    voice = api.load_voice(voice_dir)
    os.utime(os.path.join(voice_dir, "voice.json"))  # "replaced" meanwhile
    assert not say_cache.store(voice, voice_dir, None, seen)
    assert say_cache.store(voice, voice_dir, None)  # as it is now
    assert say_cache.load(voice_dir, None) is not None


def test_cli_fast_exit_keeps_the_status_and_the_messages(tmp_path):
  """`python -m metatts` leaves without the interpreter's teardown
  (metatts.__main__._exit_now); the exit status and stderr still arrive."""
  out = subprocess.run(
      [sys.executable, "-m", "metatts", "say", "--voice",
       str(tmp_path / "none"), "-o", str(tmp_path / "x.wav"), "Hi."],
      capture_output=True, text=True, timeout=300, check=False)
  assert out.returncode == 2
  assert "is not a saved voice" in out.stderr and out.stderr.endswith("\n")
