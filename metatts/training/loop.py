"""The impure training loop around a pure meta-learner.

``train`` runs any ``metatts.meta`` learner (MAML, Reptile, iMAML, the
pre-training baseline, ...) for ``config.num_steps`` meta-steps: it jits the
step once (``meta.make_step``), feeds it meta-batches, logs scalars
(TensorBoard, ``metrics.json``, progress bar), calls an evaluation callback,
and writes Orbax checkpoints. A run started again in the same ``workdir``
resumes from the newest intact checkpoint; because the tasks of step ``s``
depend only on ``(data key, s)`` the resumed run ends with the same numbers
as an uninterrupted one.

Updates whose loss or meta-gradient is NaN/Inf are skipped by the learner and
counted in ``state.num_skipped``; the loop logs that count and stops with
``TooManySkippedSteps`` once it exceeds ``config.max_skipped``, without
writing a checkpoint of the failing stretch (the earlier ones stay intact).
The count is read from the device at every log step and before every
checkpoint (not every step, so the host never waits on the device in
between); with ``log_every=1`` the stop is exact.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, Iterator, NamedTuple, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from metatts import meta
from metatts.training import checkpoint as checkpoint_lib
from metatts.training import logging as logging_lib
from metatts.types import LossFn, Task

PyTree = Any
# (data_key, start_step) -> iterator over the meta-batch of every step from
# start_step on; must depend only on its arguments for exact resumption.
TaskIteratorFactory = Callable[[jax.Array, int], Iterator[Task]]
# (meta_state, step) -> scalars logged under "eval/".
EvalFn = Callable[[PyTree, int], Dict[str, Any]]

CHECKPOINT_DIR = "checkpoints"
REQUIRED_KEYS = ("num_steps", "seed", "log_every", "checkpoint_every",
                 "max_to_keep", "max_skipped")


class TrainState(NamedTuple):
  """Everything a run needs to continue exactly where it stopped."""

  meta_state: PyTree  # the learner's MetaState (params, optimizer, counters)
  step: jax.Array  # int32 []   number of completed meta-steps
  data_key: jax.Array  # uint32 [2]  base key of the task stream


class TrainResult(NamedTuple):
  """What ``train`` returns."""

  meta_state: PyTree  # the final MetaState
  step: int  # completed meta-steps
  metrics: Dict[str, float]  # the last logged scalars
  resumed_from: Optional[int]  # the checkpoint step resumed from, if any


class TooManySkippedSteps(RuntimeError):
  """Raised when more updates than ``config.max_skipped`` were NaN/Inf."""


def _config_value(config: Any, name: str) -> Any:
  try:
    return config[name]
  except (KeyError, AttributeError) as e:
    raise ValueError(
        f"training config has no key '{name}'; add it to the config's "
        f"get_config() (the loop needs {', '.join(REQUIRED_KEYS)}).") from e


def _data_key(seed: int) -> jax.Array:
  # Raw uint32[2] key data: an ordinary array that Orbax stores as is.
  return jax.random.PRNGKey(seed)


def train(
    learner: Any,
    loss_fn: LossFn,
    init_params: PyTree,
    task_iterator_factory: TaskIteratorFactory,
    config: Any,
    workdir: str,
    *,
    eval_fn: Optional[EvalFn] = None,
    progress: bool = True,
) -> TrainResult:
  """Meta-trains ``learner`` and checkpoints/logs into ``workdir``.

  Args:
    learner: a ``metatts.meta`` meta-learner (``init``/``step``/``adapt``).
    loss_fn: ``loss_fn(params, batch) -> (loss, aux)``.
    init_params: the initial parameter pytree (used when no checkpoint
      exists; it is not modified).
    task_iterator_factory: ``(data_key, start_step) -> iterator`` yielding
      one ``Task`` meta-batch per step, fixed shapes, depending only on its
      arguments.
    config: mapping (e.g. ``ml_collections.ConfigDict``) with ``num_steps``,
      ``seed``, ``log_every``, ``checkpoint_every``, ``max_to_keep``,
      ``max_skipped`` and optionally ``eval_every`` (0 or absent: evaluate only
      at the end).
    workdir: directory for checkpoints, event files and ``metrics.json``.
    eval_fn: optional ``(meta_state, step) -> scalars`` called every
      ``eval_every`` steps and at the end; logged under ``eval/``.
    progress: show a progress bar.

  Returns:
    A ``TrainResult`` with the final meta-state.

  Raises:
    ValueError: on a missing config key or a workdir from another seed.
    TooManySkippedSteps: if more than ``config.max_skipped`` updates were
      skipped for NaN/Inf.
  """
  num_steps = int(_config_value(config, "num_steps"))
  seed = int(_config_value(config, "seed"))
  log_every = max(1, int(_config_value(config, "log_every")))
  checkpoint_every = max(1, int(_config_value(config, "checkpoint_every")))
  max_to_keep = int(_config_value(config, "max_to_keep"))
  max_skipped = int(_config_value(config, "max_skipped"))
  eval_every = int(config.get("eval_every", 0) or 0) if hasattr(
      config, "get") else 0

  os.makedirs(workdir, exist_ok=True)
  ckpt = checkpoint_lib.Checkpointer(
      os.path.join(workdir, CHECKPOINT_DIR), max_to_keep=max_to_keep,
      save_interval_steps=checkpoint_every)
  data_key = _data_key(seed)

  def fresh_state() -> TrainState:
    return TrainState(learner.init(init_params), jnp.zeros((), jnp.int32),
                      data_key)

  abstract = jax.eval_shape(fresh_state)
  restored, resumed_from = ckpt.restore_latest(abstract)
  # Restored arrays are committed to a device and fresh ones are not; jit
  # lowers the two differently (sharding annotations), so without placing the
  # fresh state the same way a resumed run missed the persistent compilation
  # cache and compiled its step again (~25 s for the duration Tacotron).
  device = jax.local_devices()[0]
  if restored is None:
    # A copy, so that donating the state to the step never deletes the
    # caller's init_params buffers.
    state = jax.device_put(jax.tree.map(jnp.copy, fresh_state()), device)
    start_step = 0
  else:
    state = jax.device_put(restored, device)
    start_step = int(state.step)
    if not np.array_equal(np.asarray(state.data_key), np.asarray(data_key)):
      raise ValueError(
          f"{ckpt.directory} holds a run with a different seed than "
          f"config.seed={seed}; use a fresh --workdir or the original seed.")
    logging.info("Resuming from %s at step %d.", ckpt.directory, start_step)

  logger = logging_lib.MetricLogger(workdir, total_steps=num_steps,
                                    initial_step=start_step, progress=progress)
  if resumed_from is not None:
    logger.write(f"Resumed from checkpoint step {resumed_from} in "
                 f"{ckpt.directory}")
  step_fn = meta.make_step(learner, loss_fn)
  meta_state = state.meta_state
  last: Dict[str, float] = {}

  def check_skipped(step: int) -> int:
    skipped = int(meta_state.num_skipped)
    if skipped > max_skipped:
      latest = ckpt.latest_step()
      raise TooManySkippedSteps(
          f"Stopped at step {step}: {skipped} meta-updates had a NaN/Inf loss "
          f"or gradient and were skipped (config.max_skipped={max_skipped}). "
          f"The parameters were never overwritten by a bad update; the newest "
          f"checkpoint is step {latest} in {ckpt.directory}. Lower the "
          "learning rates, check the data, or raise config.max_skipped.")
    return skipped

  try:
    tasks_iter = task_iterator_factory(data_key, start_step)
    tick, tick_step = time.perf_counter(), start_step
    for step in range(start_step, num_steps):
      tasks = next(tasks_iter)
      meta_state, metrics = step_fn(meta_state, tasks)
      done = step + 1
      logger.advance()
      is_last = done == num_steps
      if done % log_every == 0 or is_last:
        scalars = {f"train/{k}": v for k, v in metrics.items()}
        scalars["train/num_skipped"] = meta_state.num_skipped
        now = time.perf_counter()
        scalars["train/steps_per_sec"] = (done - tick_step) / max(
            now - tick, 1e-9)
        tick, tick_step = now, done
        last = logger.log(done, scalars)
        check_skipped(done)
      if eval_fn is not None and ((eval_every and done % eval_every == 0)
                                  or is_last):
        evals = eval_fn(meta_state, done)
        last.update(logger.log(done, {f"eval/{k}": v
                                      for k, v in evals.items()}))
      if done % checkpoint_every == 0 or is_last:
        check_skipped(done)
        ckpt.save(done, TrainState(meta_state, jnp.asarray(done, jnp.int32),
                                   data_key), force=is_last)
    if start_step >= num_steps and eval_fn is not None:
      # Already finished earlier: report the evaluation of the final state.
      last.update(logger.log(num_steps, {
          f"eval/{k}": v for k, v in eval_fn(meta_state, num_steps).items()}))
    logger.summary({"num_steps": num_steps,
                    "num_skipped": int(meta_state.num_skipped)})
  finally:
    logger.close()
    ckpt.close()
  return TrainResult(meta_state=meta_state, step=max(num_steps, start_step),
                     metrics=last, resumed_from=resumed_from)
