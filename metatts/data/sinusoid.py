"""Few-shot sinusoid regression tasks (Finn et al., 2017, Sec. 5.1).

Each task is a sine wave ``y = A sin(x - phase)`` with amplitude
``A ~ U[0.1, 5]`` and phase ``~ U[0, pi]``; inputs are drawn from
``U[-5, 5]``. A task offers ``K`` support points to adapt on and ``Q`` query
points to judge the adaptation. Everything is a pure function of a PRNG key,
so the tasks of meta-step ``s`` are ``sample_tasks(fold_in(key, s), ...)``
whether or not the run was interrupted before ``s``.

References:
  Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of
  Deep Networks." ICML 2017, https://arxiv.org/abs/1703.03400.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from metatts.types import Task

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, float(np.pi))
INPUT_RANGE = (-5.0, 5.0)


class SinusoidParams(NamedTuple):
  """The hidden parameters of a meta-batch of sinusoid tasks."""

  amplitude: jax.Array  # float32 [N]
  phase: jax.Array  # float32 [N]


def sinusoid(x: jax.Array, params: SinusoidParams) -> jax.Array:
  """Evaluates each task's sine wave on its own inputs.

  Args:
    x: float32 [N, P, 1] inputs, one row of ``P`` points per task.
    params: amplitudes and phases, each float32 [N].

  Returns:
    float32 [N, P, 1] targets ``A_n sin(x - phase_n)``.
  """
  amp = params.amplitude[:, None, None]  # [N, 1, 1]
  phase = params.phase[:, None, None]  # [N, 1, 1]
  return amp * jnp.sin(x - phase)


def sample_tasks(
    key: jax.Array,
    num_tasks: int,
    num_support: int = 10,
    num_query: int = 10,
) -> Tuple[Task, SinusoidParams]:
  """Samples a meta-batch of sinusoid regression tasks.

  Args:
    key: a PRNG key; the same key gives the same tasks.
    num_tasks: ``N``, the number of tasks.
    num_support: ``K``, support points per task (Finn et al. use K = 10).
    num_query: ``Q``, query points per task, drawn independently of the
      support points.

  Returns:
    ``(tasks, params)``: ``tasks.support`` and ``tasks.query`` are ``(x, y)``
    tuples of float32 arrays [N, K, 1] and [N, Q, 1]; ``params`` holds the
    hidden amplitude and phase of each task (for plots and references).

  Raises:
    ValueError: if a count is not a positive integer.
  """
  for name, value in (("num_tasks", num_tasks), ("num_support", num_support),
                      ("num_query", num_query)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(
          f"sample_tasks: {name}={value!r} must be a positive integer; "
          "pass e.g. num_tasks=25, num_support=10, num_query=10.")
  k_amp, k_phase, k_x = jax.random.split(key, 3)
  params = SinusoidParams(
      amplitude=jax.random.uniform(k_amp, (num_tasks,), jnp.float32,
                                   *AMPLITUDE_RANGE),
      phase=jax.random.uniform(k_phase, (num_tasks,), jnp.float32,
                               *PHASE_RANGE))
  x = jax.random.uniform(k_x, (num_tasks, num_support + num_query, 1),
                         jnp.float32, *INPUT_RANGE)  # [N, K + Q, 1]
  y = sinusoid(x, params)  # [N, K + Q, 1]
  support = (x[:, :num_support], y[:, :num_support])
  query = (x[:, num_support:], y[:, num_support:])
  return Task(support=support, query=query), params


_sample_jit = jax.jit(sample_tasks, static_argnums=(1, 2, 3))


def task_iterator(
    key: jax.Array,
    start_step: int,
    num_tasks: int,
    num_support: int = 10,
    num_query: int = 10,
) -> Iterator[Task]:
  """Yields the meta-batch of every step from ``start_step`` on.

  The tasks of step ``s`` depend only on ``(key, s)``, so an iterator
  restarted at ``s`` after a crash yields exactly what an uninterrupted one
  would have.

  Args:
    key: base PRNG key of the data stream.
    start_step: index of the first meta-step to produce tasks for.
    num_tasks: tasks per meta-batch.
    num_support: support points per task.
    num_query: query points per task.

  Yields:
    ``Task`` with ``(x, y)`` leaves [N, K, 1] / [N, Q, 1].
  """
  step = int(start_step)
  while True:
    tasks, _ = _sample_jit(jax.random.fold_in(key, step), num_tasks, num_support,
                      num_query)
    yield tasks
    step += 1
