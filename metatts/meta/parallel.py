"""Spreading a meta-batch over devices.

The task axis of a meta-batch is sharded over a one-dimensional device mesh;
parameters and optimizer state are replicated. The task mean inside each
learner's ``step`` then becomes a cross-device mean all-reduce that XLA
inserts, so the update is the same as on one device up to float reassociation.
Across hosts (after ``jax.distributed.initialize``) each process passes its
own slice of the meta-batch and the mesh spans every device of every process.
"""

from __future__ import annotations

from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from metatts.meta import base
from metatts.types import LossFn

TASK_AXIS = "tasks"


def task_mesh(devices=None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (TASK_AXIS,))


# XLA CPU compiler options that keep only matrix products in YNNPACK fusions
# (``make_step(..., compiler_options=CPU_DOT_FUSIONS_ONLY)``). On the 2-core
# CPU of docs/benchmarks.md the default YNNPACK fusions of reductions and
# elementwise ops ran the sum over the task axis of per-task parameters or
# gradients (2.2 M floats) at 25-35 ms per 1024x1024 matrix. With this option
# and vmapped tasks the large MLP's Reptile and FOMAML x5 steps ran 1.4-1.6x
# faster, but the TTS study's Reptile step 0.8x, so it is opt-in
# (docs/benchmarks.md, "Session 8: XLA CPU's YNNPACK reductions").
CPU_DOT_FUSIONS_ONLY = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_DOT"}


def make_step(learner: base.MetaLearner, loss_fn: LossFn, *,
              mesh: Optional[Mesh] = None, donate: bool = True,
              compiler_options: Optional[dict] = None):
  """Returns a jitted ``step(state, tasks) -> (state, metrics)``.

  Args:
    learner: a meta-learner.
    loss_fn: the model's loss function (closed over, static).
    mesh: device mesh with one axis ``"tasks"``; default: all devices. With a
      single device no sharding annotations are added.
    donate: donate the input state buffers (the caller must not reuse them).
    compiler_options: XLA compiler options of the step's program (``jax.jit``'s
      ``compiler_options``), e.g. :data:`CPU_DOT_FUSIONS_ONLY`; None keeps
      XLA's defaults.

  Returns:
    The jitted step, with ``jax.jit``'s ``lower(state, tasks)`` (ahead-of-time
    compilation and ``memory_analysis``) on any number of devices. On several
    devices the number of tasks N in a global meta-batch must be divisible by
    the number of devices; in a multi-process run each process passes its
    local N / process_count tasks.
  """
  mesh = task_mesh() if mesh is None else mesh
  donate_argnums = (0,) if donate else ()

  def step(state, tasks):
    return learner.step(state, tasks, loss_fn)

  options = dict(compiler_options) if compiler_options else None
  if mesh.size == 1:
    return jax.jit(step, donate_argnums=donate_argnums,
                   compiler_options=options)

  replicated = NamedSharding(mesh, P())
  by_task = NamedSharding(mesh, P(TASK_AXIS))
  jitted = jax.jit(step, in_shardings=(replicated, by_task),
                   out_shardings=(replicated, replicated),
                   donate_argnums=donate_argnums, compiler_options=options)
  multi_process = jax.process_count() > 1

  def sharded_step(state, tasks):
    n = base.check_tasks(tasks)
    if multi_process:
      tasks = jax.tree.map(
          lambda x: jax.make_array_from_process_local_data(by_task, np.asarray(x)),
          tasks)
      state = jax.tree.map(
          lambda x: x if isinstance(x, jax.Array) and not x.is_fully_addressable
          else jax.make_array_from_process_local_data(replicated, np.asarray(x)),
          state)
    elif n % mesh.size:
      raise ValueError(
          f"A meta-batch of {n} tasks cannot be split evenly over {mesh.size} "
          f"devices; use a number of tasks divisible by {mesh.size} "
          "(config.meta_batch_size), or pass mesh=task_mesh(devices[:k]).")
    return jitted(state, tasks)

  def lower(state, tasks):
    n = base.check_tasks(tasks)
    if not multi_process and n % mesh.size:
      return sharded_step(state, tasks)  # raises the divisibility error
    return jitted.lower(state, tasks)

  sharded_step.jitted = jitted
  sharded_step.lower = lower
  return sharded_step
