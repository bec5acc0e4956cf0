"""Joint multi-task training: the transfer-learning baseline.

Not a meta-learner: it minimizes the average loss over the support and query
sets of all tasks at the current parameters (ordinary multi-speaker
pre-training), then is fine-tuned at test time with the same :func:`adapt`
as the meta-learners. Sharing the ``MetaLearner`` interface lets the same
loop, checkpointing and evaluation serve the baseline and the methods it is
compared against.
"""

from __future__ import annotations

from typing import Optional

import jax
import optax

from metatts.meta import base
from metatts.meta.inner import protocol_adapt


def pretrain(
    optimizer: Optional[optax.GradientTransformation] = None,
    *,
    inner_lr: float = 0.01,
    inner_optimizer: Optional[optax.GradientTransformation] = None,
    num_inner_steps: int = 1,
    filter: base.Filter = None,
    compute_dtype=None,
    task_map: base.TaskMap = None,
) -> base.MetaLearner:
  """Ordinary training on all tasks' data; fine-tuning at test time.

  Args:
    optimizer: training optimizer (default ``optax.adam(1e-3)``).
    inner_lr, inner_optimizer, num_inner_steps, filter: the fine-tuning
      protocol used by ``adapt`` (same meaning as for the meta-learners).
    compute_dtype: optional mixed-precision compute dtype.
    task_map: how the tasks of a meta-batch are laid out: ``None``/``"vmap"``
      (one batch), ``"map"`` (one after the other) or an int chunk size
      (``metatts.meta.base.task_mean``).

  Returns:
    A :class:`metatts.meta.MetaLearner`.
  """
  opt = optimizer if optimizer is not None else optax.adam(1e-3)
  inner = inner_optimizer if inner_optimizer is not None else optax.sgd(inner_lr)
  base.check_task_map(task_map)

  def init(params):
    return base.init_state(opt, params)

  def step(state, tasks, loss_fn):
    base.check_tasks(tasks)
    loss = base.checked_loss(loss_fn, compute_dtype)

    def per_task(params, support, query):
      s = loss(params, support)[0]
      q = loss(params, query)[0]
      return 0.5 * (s + q), {"support_loss_before": s, "query_loss_before": q}

    (value, metrics), grads = base.task_mean_grad(
        per_task, state.params, tasks.support, tasks.query, task_map=task_map)
    grads = (grads, ())

    return base.apply_meta_update(opt, state, grads, dict(metrics, loss=value), "loss")

  adapt = protocol_adapt(inner, num_inner_steps, filter, compute_dtype)

  return base.MetaLearner(init, step, adapt)
