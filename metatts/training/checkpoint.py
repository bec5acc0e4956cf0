"""Orbax checkpoints of a training state, with fallback past damaged ones.

A checkpoint holds one pytree (for the training loop: the meta-learner state,
the step counter and the data-stream key). Saving is atomic: Orbax writes into
a temporary directory and renames it when complete, and marks finished steps
with ``commit_success.txt``. Restoring goes into an *abstract* state (a tree of
``jax.ShapeDtypeStruct``, e.g. from ``jax.eval_shape``), so nothing is built
twice and dtypes/shapes are checked against what the code expects.

If the newest checkpoint is damaged (a missing commit marker, a deleted or
truncated file) a warning is logged and the next older one is restored; a job
therefore never loses more than ``save_interval_steps`` of work. Pickle is
never used.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

PyTree = Any

# Orbax marks a finished step directory with this file.
COMMIT_MARKER = "commit_success.txt"


class Checkpointer:
  """Saves and restores numbered checkpoints of one pytree in a directory.

  Example:
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=3)
    ckpt.save(step, state)                      # every call; keeps the last 3
    state, step = ckpt.restore_latest(jax.eval_shape(lambda: state))
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3,
               save_interval_steps: int = 1):
    """Opens (and creates) a checkpoint directory.

    Args:
      directory: where the numbered step directories live.
      max_to_keep: how many of the newest checkpoints to keep (>= 1). Keep at
        least 2 so that a damaged newest one can fall back to another.
      save_interval_steps: ``save`` writes only on steps divisible by this
        (``force=True`` always writes).

    Raises:
      ValueError: if ``max_to_keep`` or ``save_interval_steps`` is < 1.
    """
    if max_to_keep < 1:
      raise ValueError(f"Checkpointer: max_to_keep={max_to_keep} must be >= 1 "
                       "(2 or more lets a damaged checkpoint fall back).")
    if save_interval_steps < 1:
      raise ValueError(f"Checkpointer: save_interval_steps={save_interval_steps}"
                       " must be >= 1.")
    self.directory = os.path.abspath(directory)
    # Synchronous saves: the training step donates its input buffers, so the
    # state must be on disk before the next step may overwrite it.
    self.save_interval_steps = int(save_interval_steps)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    """Returns the steps with a finished checkpoint, oldest first."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def latest_step(self) -> Optional[int]:
    """Returns the newest checkpointed step, or None if there is none."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: PyTree, *, force: bool = False) -> bool:
    """Writes ``state`` as checkpoint ``step`` (if the interval says so).

    Args:
      step: the step number (usually the number of completed updates).
      state: the pytree of arrays to save.
      force: write even if ``step`` is off the save interval.

    Returns:
      True if a checkpoint was written.
    """
    if not force and int(step) % self.save_interval_steps:
      return False
    if int(step) in self._manager.all_steps():
      return False  # Already saved (e.g. the final step on the interval).
    # The interval is decided here (Orbax would also save the first step).
    saved = self._manager.save(int(step), args=ocp.args.StandardSave(state),
                               force=True)
    self._manager.wait_until_finished()
    return bool(saved)

  def _is_committed(self, step: int) -> bool:
    step_dir = os.path.join(self.directory, str(step))
    return os.path.exists(os.path.join(step_dir, COMMIT_MARKER))

  def restore(self, step: int, abstract_state: PyTree) -> PyTree:
    """Restores checkpoint ``step`` into the structure of ``abstract_state``.

    Args:
      step: a step listed by ``all_steps()``.
      abstract_state: pytree of ``jax.ShapeDtypeStruct`` (or arrays) with the
        structure, shapes and dtypes to restore into.

    Returns:
      The restored pytree.

    Raises:
      FileNotFoundError: if the step has no finished checkpoint.
      Exception: whatever Orbax raises for damaged or mismatched files.
    """
    if not self._is_committed(step):
      raise FileNotFoundError(
          f"checkpoint {os.path.join(self.directory, str(step))} has no "
          f"{COMMIT_MARKER}: it was not finished (the job died while saving). "
          "It is skipped; delete the directory to silence this.")
    return self._manager.restore(
        int(step), args=ocp.args.StandardRestore(abstract_state))

  def restore_latest(
      self, abstract_state: PyTree) -> Tuple[Optional[PyTree], Optional[int]]:
    """Restores the newest checkpoint that is intact.

    Damaged checkpoints are skipped with a logged warning, newest first.

    Args:
      abstract_state: pytree of ``jax.ShapeDtypeStruct`` to restore into.

    Returns:
      ``(state, step)``, or ``(None, None)`` if there is no usable checkpoint.
    """
    for step in reversed(self.all_steps()):
      try:
        state = self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        moved = self._set_aside(step)
        logging.warning(
            "Checkpoint %s is unreadable (%s: %s); moved it to %s and falling "
            "back to the previous one.",
            os.path.join(self.directory, str(step)), type(e).__name__,
            str(e).splitlines()[0] if str(e) else "", moved)
        continue
      return state, step
    return None, None

  def _set_aside(self, step: int) -> str:
    """Moves a damaged step out of the way (kept for inspection).

    Otherwise the resumed run could not write a fresh checkpoint with the same
    step number, and every later restore would trip over it again.
    """
    source = os.path.join(self.directory, str(step))
    target_root = self.directory.rstrip(os.sep) + "_damaged"
    os.makedirs(target_root, exist_ok=True)
    target = os.path.join(target_root, str(step))
    suffix = 0
    while os.path.exists(target):
      suffix += 1
      target = os.path.join(target_root, f"{step}.{suffix}")
    os.replace(source, target)
    self._manager.reload()
    return target

  def close(self) -> None:
    """Waits for pending writes and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_like(tree: PyTree) -> PyTree:
  """Returns the ``jax.ShapeDtypeStruct`` tree of ``tree`` (no copies)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)
