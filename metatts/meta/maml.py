"""MAML and its relatives: FOMAML, Meta-SGD and the MAML++ options.

References:
  Finn, Abbeel, Levine. Model-Agnostic Meta-Learning for Fast Adaptation of
    Deep Networks. ICML 2017. (MAML, first-order MAML)
  Li, Zhou, Chen, Li. Meta-SGD: Learning to Learn Quickly for Few-Shot
    Learning. arXiv:1707.09835, 2017.
  Antoniou, Edwards, Storkey. How to Train Your MAML. ICLR 2019. (MAML++:
    multi-step loss, per-step per-layer learned inner learning rates,
    derivative-order annealing)
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from metatts.meta import base
from metatts.meta.inner import adapt as _adapt
from metatts.meta.inner import inner_loop

LR_MODES = ("per_parameter", "per_layer", "per_step_per_layer")


def _init_lrs(adapted, mode, init_value, num_steps):
  if mode is None:
    return ()
  if mode == "per_parameter":
    return [jnp.full(x.shape, init_value, jnp.float32) for x in adapted]
  if mode == "per_layer":
    return [jnp.full((), init_value, jnp.float32) for _ in adapted]
  if mode == "per_step_per_layer":
    return [jnp.full((num_steps,), init_value, jnp.float32) for _ in adapted]
  raise ValueError(
      f"learn_inner_lr={mode!r} is not known; use None or one of {LR_MODES}.")


def _msl_weights(step, num_steps, anneal_steps):
  """MAML++ multi-step loss weights: uniform, annealed to the last step only."""
  uniform = jnp.full((num_steps,), 1.0 / num_steps)
  last = jax.nn.one_hot(num_steps - 1, num_steps)
  frac = jnp.clip(step.astype(jnp.float32) / max(anneal_steps, 1), 0.0, 1.0)
  return (1.0 - frac) * uniform + frac * last


def maml(
    inner_lr: float = 0.01,
    outer_optimizer: Optional[optax.GradientTransformation] = None,
    num_inner_steps: int = 1,
    *,
    inner_optimizer: Optional[optax.GradientTransformation] = None,
    first_order: bool = False,
    filter: base.Filter = None,
    remat: bool = False,
    compute_dtype=None,
    multi_step_loss: bool = False,
    msl_anneal_steps: int = 1000,
    learn_inner_lr: Optional[str] = None,
    first_order_steps: int = 0,
    extra_metrics: bool = False,
    unroll: Optional[bool] = None,
    task_map: base.TaskMap = None,
    anchor_weight: float = 0.0,
) -> base.MetaLearner:
  """Model-Agnostic Meta-Learning.

  The meta-objective is the mean over tasks of the query loss after
  ``num_inner_steps`` inner-optimizer steps on the support set; its gradient
  is taken through the inner loop (second order), or with the inner gradients
  treated as constants (``first_order=True``, FOMAML).

  Args:
    inner_lr: inner SGD learning rate (used when ``inner_optimizer`` is None),
      and the initial value of learned learning rates.
    outer_optimizer: optax transformation for the meta-update (default
      ``optax.adam(1e-3)``).
    num_inner_steps: inner steps per task during meta-training.
    inner_optimizer: any optax transformation for the inner loop; it is
      differentiated through (e.g. ``optax.adam`` works for second order).
      With ``learn_inner_lr`` its update is multiplied by the learned rates,
      so give it unit scale (the default is then ``optax.sgd(1.0)``).
    first_order: FOMAML.
    filter: which parameters the inner loop adapts (None = all). The others
      are still meta-trained by the outer loop.
    remat: rematerialize each inner step (less memory, more compute).
    compute_dtype: e.g. ``jnp.bfloat16`` for mixed precision (params and
      meta-gradients stay float32).
    multi_step_loss: MAML++ multi-step loss (query loss after every inner step,
      weights annealed from uniform to the last step over ``msl_anneal_steps``).
    msl_anneal_steps: outer steps of the multi-step-loss annealing.
    learn_inner_lr: None, ``"per_parameter"`` (Meta-SGD), ``"per_layer"`` or
      ``"per_step_per_layer"`` (MAML++ LSLR).
    first_order_steps: MAML++ derivative-order annealing: first order for the
      first this many outer steps, second order after.
    extra_metrics: also report the query loss before adaptation and the
      support loss after it (two extra forward passes per task; off by
      default, the step's own values are ``query_loss_after`` and
      ``support_loss_before``).
    unroll: unroll the inner loop (``None``: on CPU for up to
      ``metatts.meta.inner.max_cpu_unroll()`` steps; see ``inner_loop``).
    task_map: how the tasks of a meta-batch are laid out: ``None``/``"vmap"``
      (one batch), ``"map"`` (one after the other) or an int chunk size
      (``metatts.meta.base.task_mean``).
    anchor_weight: λ ≥ 0 of an anchor term: the meta-objective becomes
      ``L_query(φ) + λ·L_query(θ)``, so the initialization must also do the
      task unadapted (pre-training's loss beside MAML's). It keeps the
      unadapted start from drifting to one that only works after the inner
      steps. One more forward/backward over the query clips per task; its
      value is reported as ``query_loss_before``.

  Returns:
    A :class:`metatts.meta.MetaLearner`.
  """
  if num_inner_steps < 1:
    raise ValueError(f"num_inner_steps must be >= 1, got {num_inner_steps}.")
  if learn_inner_lr is not None and learn_inner_lr not in LR_MODES:
    raise ValueError(
        f"learn_inner_lr={learn_inner_lr!r} is not known; use None or one of {LR_MODES}.")
  outer = outer_optimizer if outer_optimizer is not None else optax.adam(1e-3)
  if inner_optimizer is None:
    inner_optimizer = optax.sgd(1.0 if learn_inner_lr else inner_lr)
  per_step = learn_inner_lr == "per_step_per_layer"
  base.check_task_map(task_map)
  anchor_weight = base.check_anchor_weight(anchor_weight)

  def init(params):
    partition = base.make_partition(params, filter)
    adapted, _ = partition.split(params)
    extra = _init_lrs(adapted, learn_inner_lr, inner_lr, num_inner_steps)
    return base.init_state(outer, params, extra)

  def step(state, tasks, loss_fn):
    base.check_tasks(tasks)
    loss = base.checked_loss(loss_fn, compute_dtype)
    partition = base.make_partition(state.params, filter)
    weights = (_msl_weights(state.step, num_inner_steps, msl_anneal_steps)
               if multi_step_loss else None)

    def task_objective(params_extra, support, query, fo):
      params, extra = params_extra
      result = inner_loop(
          loss, partition, params, support, inner_optimizer, num_inner_steps,
          lrs=extra if learn_inner_lr else None, per_step_lrs=per_step,
          first_order=fo, remat=remat, unroll=unroll,
          query=query if multi_step_loss else None)
      if multi_step_loss:
        q_after = result.query_losses[-1]
        objective = jnp.sum(weights * result.query_losses)
      else:
        q_after, _ = loss(result.params, query)
        objective = q_after
      metrics = {"query_loss_after": q_after,
                 "support_loss_before": result.support_losses[0]}
      sg = jax.lax.stop_gradient
      if anchor_weight:
        q_before = loss(params, query)[0]
        objective = objective + anchor_weight * q_before
        metrics["query_loss_before"] = sg(q_before)
      elif extra_metrics:
        metrics["query_loss_before"] = loss(sg(params), query)[0]
      if extra_metrics:
        metrics["support_loss_after"] = loss(sg(result.params), support)[0]
      return objective, metrics

    def meta_grads(fo):
      (_, metrics), grads = base.task_mean_grad(
          lambda pe, s, q: task_objective(pe, s, q, fo),
          (state.params, state.extra), tasks.support, tasks.query,
          task_map=task_map)
      return grads, metrics

    if first_order or first_order_steps <= 0:
      grads, metrics = meta_grads(first_order)
    else:
      grads, metrics = jax.lax.cond(
          state.step < first_order_steps,
          lambda: meta_grads(True), lambda: meta_grads(False))

    return base.apply_meta_update(outer, state, grads, metrics)

  def adapt(state, support, loss_fn, num_steps=None):
    return _adapt(
        state.params, support, loss_fn, inner_optimizer=inner_optimizer,
        num_steps=num_inner_steps if num_steps is None else num_steps,
        filter=filter, compute_dtype=compute_dtype,
        lrs=state.extra if learn_inner_lr else None, per_step_lrs=per_step)

  return base.MetaLearner(init, step, adapt)


def fomaml(inner_lr: float = 0.01, outer_optimizer=None, num_inner_steps: int = 1,
           **kwargs) -> base.MetaLearner:
  """First-order MAML (Finn et al. 2017, Sec. 5.2): ``maml(first_order=True)``."""
  return maml(inner_lr, outer_optimizer, num_inner_steps, first_order=True, **kwargs)


def metasgd(inner_lr: float = 0.01, outer_optimizer=None, num_inner_steps: int = 1,
            **kwargs) -> base.MetaLearner:
  """Meta-SGD (Li et al. 2017): MAML with a learned learning rate per parameter.

  The learned rates start at ``inner_lr`` and multiply the inner optimizer's
  update, which defaults to ``optax.sgd(1.0)``: ``φ = θ − α ⊙ ∇L``.
  """
  return maml(inner_lr, outer_optimizer, num_inner_steps,
              learn_inner_lr="per_parameter", **kwargs)
