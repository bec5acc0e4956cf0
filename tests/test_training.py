"""Tests of metatts.training: Orbax checkpoints, resume, logging, NaN guard."""

import json
import logging as py_logging
import os
import struct

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from metatts import meta
from metatts.data import sinusoid as sinusoid_data
from metatts.experiments import sinusoid as sinusoid_exp
from metatts.training import checkpoint as checkpoint_lib
from metatts.training import loop
from metatts.training import logging as logging_lib

SIZES = (1, 8, 1)


def _config(**overrides):
  c = ml_collections.ConfigDict(dict(
      num_steps=12, seed=3, log_every=2, checkpoint_every=4, max_to_keep=3,
      max_skipped=5, eval_every=6))
  c.update(overrides)
  return c


def _learner():
  return meta.maml(inner_lr=0.01, outer_optimizer=optax.adam(1e-2),
                   num_inner_steps=1)


def _params():
  return sinusoid_exp.mlp_init(jax.random.PRNGKey(0), SIZES)


def _factory(nan_steps=(), crash_at=None):
  """Sinusoid meta-batches of 4 tasks; NaN targets / a crash at given steps."""

  def factory(data_key, start_step):
    base = sinusoid_data.task_iterator(data_key, start_step, 4, 5, 5)
    step = start_step
    for tasks in base:
      if step == crash_at:
        raise KeyboardInterrupt(f"simulated kill before step {step}")
      if step in nan_steps:
        tasks = tasks._replace(query=(tasks.query[0],
                                      jnp.full_like(tasks.query[1], jnp.nan)))
      yield tasks
      step += 1
  return factory


class TraceCountingLoss:
  """mse_loss that counts how often JAX traces it (once per compile)."""

  def __init__(self):
    self.traces = 0

  def __call__(self, params, batch):
    self.traces += 1
    return sinusoid_exp.mse_loss(params, batch)


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


# ----------------------------------------------------------------------------
# Checkpointer.


def _state(value):
  learner = meta.maml(outer_optimizer=optax.adam(1e-3))
  params = jax.tree.map(lambda x: x + value, _params())
  return loop.TrainState(learner.init(params), jnp.asarray(value, jnp.int32),
                         jax.random.PRNGKey(value))


def test_checkpoint_round_trip_restores_exact_values_and_structure(tmp_path):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "c"), max_to_keep=2)
  for v in (1, 2, 3):
    assert ckpt.save(v, _state(v))
  assert ckpt.all_steps() == [2, 3]  # max_to_keep
  abstract = jax.eval_shape(lambda: _state(0))
  restored, step = ckpt.restore_latest(abstract)
  assert step == 3
  expected = _state(3)
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  assert isinstance(restored.meta_state, meta.MetaState)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  ckpt.close()


def test_checkpoint_save_interval(tmp_path):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "c"), max_to_keep=5,
                                     save_interval_steps=3)
  written = [s for s in range(1, 8) if ckpt.save(s, _state(0))]
  assert written == [3, 6]
  assert ckpt.save(7, _state(0), force=True)
  assert ckpt.all_steps() == [3, 6, 7]


@pytest.mark.parametrize("damage", ["truncate", "delete_marker", "delete_data"])
def test_damaged_latest_checkpoint_falls_back_to_previous(tmp_path, damage,
                                                          caplog):
  directory = tmp_path / "c"
  ckpt = checkpoint_lib.Checkpointer(str(directory), max_to_keep=3)
  ckpt.save(1, _state(1))
  ckpt.save(2, _state(2))
  latest = directory / "2"
  files = sorted((p for p in latest.rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
  if damage == "delete_marker":
    (latest / checkpoint_lib.COMMIT_MARKER).unlink()
  else:
    data = [p for p in files if "default" in p.parts]
    biggest = data[-1]
    if damage == "truncate":
      with open(biggest, "r+b") as f:
        f.truncate(biggest.stat().st_size // 2)
    else:
      for p in data:
        p.unlink()
  fresh = checkpoint_lib.Checkpointer(str(directory), max_to_keep=3)
  with caplog.at_level(py_logging.WARNING):
    restored, step = fresh.restore_latest(jax.eval_shape(lambda: _state(0)))
  assert step == 1
  np.testing.assert_array_equal(_flat(restored), _flat(_state(1)))
  assert any("falling back" in r.getMessage() for r in caplog.records)
  # The damaged step is set aside, so a resumed run can write step 2 again.
  assert fresh.all_steps() == [1]
  assert (tmp_path / "c_damaged" / "2").exists()
  assert fresh.save(2, _state(2))


def test_restore_latest_without_checkpoints(tmp_path):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path / "empty"))
  assert ckpt.restore_latest(jax.eval_shape(lambda: _state(0))) == (None, None)


def test_checkpointer_rejects_bad_options(tmp_path):
  with pytest.raises(ValueError, match="max_to_keep"):
    checkpoint_lib.Checkpointer(str(tmp_path), max_to_keep=0)


# ----------------------------------------------------------------------------
# The loop: resume equals an uninterrupted run.


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("full"))
  loss = TraceCountingLoss()
  evals = []
  result = loop.train(_learner(), loss, _params(), _factory(), _config(),
                      workdir, eval_fn=lambda s, step: evals.append(step) or {
                          "param_sum": sum(jnp.sum(x) for x in
                                           jax.tree.leaves(s.params))},
                      progress=False)
  return workdir, result, loss.traces, evals


def test_resumed_run_matches_uninterrupted_run(uninterrupted, tmp_path):
  _, full, full_traces, _ = uninterrupted
  workdir = str(tmp_path / "resumed")
  init = _params()
  init_copy = jax.tree.map(np.array, init)
  # Killed before step 10: the newest checkpoint is step 8, steps 8-9 are lost.
  with pytest.raises(KeyboardInterrupt):
    loop.train(_learner(), sinusoid_exp.mse_loss, init, _factory(crash_at=10),
               _config(), workdir, progress=False)
  assert checkpoint_lib.Checkpointer(
      os.path.join(workdir, loop.CHECKPOINT_DIR)).all_steps() == [4, 8]
  # The caller's init_params survive buffer donation.
  np.testing.assert_array_equal(_flat(init), _flat(init_copy))

  loss = TraceCountingLoss()
  resumed = loop.train(_learner(), loss, _params(), _factory(), _config(),
                       workdir, progress=False)
  assert resumed.resumed_from == 8
  assert resumed.step == full.step == 12
  np.testing.assert_array_equal(_flat(resumed.meta_state.params),
                                _flat(full.meta_state.params))
  np.testing.assert_array_equal(_flat(resumed.meta_state.opt_state),
                                _flat(full.meta_state.opt_state))
  assert int(resumed.meta_state.step) == 12
  assert resumed.metrics["train/loss"] == full.metrics["train/loss"]
  # Compiled once per process however many steps run: 12 steps and 4 steps
  # trace the loss equally often (a per-step retrace would differ).
  assert loss.traces == full_traces > 0
  # metrics.json: one entry per logged step, none duplicated by the resume.
  with open(os.path.join(workdir, "metrics.json")) as f:
    record = json.load(f)
  train_steps = [h["step"] for h in record["history"] if "train/loss" in h]
  assert train_steps == [2, 4, 6, 8, 10, 12]


def test_resumed_run_reads_its_step_from_the_compilation_cache(tmp_path,
                                                                caplog):
  """A resumed run lowers the same step program as a fresh one, so the
  persistent compilation cache (which keys on that program) serves it: the
  restored state was committed to a device and the fresh one was not, and
  every resume compiled its step again (~25 s for the duration Tacotron)."""
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  cache = str(tmp_path / "xla")
  old = (jax.config.jax_compilation_cache_dir,
         jax.config.jax_persistent_cache_min_compile_time_secs)
  cc.reset_cache()  # this test's own cache, whatever the session uses
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  caplog.set_level(py_logging.DEBUG, logger="jax._src.compiler")
  try:
    workdir = str(tmp_path / "run")
    # A learner no other test compiles (a fresh program for this cache).
    learner = meta.fomaml(0.02, optax.adam(3e-3), 2)
    loop.train(learner, sinusoid_exp.mse_loss, _params(), _factory(),
               _config(num_steps=4), workdir, progress=False)
    caplog.clear()
    resumed = loop.train(learner, sinusoid_exp.mse_loss, _params(),
                         _factory(), _config(num_steps=8), workdir,
                         progress=False)
  finally:
    cc.reset_cache()
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])
  assert os.listdir(cache)  # the step was written there and read back
  assert resumed.resumed_from == 4
  said = [r.getMessage() for r in caplog.records if "'jit_step'" in
          r.getMessage()]
  assert any("cache hit" in m for m in said), said
  assert not any("CACHE MISS" in m for m in said), said


def test_finished_run_rerun_does_not_train_again(uninterrupted):
  workdir, full, _, _ = uninterrupted
  loss = TraceCountingLoss()
  again = loop.train(_learner(), loss, _params(), _factory(), _config(),
                     workdir, progress=False)
  assert again.resumed_from == 12 and loss.traces == 0
  np.testing.assert_array_equal(_flat(again.meta_state.params),
                                _flat(full.meta_state.params))


def test_resume_with_other_seed_is_an_error(uninterrupted):
  workdir = uninterrupted[0]
  with pytest.raises(ValueError, match="different seed"):
    loop.train(_learner(), sinusoid_exp.mse_loss, _params(), _factory(),
               _config(seed=4), workdir, progress=False)


def test_missing_config_key_is_an_error(tmp_path):
  config = _config()
  del config["max_skipped"]
  with pytest.raises(ValueError, match="max_skipped"):
    loop.train(_learner(), sinusoid_exp.mse_loss, _params(), _factory(),
               config, str(tmp_path), progress=False)


# ----------------------------------------------------------------------------
# Logging.


def _masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC-32C (Castagnoli), computed bit by bit."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_scalars(path):
  """Parses a TensorBoard event file's TFRecord framing and Event protos."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  scalars = {}
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    assert header_crc == _masked_crc32c(header)
    payload = data[pos + 12:pos + 12 + length]
    (payload_crc,) = struct.unpack("<I", data[pos + 12 + length:
                                              pos + 16 + length])
    assert payload_crc == _masked_crc32c(payload)
    pos += 16 + length
    event = event_pb2.Event()
    event.ParseFromString(payload)
    for value in event.summary.value:
      scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_event_files_and_metrics_json(uninterrupted):
  workdir, full, _, evals = uninterrupted
  # The first run's file (a later rerun in this workdir adds its own file).
  events = sorted(f for f in os.listdir(workdir) if f.startswith("events.out"))
  assert events
  scalars = read_scalars(os.path.join(workdir, events[0]))
  assert [s for s, _ in scalars["train/loss"]] == [2, 4, 6, 8, 10, 12]
  assert scalars["train/loss"][-1][1] == pytest.approx(
      full.metrics["train/loss"], rel=1e-6)
  assert [s for s, _ in scalars["eval/param_sum"]] == [6, 12]
  assert evals == [6, 12]
  with open(os.path.join(workdir, logging_lib.METRICS_FILE)) as f:
    record = json.load(f)
  last = [h for h in record["history"] if "train/loss" in h][-1]
  assert last["step"] == 12
  assert last["train/loss"] == pytest.approx(full.metrics["train/loss"])
  assert record["summary"]["num_steps"] == 12
  assert record["summary"]["num_skipped"] == 0


def test_evaluation_scalars_go_beside_the_training_curves(tmp_path):
  cell = lambda secs, eer, split_secs: {  # noqa: E731
      "secs": secs, "eer": eer, "wer": None,
      "splits": {"heldout_seen": {"secs": split_secs, "eer": float("nan")}}}
  metrics = {
      "meta-fomaml": {"shots": {"5": {"steps": {
          "0": cell(0.5, 0.3, 0.55), "5": cell(0.7, 0.1, 0.75)}}}},
      "transfer": {"shots": {"5": {"steps": {"0": cell(0.4, 0.4, 0.45)}}}},
      "reference": {"real": {"secs": 0.9, "eer": 0.02},
                    "settings": {"metrics": ["secs"]}}}
  for _ in range(2):  # a re-evaluation replaces the points
    folders = logging_lib.log_evaluation(str(tmp_path), metrics)
  assert folders == sorted(str(tmp_path / d / "eval") for d in (
      "ceiling_real", "meta-fomaml", "transfer"))

  def read(folder):
    files = [f for f in os.listdir(folder) if f.startswith("events.out")]
    assert len(files) == 1, files
    return read_scalars(os.path.join(folder, files[0]))
  meta = read(tmp_path / "meta-fomaml" / "eval")
  assert meta["adapt/secs/all/shots_5"] == [(0, 0.5), (5, pytest.approx(0.7))]
  assert meta["adapt/eer/all/shots_5"] == [(0, pytest.approx(0.3)),
                                           (5, pytest.approx(0.1))]
  assert meta["adapt/secs/heldout_seen/shots_5"][1] == (5, pytest.approx(0.75))
  assert not any("wer" in t or "eer/heldout" in t for t in meta)  # None, NaN
  assert read(tmp_path / "transfer" / "eval")["adapt/secs/all/shots_5"] == [
      (0, pytest.approx(0.4))]
  # The ceiling is a flat line over every evaluated step count.
  assert read(tmp_path / "ceiling_real" / "eval")[
      "adapt/secs/all/shots_5"] == [(0, pytest.approx(0.9)),
                                    (5, pytest.approx(0.9))]


def test_metric_logger_writes_nan_as_string(tmp_path):
  logger = logging_lib.MetricLogger(str(tmp_path), total_steps=1,
                                    progress=False)
  logger.log(1, {"a": np.float32(np.nan), "b": 2})
  logger.close()
  with open(tmp_path / "metrics.json") as f:
    record = json.load(f)
  assert record["history"] == [{"step": 1, "a": "nan", "b": 2.0}]


# ----------------------------------------------------------------------------
# NaN guard.


def test_nan_steps_are_skipped_and_counted(tmp_path):
  result = loop.train(_learner(), sinusoid_exp.mse_loss, _params(),
                      _factory(nan_steps=(2, 5)), _config(log_every=1),
                      str(tmp_path), progress=False)
  assert int(result.meta_state.num_skipped) == 2
  assert np.all(np.isfinite(_flat(result.meta_state.params)))
  with open(tmp_path / "metrics.json") as f:
    history = json.load(f)["history"]
  skipped = {h["step"]: h["train/skipped"] for h in history
             if "train/skipped" in h}
  assert [s for s, v in skipped.items() if v == 1.0] == [3, 6]
  assert [h["train/num_skipped"] for h in history
          if "train/num_skipped" in h][-1] == 2.0


def test_too_many_skipped_steps_stop_with_intact_checkpoints(tmp_path):
  workdir = str(tmp_path)
  with pytest.raises(loop.TooManySkippedSteps,
                     match=r"Stopped at step 7: 2 meta-updates .*max_skipped=1"):
    loop.train(_learner(), sinusoid_exp.mse_loss, _params(),
               _factory(nan_steps=(5, 6)),
               _config(log_every=1, max_skipped=1), workdir, progress=False)
  ckpt = checkpoint_lib.Checkpointer(os.path.join(workdir,
                                                  loop.CHECKPOINT_DIR))
  assert ckpt.all_steps() == [4]
  restored, _ = ckpt.restore_latest(
      jax.eval_shape(lambda: loop.TrainState(_learner().init(_params()),
                                             jnp.zeros((), jnp.int32),
                                             jax.random.PRNGKey(0))))
  assert int(restored.step) == 4
  assert np.all(np.isfinite(_flat(restored.meta_state.params)))
