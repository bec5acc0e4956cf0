"""The inner loop: a few optimizer steps on a task's support set.

One implementation serves meta-training (MAML differentiates through it,
Reptile and iMAML run it without a tape) and test-time adaptation
(:func:`adapt`), so what is meta-learned is exactly what a user runs.
"""

from __future__ import annotations

import os
from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metatts.meta import base
from metatts.types import LossFn, Params, PyTree


# Inner loops of at most this many steps are unrolled on CPU (``unroll=None``).
MAX_CPU_UNROLL = 16
# Environment variable that overrides MAX_CPU_UNROLL (an integer >= 0; 0
# keeps every loop rolled).
UNROLL_ENV = "METATTS_CPU_UNROLL"


def max_cpu_unroll() -> int:
  """The longest inner loop unrolled on CPU by default.

  ``MAX_CPU_UNROLL``, or the integer in the ``METATTS_CPU_UNROLL``
  environment variable (``0``: never unroll). Unrolling makes XLA's CPU
  backend run each step many times faster and compile longer; a rolled loop
  computes the same steps (``tests/test_meta.py``). The test suite rolls
  every loop (``tests/conftest.py``): its tiny models run a few steps, so
  compilation is what it waits for.

  Raises:
    ValueError: the variable is not a non-negative integer.
  """
  value = os.environ.get(UNROLL_ENV, "").strip()
  if not value:
    return MAX_CPU_UNROLL
  try:
    n = int(value)
  except ValueError:
    n = -1
  if n < 0:
    raise ValueError(f"{UNROLL_ENV}={value!r}: use a whole number of steps "
                     f">= 0 (0 keeps every inner loop rolled), or unset it "
                     f"for the default {MAX_CPU_UNROLL}.")
  return n


def resolve_unroll(num_steps: int, unroll: Optional[bool] = None) -> bool:
  """Whether the inner loop's ``lax.scan`` is fully unrolled.

  ``None`` (the default everywhere): unrolled on the CPU backend when
  ``num_steps <= max_cpu_unroll()`` (16 unless ``METATTS_CPU_UNROLL`` says
  otherwise), a rolled scan otherwise. On XLA's CPU backend a training
  step inside a scan (a while loop) runs far slower than the same step
  outside one: an SGD step of the duration Tacotron on 5 clips took 0.58 s
  in the scan and 0.04 s unrolled (``benchmarks/inner_loop_unroll.py``,
  docs/benchmarks.md); unrolling costs compile time instead, which grows
  with the steps. Elsewhere the rolled scan is kept (not measured on
  accelerators here).
  """
  if unroll is None:
    return (jax.default_backend() == "cpu"
            and num_steps <= max_cpu_unroll())
  return bool(unroll)


class InnerResult(NamedTuple):
  params: Params  # adapted parameters (full tree)
  support_losses: jax.Array  # float32 [num_steps]  support loss before each step
  query_losses: Optional[jax.Array]  # float32 [num_steps]  query loss after each step
  opt_state: Optional[PyTree] = None  # the inner optimizer's state at the end


def _step_lrs(lrs: Optional[Sequence[jax.Array]], num_steps: int,
              per_step: bool):
  """Learning rates to feed the scan: per-step slices or a constant."""
  if lrs is None or not per_step:
    return None
  trained = lrs[0].shape[0]
  # Beyond the trained number of steps, keep using the last step's rates.
  idx = np.minimum(np.arange(num_steps), trained - 1)
  return [jnp.take(lr, idx, axis=0) for lr in lrs]


def inner_loop(
    loss: Callable,
    partition: base.Partition,
    params: Params,
    support: PyTree,
    inner_optimizer: optax.GradientTransformation,
    num_steps: int,
    *,
    lrs: Optional[Sequence[jax.Array]] = None,
    per_step_lrs: bool = False,
    first_order: bool = False,
    remat: bool = False,
    reg_fn: Optional[Callable] = None,
    query: Optional[PyTree] = None,
    unroll: Optional[bool] = None,
    opt_state: Optional[PyTree] = None,
) -> InnerResult:
  """Runs ``num_steps`` inner-optimizer steps on ``support`` with ``lax.scan``.

  Args:
    loss: ``loss(params, batch) -> (scalar, aux)`` (already checked/cast).
    partition: which leaves are adapted; the rest stay fixed in the loop.
    params: starting parameters.
    support: the support batch of one task (no task axis).
    inner_optimizer: any optax transformation; its update is applied as is,
      or multiplied elementwise by ``lrs`` when given (Meta-SGD, MAML++).
    num_steps: number of inner steps (static).
    lrs: optional learned learning rates, one array per adapted leaf: of the
      leaf's shape (per parameter), ``()`` (per layer), or with a leading
      step axis when ``per_step_lrs``.
    per_step_lrs: whether ``lrs`` carry a leading step axis.
    first_order: stop gradients through the inner gradients (FOMAML); the
      learned ``lrs`` still receive gradients.
    remat: rematerialize each inner step in the backward pass
      (``jax.checkpoint``): memory then grows with the number of steps by one
      set of adapted parameters per step rather than all activations.
    reg_fn: optional extra term ``reg_fn(adapted_leaves) -> scalar`` added to
      the support loss (iMAML's proximal term).
    query: optional query batch; if given, the query loss after every step is
      returned (MAML++ multi-step loss).
    unroll: unroll the steps' scan; ``None`` decides by backend and
      ``num_steps`` (:func:`resolve_unroll`). Either way the same steps run.
    opt_state: the inner optimizer's state to continue from (a previous
      result's ``opt_state``); None starts it afresh with ``init``. Runs of
      ``n`` and then ``m`` steps chained this way are the same steps as one
      run of ``n + m`` (a stateful optimizer such as Adam keeps its moments).

  Returns:
    An :class:`InnerResult`.
  """
  adapted0, frozen = partition.split(params)
  opt_state0 = (inner_optimizer.init(adapted0) if opt_state is None
                else opt_state)

  def support_loss(adapted):
    value, _ = loss(partition.combine(adapted, frozen), support)
    if reg_fn is not None:
      value = value + reg_fn(adapted)
    return value

  def one_step(carry, step_lrs):
    adapted, opt_state = carry
    value, grads = jax.value_and_grad(support_loss)(adapted)
    if first_order:
      grads = jax.lax.stop_gradient(grads)
    updates, opt_state = inner_optimizer.update(grads, opt_state, adapted)
    if first_order:
      updates = jax.lax.stop_gradient(updates)
    rates = step_lrs if per_step_lrs else lrs
    if rates is not None:
      updates = [u * r.astype(u.dtype) for u, r in zip(updates, rates)]
    adapted = optax.apply_updates(adapted, updates)
    outs = (value,)
    if query is not None:
      q, _ = loss(partition.combine(adapted, frozen), query)
      outs = outs + (q,)
    return (adapted, opt_state), outs

  if remat:
    one_step = jax.checkpoint(one_step)
  xs = _step_lrs(lrs, num_steps, per_step_lrs)
  (adapted, opt_state_n), outs = jax.lax.scan(
      one_step, (adapted0, opt_state0), xs, length=num_steps,
      unroll=resolve_unroll(num_steps, unroll))
  query_losses = outs[1] if query is not None else None
  return InnerResult(partition.combine(adapted, frozen), outs[0], query_losses,
                     opt_state_n)


def adapt(
    params: Params,
    support: PyTree,
    loss_fn: LossFn,
    *,
    inner_optimizer: optax.GradientTransformation,
    num_steps: int,
    filter: base.Filter = None,
    compute_dtype=None,
    lrs: Optional[Sequence[jax.Array]] = None,
    per_step_lrs: bool = False,
    unroll: Optional[bool] = None,
    opt_state: Optional[PyTree] = None,
    return_state: bool = False,
):
  """Few-shot adaptation at test time, with the meta-learners' inner loop.

  Args:
    params: the starting parameters (e.g. a meta-learned initialization).
    support: the new task's support batch, without a task axis.
    loss_fn: ``loss_fn(params, batch) -> (loss, aux)``.
    inner_optimizer: any optax transformation (e.g. ``optax.sgd(0.01)``).
    num_steps: number of gradient steps (static under jit).
    filter: which parameters adapt (see :func:`metatts.meta.base.resolve_filter`).
    compute_dtype: optional compute dtype for mixed precision.
    lrs, per_step_lrs: learned inner learning rates (Meta-SGD / MAML++).
    unroll: see :func:`inner_loop` (``None``: unrolled on CPU for short
      loops).
    opt_state: continue a stateful inner optimizer from this state (see
      :func:`inner_loop`), e.g. to run a long adaptation in chunks.
    return_state: also return the inner optimizer's final state.

  Returns:
    ``(adapted_params, losses)`` with ``losses`` float32[num_steps + 1]: the
    support loss before each step and after the last one; with
    ``return_state``, ``(adapted_params, losses, opt_state)``.
  """
  loss = base.checked_loss(loss_fn, compute_dtype)
  partition = base.make_partition(params, filter)
  result = inner_loop(loss, partition, params, support, inner_optimizer,
                      num_steps, lrs=lrs, per_step_lrs=per_step_lrs,
                      unroll=unroll, opt_state=opt_state)
  final, _ = loss(result.params, support)
  losses = jnp.concatenate([result.support_losses, final[None]])
  if return_state:
    return result.params, losses, result.opt_state
  return result.params, losses


def protocol_adapt(inner_optimizer, num_inner_steps, filter, compute_dtype):
  """``MetaLearner.adapt`` for learners without learned inner rates.

  Test time runs the plain inner loop with the learner's own optimizer,
  filter and (by default) number of steps.
  """

  def adapt_fn(state, support, loss_fn, num_steps=None):
    return adapt(state.params, support, loss_fn, inner_optimizer=inner_optimizer,
                 num_steps=num_inner_steps if num_steps is None else num_steps,
                 filter=filter, compute_dtype=compute_dtype)

  return adapt_fn
