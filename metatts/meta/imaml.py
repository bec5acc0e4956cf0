"""Implicit MAML.

Reference:
  Rajeswaran, Finn, Kakade, Levine. Meta-Learning with Implicit Gradients.
    NeurIPS 2019.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

from metatts.meta import base
from metatts.meta.inner import protocol_adapt
from metatts.meta.inner import inner_loop


def _vdot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(a, b))


def conjugate_gradient(matvec, b, num_steps: int, tol: float = 1e-10):
  """Solves ``A x = b`` for symmetric positive-definite ``A`` (a list of arrays).

  A fixed number of iterations inside ``lax.scan`` (so it vmaps and compiles
  to one loop); iterations after convergence, or after a direction of
  non-positive curvature appears (``A`` indefinite), leave ``x`` unchanged.
  """
  x0 = [jnp.zeros_like(v) for v in b]
  r0 = list(b)
  p0 = list(b)
  rs0 = _vdot(r0, r0)

  def body(carry, _):
    x, r, p, rs, done = carry
    ap = matvec(p)
    p_ap = _vdot(p, ap)
    # Stop at convergence, or at a direction of non-positive curvature (the
    # support Hessian of a non-convex model can make I + H/λ indefinite;
    # truncating there keeps the last descent iterate, as in Steihaug's CG).
    done = done | (rs <= tol) | (p_ap <= 0)
    alpha = jnp.where(done, 0.0, rs / jnp.where(done, 1.0, p_ap))
    x = [xi + alpha * pi for xi, pi in zip(x, p)]
    r = [ri - alpha * api for ri, api in zip(r, ap)]
    rs_new = _vdot(r, r)
    beta = jnp.where(done, 0.0, rs_new / jnp.where(done, 1.0, rs))
    p = [ri + beta * pi for ri, pi in zip(r, p)]
    return (x, r, p, jnp.where(done, rs, rs_new), done), None

  init = (x0, r0, p0, rs0, jnp.array(False))
  (x, _, _, _, _), _ = jax.lax.scan(body, init, None, length=num_steps)
  return x


def imaml(
    inner_lr: float = 0.01,
    outer_optimizer: Optional[optax.GradientTransformation] = None,
    num_inner_steps: int = 10,
    *,
    lam: float = 1.0,
    cg_steps: int = 5,
    inner_optimizer: Optional[optax.GradientTransformation] = None,
    filter: base.Filter = None,
    compute_dtype=None,
    unroll: Optional[bool] = None,
    task_map: base.TaskMap = None,
    extra_metrics: bool = False,
) -> base.MetaLearner:
  """iMAML: meta-gradients of a proximally regularized inner problem.

  The inner loop approximately solves
  ``φ*(θ) = argmin_φ L_support(φ) + λ/2 ‖φ − θ‖²`` (adapted leaves only). By the
  implicit function theorem ``dφ*/dθ = (I + H/λ)⁻¹`` with ``H`` the support
  Hessian at ``φ*``, so the meta-gradient is ``x = (I + H/λ)⁻¹ ∇L_query(φ*)``,
  found by ``cg_steps`` of conjugate gradient on Hessian-vector products. No
  tape of the inner loop is kept: memory does not grow with inner steps.

  Leaves excluded by ``filter`` enter the support and query losses directly;
  their meta-gradient is exact as well:
  ``∂L_q/∂w − (1/λ) ∂/∂w [∇_φ L_support(φ*, w) · x]``.

  Args:
    inner_lr: inner SGD learning rate (when ``inner_optimizer`` is None).
    outer_optimizer: default ``optax.adam(1e-3)``.
    num_inner_steps: inner optimizer steps on the regularized problem.
    lam: proximal strength λ.
    cg_steps: conjugate-gradient iterations.
    inner_optimizer: any optax transformation for the inner loop.
    filter: which parameters the inner loop adapts.
    compute_dtype: optional mixed-precision compute dtype.
    unroll: unroll the inner loop (``None``: on CPU for short loops; see
      ``metatts.meta.inner_loop``).
    task_map: how the tasks of a meta-batch are laid out: ``None``/``"vmap"``
      (one batch), ``"map"`` (one after the other) or an int chunk size
      (``metatts.meta.base.task_mean``).
    extra_metrics: also report the query loss before adaptation and the
      support loss after it (two extra forward passes per task).

  Returns:
    A :class:`metatts.meta.MetaLearner`.
  """
  if lam <= 0:
    raise ValueError(f"iMAML needs lam > 0, got {lam}.")
  outer = outer_optimizer if outer_optimizer is not None else optax.adam(1e-3)
  inner = inner_optimizer if inner_optimizer is not None else optax.sgd(inner_lr)
  base.check_task_map(task_map)

  def init(params):
    base.make_partition(params, filter)
    return base.init_state(outer, params)

  def step(state, tasks, loss_fn):
    base.check_tasks(tasks)
    loss = base.checked_loss(loss_fn, compute_dtype)
    partition = base.make_partition(state.params, filter)
    theta = jax.lax.stop_gradient(state.params)
    theta_adapted, _ = partition.split(theta)

    def proximal(adapted):
      return 0.5 * lam * sum(
          jnp.sum(jnp.square(a - t)) for a, t in zip(adapted, theta_adapted))

    def per_task(support, query):
      result = inner_loop(loss, partition, theta, support, inner,
                          num_inner_steps, reg_fn=proximal, unroll=unroll)
      phi = jax.lax.stop_gradient(result.params)
      phi_a, frozen = partition.split(phi)

      def q_loss(adapted, frozen):
        return loss(partition.combine(adapted, frozen), query)[0]

      def s_grad(adapted, frozen):
        return jax.grad(lambda a: loss(partition.combine(a, frozen), support)[0])(adapted)

      q_after, (v, q_frozen) = jax.value_and_grad(q_loss, argnums=(0, 1))(phi_a, frozen)

      def matvec(x):
        hx = jax.jvp(lambda a: s_grad(a, frozen), (phi_a,), (x,))[1]
        return [xi + hi / lam for xi, hi in zip(x, hx)]

      x = conjugate_gradient(matvec, v, cg_steps)
      if frozen:
        cross = jax.grad(lambda w: _vdot(s_grad(phi_a, w), x))(frozen)
        frozen_grads = [g - c / lam for g, c in zip(q_frozen, cross)]
      else:
        frozen_grads = []
      metrics = {"query_loss_after": q_after,
                 "support_loss_before": result.support_losses[0]}
      if extra_metrics:
        metrics["query_loss_before"] = loss(theta, query)[0]
        metrics["support_loss_after"] = loss(phi, support)[0]
      return partition.combine(x, frozen_grads), metrics

    meta_grads, metrics = base.task_mean(per_task, tasks.support, tasks.query,
                                         task_map=task_map)
    grads = (meta_grads, ())

    return base.apply_meta_update(outer, state, grads, metrics)

  # Test time uses the plain inner loop (no proximal term), like every method.
  adapt = protocol_adapt(inner, num_inner_steps, filter, compute_dtype)

  return base.MetaLearner(init, step, adapt)
