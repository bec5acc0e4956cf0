"""Reptile.

Reference:
  Nichol, Achiam, Schulman. On First-Order Meta-Learning Algorithms.
    arXiv:1803.02999, 2018.
"""

from __future__ import annotations

from typing import Optional

import jax
import optax

from metatts.meta import base
from metatts.meta.inner import protocol_adapt
from metatts.meta.inner import inner_loop


def reptile(
    inner_lr: float = 0.01,
    outer_optimizer: Optional[optax.GradientTransformation] = None,
    num_inner_steps: int = 5,
    *,
    inner_optimizer: Optional[optax.GradientTransformation] = None,
    filter: base.Filter = None,
    compute_dtype=None,
    unroll: Optional[bool] = None,
    task_map: base.TaskMap = None,
    extra_metrics: bool = False,
    anchor_weight: float = 0.0,
) -> base.MetaLearner:
  """Reptile: move the initialization towards the task-adapted parameters.

  Each task runs ``num_inner_steps`` inner steps on its support set, giving
  ``φ_task``; the outer optimizer receives the pseudo-gradient
  ``θ − mean_tasks(φ_task)``. With the default ``optax.sgd(epsilon)`` outer
  optimizer this is exactly ``θ ← θ + ε·mean_tasks(φ_task − θ)``; any optax
  transformation may be used instead (Nichol et al. use Adam in places).

  Parameters excluded by ``filter`` do not move in the inner loop, so
  ``φ − θ`` is zero for them; they are meta-trained instead with the task-mean
  gradient of the query loss at ``φ_task`` (a first-order meta-gradient).

  Args:
    inner_lr: inner SGD learning rate (when ``inner_optimizer`` is None).
    outer_optimizer: default ``optax.sgd(1.0)``, i.e. ε = 1 (full step to the
      mean adapted parameters); pass ``optax.sgd(eps)`` for a smaller ε.
    num_inner_steps: inner steps per task.
    inner_optimizer: any optax transformation for the inner loop.
    filter: which parameters the inner loop adapts.
    compute_dtype: optional mixed-precision compute dtype.
    unroll: unroll the inner loop (``None``: on CPU for short loops; see
      ``metatts.meta.inner_loop``).
    task_map: how the tasks of a meta-batch are laid out: ``None``/``"vmap"``
      (one batch), ``"map"`` (one after the other) or an int chunk size
      (``metatts.meta.base.task_mean``).
    extra_metrics: also report the query loss before adaptation and the
      support loss after it (two extra forward passes per task). The step's
      own values are ``support_loss_before`` and ``query_loss_after`` (the
      reported ``loss``).
    anchor_weight: λ ≥ 0 of an anchor term, as in ``maml``: the gradient
      ``g = ∇L_query(θ)`` of the query loss at the unadapted start is added
      to the pseudo-gradient in the units of each part, ``λ·α·m·g`` on the
      adapted leaves (``α·m·g`` is the displacement of ``m`` SGD steps of
      rate ``α`` along ``g``, the units of ``θ − φ``) and ``λ·g`` on the
      others (whose pseudo-gradient is already a query gradient). With
      ``inner_optimizer`` given, ``α`` is ``inner_lr``. One more
      forward/backward over the query clips per task; its value is reported
      as ``query_loss_before``.

  Returns:
    A :class:`metatts.meta.MetaLearner`.
  """
  if num_inner_steps < 1:
    raise ValueError(f"num_inner_steps must be >= 1, got {num_inner_steps}.")
  outer = outer_optimizer if outer_optimizer is not None else optax.sgd(1.0)
  inner = inner_optimizer if inner_optimizer is not None else optax.sgd(inner_lr)
  base.check_task_map(task_map)
  anchor_weight = base.check_anchor_weight(anchor_weight)

  def init(params):
    base.make_partition(params, filter)  # validates the filter early
    return base.init_state(outer, params)

  def step(state, tasks, loss_fn):
    base.check_tasks(tasks)
    loss = base.checked_loss(loss_fn, compute_dtype)
    partition = base.make_partition(state.params, filter)
    theta = jax.lax.stop_gradient(state.params)

    def per_task(support, query):
      result = inner_loop(loss, partition, theta, support, inner, num_inner_steps,
                          unroll=unroll)
      phi = jax.lax.stop_gradient(result.params)
      if all(partition.mask):
        q_after = loss(phi, query)[0]
        frozen_grads = []
      else:
        def query_of_frozen(frozen):
          adapted, _ = partition.split(phi)
          return loss(partition.combine(adapted, frozen), query)[0]
        q_after, frozen_grads = jax.value_and_grad(query_of_frozen)(
            partition.split(phi)[1])
      metrics = {"query_loss_after": q_after,
                 "support_loss_before": result.support_losses[0]}
      anchor = ()
      if anchor_weight:
        q_before, anchor = jax.value_and_grad(lambda p: loss(p, query)[0])(
            theta)
        metrics["query_loss_before"] = q_before
      elif extra_metrics:
        metrics["query_loss_before"] = loss(theta, query)[0]
      if extra_metrics:
        metrics["support_loss_after"] = loss(phi, support)[0]
      return phi, frozen_grads, anchor, metrics

    mean_phi, frozen_grads, anchor, metrics = base.task_mean(
        per_task, tasks.support, tasks.query, task_map=task_map)
    # Pseudo-gradient: θ − φ̄ on adapted leaves, query gradient on the others.
    diff = jax.tree.map(lambda t, p: t - p, theta, mean_phi)
    adapted_diff, _ = partition.split(diff)
    if anchor_weight:
      anchor_adapted, anchor_frozen = partition.split(anchor)
      scale = anchor_weight * inner_lr * num_inner_steps
      adapted_diff = [d + scale * g for d, g in zip(adapted_diff, anchor_adapted)]
      frozen_grads = [f + anchor_weight * g
                      for f, g in zip(frozen_grads, anchor_frozen)]
    grads = (partition.combine(adapted_diff, frozen_grads), ())

    return base.apply_meta_update(outer, state, grads, metrics)

  adapt = protocol_adapt(inner, num_inner_steps, filter, compute_dtype)

  return base.MetaLearner(init, step, adapt)
