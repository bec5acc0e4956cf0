"""Long adaptation runs and clip screening (issue 13, items 2 and 4).

On the tiny random exports of ``test_api`` (one with the SGD protocol, one
with Adam):

* a progress callback / bar sees every chunk boundary, and SGD gives the
  same numbers with or without it; Adam run in chunks (its moments carried
  over) matches the one-call run;
* Ctrl-C between chunks raises ``AdaptationInterrupted`` (a
  ``KeyboardInterrupt``) carrying the chunk boundary with the lowest
  support loss, checked against an uninterrupted run;
* ``python -m metatts adapt`` stopped by SIGINT saves that voice and exits
  130 within about a second (subprocess), and refuses ``--steps`` above the
  bound before any work;
* white noise with a normal transcript is refused naming the clip, speech
  (the test clips, the embedded corpus) passes; hidden files in a clip
  folder are skipped; clip-length messages say what a user cloning a voice
  can do; the "Adapting..." line comes only after the clips passed.
"""

import glob
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from metatts import __main__ as cli
from metatts import api
from metatts import clips as clips_lib
from metatts import voice as voice_lib

sys.path.insert(0, os.path.dirname(__file__))
from test_api import ADAPT, SR, TEXTS, make_export, tone  # noqa: E402  pylint: disable=g-import-not-at-top
from test_cli import write_clips  # noqa: E402  pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SGD = dict(ADAPT, optimizer="sgd", lr=0.01)


@pytest.fixture(scope="module")
def sgd_workdir(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("long_sgd"))
  make_export(wd, adapt=SGD)
  return wd


@pytest.fixture(scope="module")
def sgd_tts(sgd_workdir):
  return api.load(sgd_workdir)


@pytest.fixture(scope="module")
def adam_tts(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("long_adam"))
  make_export(wd)  # test_api's protocol: Adam
  return api.load(wd)


@pytest.fixture(scope="module")
def clips():
  return [tone(110 + 25 * i, 0.7 + 0.1 * i, seed=i) for i in range(3)]


def _batch(tts, clips):
  prepared = tts.prepare_clips(clips, TEXTS[:len(clips)], SR)
  batch = tts.make_batch(prepared)
  return voice_lib.start(tts, batch), batch


# ---------------------------------------------------------------------------
# Progress and chunks.


def test_sgd_progress_sees_every_chunk_and_changes_nothing(sgd_tts, clips):
  start, batch = _batch(sgd_tts, clips)
  plain = voice_lib.adapt(sgd_tts, start, batch, [12])
  seen = []
  with_cb = voice_lib.adapt(sgd_tts, start, batch, [12],
                            callback=lambda *a: seen.append(a))
  # Bit for bit what the evaluation runs (no callback).
  np.testing.assert_array_equal(with_cb.losses[12], plain.losses[12])
  for a, b in zip(jax_leaves(with_cb.params[12]), jax_leaves(plain.params[12])):
    np.testing.assert_array_equal(a, b)
  assert [s for s, _, _ in seen] == [5, 10, 12]
  assert all(t == 12 for _, t, _ in seen)
  # The loss at each boundary (that chunk's final loss; the curve holds the
  # next chunk's first, the same value from another compiled program).
  np.testing.assert_allclose([l for _, _, l in seen],
                             plain.losses[12][[5, 10, 12]], rtol=1e-6)


def jax_leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_meta_adapt_continues_adam_from_its_state():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from metatts import meta  # pylint: disable=g-import-not-at-top

  def loss_fn(p, x):
    return jnp.sum((p["a"] - x) ** 2) + p["b"] ** 2 * jnp.sum(p["a"] ** 2), ()

  p0 = {"a": jnp.array([1.0, -2.0, 3.0]), "b": jnp.array(0.5)}
  x, opt = jnp.array([0.3, 0.1, -0.2]), optax.adam(0.1)
  _, whole = meta.adapt(p0, x, loss_fn, inner_optimizer=opt, num_steps=6)
  p1, first, s1 = meta.adapt(p0, x, loss_fn, inner_optimizer=opt,
                             num_steps=4, return_state=True)
  _, second, s2 = meta.adapt(p1, x, loss_fn, inner_optimizer=opt,
                             num_steps=2, opt_state=s1, return_state=True)
  assert int(s1[0].count) == 4 and int(s2[0].count) == 6
  np.testing.assert_allclose(np.concatenate([first[:-1], second]), whole,
                             rtol=1e-6)
  # A restarted Adam (fresh moments) is a different run: the test can fail.
  _, restarted = meta.adapt(p1, x, loss_fn, inner_optimizer=opt, num_steps=2)
  assert abs(float(restarted[-1]) - float(whole[-1])) > 1e-3


def test_adam_in_chunks_matches_the_one_call_run(adam_tts, clips):
  start, batch = _batch(adam_tts, clips)
  one = voice_lib.adapt(adam_tts, start, batch, [12])  # one compiled call
  seen = []
  chunked = voice_lib.adapt(adam_tts, start, batch, [12],
                            callback=lambda *a: seen.append(a[0]))
  assert seen == [5, 10, 12]
  # The moments are carried from chunk to chunk: restarting them would
  # make the first step of every chunk a full-size sign step again.
  np.testing.assert_allclose(chunked.losses[12], one.losses[12], rtol=1e-4)
  for a, b in zip(jax_leaves(chunked.params[12]), jax_leaves(one.params[12])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_api_progress_bar_shows_the_loss(sgd_tts, clips, capsys):
  voice = sgd_tts.adapt(clips, TEXTS[:3], steps=7, sample_rate=SR,
                        progress=True)
  err = capsys.readouterr().err
  assert "adapting" in err and "7/7" in err
  assert f"loss {voice.losses[-1]:.4f}" in err
  quiet = sgd_tts.adapt(clips, TEXTS[:3], steps=7, sample_rate=SR)
  assert capsys.readouterr().err == ""  # the API default is quiet
  np.testing.assert_array_equal(quiet.losses, voice.losses)


# ---------------------------------------------------------------------------
# Interrupts.


def _interrupt_at(step):
  def callback(done, total, loss):
    del total, loss
    if done >= step:
      raise KeyboardInterrupt
  return callback


def test_interrupt_carries_the_best_voice_so_far(sgd_tts, clips):
  ref = sgd_tts.adapt(clips, TEXTS[:3], steps=15, sample_rate=SR)
  with pytest.raises(KeyboardInterrupt) as info:
    sgd_tts.adapt(clips, TEXTS[:3], steps=200, sample_rate=SR,
                  progress=_interrupt_at(15))
  e = info.value
  assert isinstance(e, api.AdaptationInterrupted)
  boundaries = np.array([0, 5, 10, 15])
  best = int(boundaries[np.argmin(ref.losses[boundaries])])
  assert e.steps_done == 15 and e.steps_requested == 200
  assert e.best_step == best
  assert e.voice.info["steps"] == best and e.voice.info["interrupted"]
  # The voice and its curve are those an uninterrupted run of best steps
  # gives.
  same = sgd_tts.adapt(clips, TEXTS[:3], steps=best, sample_rate=SR)
  np.testing.assert_array_equal(e.losses, same.losses)
  np.testing.assert_array_equal(e.voice.losses, same.losses)
  for a, b in zip(jax_leaves(e.voice.params), jax_leaves(same.params)):
    np.testing.assert_array_equal(a, b)


def test_interrupt_before_any_chunk_gives_no_voice(sgd_tts, clips):
  start, batch = _batch(sgd_tts, clips)

  def fail_first(done, total, loss):
    raise KeyboardInterrupt

  # The boundary loss of step 0 is known once the first chunk ran: the
  # unadapted start is then the best so far (the loss only rose if so).
  with pytest.raises(voice_lib.AdaptationInterrupted) as info:
    voice_lib.adapt(sgd_tts, start, batch, [50], callback=fail_first)
  assert info.value.best_step in (0, 5)

  calls = []
  real = sgd_tts._adapt_jit  # pylint: disable=protected-access

  def interrupted_call(*a, **k):
    calls.append(1)
    raise KeyboardInterrupt  # Ctrl-C while the first chunk compiles

  sgd_tts._adapt_jit = interrupted_call  # pylint: disable=protected-access
  try:
    with pytest.raises(voice_lib.AdaptationInterrupted) as info:
      voice_lib.adapt(sgd_tts, start, batch, [50])
  finally:
    sgd_tts._adapt_jit = real  # pylint: disable=protected-access
  assert calls and info.value.best_step is None and info.value.params is None


def _read_until(proc, pattern, timeout, buf=""):
  """Reads ``proc.stderr`` until ``pattern`` matches (tqdm uses \\r), or
  fails after ``timeout`` seconds; returns the text read so far."""
  import select  # pylint: disable=g-import-not-at-top
  fd, end = proc.stderr.fileno(), time.time() + timeout
  while not re.search(pattern, buf):
    left = end - time.time()
    if left <= 0 or not select.select([fd], [], [], left)[0]:
      raise AssertionError(f"{pattern!r} not seen in {timeout} s: "
                           f"{buf[-2000:]!r}")
    chunk = os.read(fd, 4096)
    if not chunk:
      raise AssertionError(f"{pattern!r} not seen before the end: "
                           f"{buf[-2000:]!r}")
    buf += chunk.decode(errors="replace")
  return buf


@pytest.mark.slow
def test_cli_sigint_saves_the_best_voice_and_exits_130(sgd_workdir,
                                                       tmp_path):
  clips_dir = write_clips(str(tmp_path / "clips"), n=3)
  out = str(tmp_path / "voice")
  proc = subprocess.Popen(
      [sys.executable, "-m", "metatts", "adapt", "--model", sgd_workdir,
       "--clips", clips_dir, "--out", out, "--steps", "10000"], cwd=REPO,
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
      # A shell's background job ignores SIGINT; Ctrl-C in a terminal
      # does not.
      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  try:
    seen = _read_until(proc, r"adapting:.*\b[1-9]\d\d/10000", 180)
    sent = time.time()
    proc.send_signal(signal.SIGINT)
    _read_until(proc, r"Interrupted \(Ctrl-C\) after \d+ of 10000", 30, seen)
    stopped = time.time() - sent
    proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 130
  print(f"SIGINT -> stopped in {stopped:.2f} s")
  assert stopped < 2.0, f"{stopped:.2f} s from SIGINT to stopping"
  v = api.load_voice(out)
  steps = v.info["steps"]
  assert 100 <= steps < 10000 and steps % voice_lib.CHUNK == 0
  assert v.info["steps_requested"] == 10000 and v.info["interrupted"]
  assert len(v.losses) == steps + 1
  # The saved one is the lowest boundary loss of its own curve (boundary
  # values come from two compiled programs: equal to float32 rounding).
  boundaries = v.losses[::voice_lib.CHUNK]
  assert v.losses[-1] <= boundaries.min() * (1 + 1e-6)


# ---------------------------------------------------------------------------
# The steps bound.


def test_steps_bound_is_one_line_before_any_work(tmp_path, capsys):
  code = cli.main(["adapt", "--model", str(tmp_path / "nowhere"), "--clips",
                   str(tmp_path), "--out", str(tmp_path / "v"), "--steps",
                   str(api.MAX_STEPS + 1)])
  err = capsys.readouterr().err
  assert code == 2
  assert err.count("\n") == 1 and "--steps 10001" in err and "10000" in err
  with pytest.raises(SystemExit):
    cli.main(["adapt", "--model", "m", "--clips", "c", "--out", "v",
              "--steps", "-1"])
  with pytest.raises(ValueError, match=r"\[0, 10000\]"):
    api.check_steps(10001)


# ---------------------------------------------------------------------------
# Clip screening.


def _noise(seconds=1.0, sigma=0.1, seed=0):
  rng = np.random.default_rng(seed)
  return (sigma * rng.standard_normal(int(seconds * SR))).astype(np.float32)


def test_speech_fraction_separates_noise_from_speech():
  assert clips_lib.speech_fraction(_noise(), SR) == 0.0
  for i in range(5):
    assert clips_lib.speech_fraction(tone(110 + 25 * i, 0.8, seed=i),
                                     SR) > 0.9
  # Embedded-corpus speech (when it is built here), at its own rate.
  files = sorted(glob.glob(os.path.expanduser(
      "~/.cache/metatts/synth-default/*/*.wav")))[::200]
  if not files:
    pytest.skip("no embedded corpus in ~/.cache/metatts/synth-default")
  from metatts.data import features as dfeat  # pylint: disable=g-import-not-at-top
  fc = dfeat.FeatureConfig()
  fractions = [clips_lib.speech_fraction(dfeat.load_clip(f, fc),
                                         fc.sample_rate) for f in files]
  assert min(fractions) >= 0.5, dict(zip(files, fractions))


def test_white_noise_clip_is_refused_naming_it(sgd_tts, clips):
  wavs = list(clips[:2]) + [_noise(1.2)]
  with pytest.raises(ValueError, match=r"Clip 2 \(noise\.wav\) does not "
                     r"sound like speech: 0% of its frames"):
    sgd_tts.adapt(wavs, TEXTS[:3], steps=1, sample_rate=SR,
                  names=["a.wav", "b.wav", "noise.wav"])
  # The user can insist.
  voice = sgd_tts.adapt(wavs, TEXTS[:3], steps=1, sample_rate=SR,
                        check_speech=False)
  assert voice.info["steps"] == 1


def test_cli_refuses_noise_before_saying_it_adapts(sgd_workdir, tmp_path,
                                                   capsys):
  clips_dir = write_clips(str(tmp_path / "clips"), n=2)
  sf.write(os.path.join(clips_dir, "clip1.wav"), _noise(1.0), SR)
  out = str(tmp_path / "v")
  code = cli.main(["adapt", "--model", sgd_workdir, "--clips", clips_dir,
                   "--out", out, "--steps", "2"])
  captured = capsys.readouterr()
  assert code == 2 and "clip1.wav" in captured.err
  assert "does not sound like speech" in captured.err
  assert "Adapting" not in captured.out  # printed only after validation
  assert not os.path.exists(out)
  code = cli.main(["adapt", "--model", sgd_workdir, "--clips", clips_dir,
                   "--out", out, "--steps", "2", "--no-speech-check",
                   "--no-progress"])
  captured = capsys.readouterr()
  assert code == 0 and "Adapting" in captured.out
  assert "adapting:" not in captured.err  # --no-progress


def test_hidden_files_in_the_clip_folder_are_skipped(tmp_path):
  clips_dir = write_clips(str(tmp_path / "clips"), n=2)
  with open(os.path.join(clips_dir, "._clip0.wav"), "wb") as f:
    f.write(b"\x00\x05\x16\x07 macOS resource fork")  # no transcript either
  sf.write(os.path.join(clips_dir, ".hidden.wav"), tone(150, 1.0), SR)
  paths, texts = cli.find_clips(clips_dir)
  assert [os.path.basename(p) for p in paths] == ["clip0.wav", "clip1.wav"]
  assert texts == TEXTS[:2]


def test_clip_length_messages_speak_to_a_voice_cloner(sgd_tts, tmp_path):
  short = str(tmp_path / "short.wav")
  sf.write(short, tone(150, 0.2), SR)
  with pytest.raises(ValueError) as info:
    sgd_tts.adapt([short], ["Hi."], steps=1)
  msg = str(info.value)
  assert "short.wav" in msg and "too_short" in msg
  assert "min_seconds" not in msg and "corpus" not in msg
  assert "at least 0.3 s" in msg

  long = str(tmp_path / "long.wav")
  sf.write(long, tone(150, 3.0), SR)  # the tiny model's limit: 1.99 s
  with pytest.raises(ValueError) as info:
    sgd_tts.adapt([long], ["A sentence of some length for this clip."],
                  steps=1)
  msg = str(info.value)
  assert "long.wav" in msg and "too_long" in msg
  assert "max_seconds" not in msg
  assert "split it into clips of at most 1.99 s (the model's limit)" in msg

  bad = str(tmp_path / "bad.wav")
  with open(bad, "wb") as f:
    f.write(b"not audio")
  with pytest.raises(ValueError) as info:
    sgd_tts.adapt([bad], ["Hi there."], steps=1)
  msg = str(info.value)
  assert "bad.wav" in msg and "corpus" not in msg and "your clips" in msg
