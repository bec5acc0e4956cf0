"""Shared pieces of the meta-learners: state, parameter filters, checks.

Nothing here knows about Flax or TTS: parameters are any pytree of arrays and
the only model interface is ``loss_fn(params, batch) -> (loss, aux)``.
"""

from __future__ import annotations

from typing import Any, Callable, List, NamedTuple, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metatts.types import LossFn, Params, PyTree, Task

Path = Tuple[Union[str, int], ...]
Predicate = Callable[[Path, Any], bool]
Filter = Union[None, Predicate, PyTree]


class MetaState(NamedTuple):
  """State of a meta-learner; a pytree, so it can be jitted and checkpointed."""

  params: Params  # meta-parameters (the initialization being learned)
  opt_state: Any  # outer optimizer state over (params, extra)
  extra: Any  # meta-learned extras, e.g. inner learning rates; () if none
  step: jax.Array  # int32 []  outer steps taken (skipped ones included)
  num_skipped: jax.Array  # int32 []  updates skipped for a non-finite gradient


class MetaLearner(NamedTuple):
  """A meta-learner as a triple of pure functions (cf. optax.GradientTransformation).

  Attributes:
    init: ``init(params) -> MetaState``.
    step: ``step(state, tasks, loss_fn) -> (state, metrics)``; pure and jittable
      with ``loss_fn`` static.
    adapt: ``adapt(state, support, loss_fn, num_steps=None) -> (params, losses)``:
      test-time adaptation with the learner's own inner loop (learned inner
      learning rates included), ``losses`` float32[num_steps + 1].
  """

  init: Callable[[Params], MetaState]
  step: Callable[[MetaState, Task, LossFn], Tuple[MetaState, dict]]
  adapt: Callable[..., Tuple[Params, jax.Array]]


# ----------------------------------------------------------------------------
# Parameter filters.


def _key_name(entry) -> Union[str, int]:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return getattr(entry, attr)
  return str(entry)


def key_path(path) -> Path:
  """Turns a jax key path into a plain tuple of strings and ints."""
  return tuple(_key_name(e) for e in path)


def resolve_filter(params: Params, filter: Filter) -> List[bool]:
  """Resolves a filter into one bool per leaf of ``params`` (flatten order).

  Args:
    params: the parameter pytree.
    filter: ``None`` (adapt every leaf), a predicate ``(path, leaf) -> bool``
      where ``path`` is a tuple of dict keys / attribute names / indices, or a
      pytree of Python bools with the structure of ``params``.

  Returns:
    A list of bools, one per leaf.

  Raises:
    ValueError: if the mask does not match ``params`` or selects nothing.
  """
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  if filter is None:
    mask = [True] * len(leaves_with_path)
  elif callable(filter):
    mask = [bool(filter(key_path(p), leaf)) for p, leaf in leaves_with_path]
  else:
    mask_leaves, mask_def = jax.tree_util.tree_flatten(filter)
    if mask_def != treedef:
      raise ValueError(
          "The filter mask pytree does not match the parameters: got structure "
          f"{mask_def}, expected {treedef}. Build it with jax.tree.map(lambda "
          "_: True/False, params) or pass a predicate (path, leaf) -> bool.")
    mask = [bool(np.asarray(m)) for m in mask_leaves]
  if not any(mask):
    paths = ["/".join(map(str, key_path(p))) for p, _ in leaves_with_path[:8]]
    raise ValueError(
        "The parameter filter selects no leaf to adapt in the inner loop. "
        f"Parameter paths look like {paths}; fix the predicate or mask, or pass "
        "filter=None to adapt every parameter.")
  return mask


class Partition(NamedTuple):
  """Parameters split into the leaves the inner loop adapts and the rest."""

  mask: Tuple[bool, ...]
  treedef: Any

  def split(self, params: Params) -> Tuple[List[jax.Array], List[jax.Array]]:
    leaves = self.treedef.flatten_up_to(params)
    adapted = [x for x, m in zip(leaves, self.mask) if m]
    frozen = [x for x, m in zip(leaves, self.mask) if not m]
    return adapted, frozen

  def combine(self, adapted: Sequence[jax.Array],
              frozen: Sequence[jax.Array]) -> Params:
    adapted, frozen = iter(adapted), iter(frozen)
    leaves = [next(adapted) if m else next(frozen) for m in self.mask]
    return jax.tree_util.tree_unflatten(self.treedef, leaves)


def make_partition(params: Params, filter: Filter) -> Partition:
  mask = resolve_filter(params, filter)
  return Partition(tuple(mask), jax.tree_util.tree_structure(params))


# ----------------------------------------------------------------------------
# Checks and small utilities.


def check_tasks(tasks: Task) -> int:
  """Validates a meta-batch and returns its number of tasks ``N``."""
  if not isinstance(tasks, Task):
    raise ValueError(
        f"Expected a metatts.types.Task(support, query), got {type(tasks).__name__}. "
        "Wrap the meta-batch as Task(support=..., query=...) with a leading task axis.")
  sizes = {}
  for name, part in (("support", tasks.support), ("query", tasks.query)):
    leaves = jax.tree_util.tree_leaves_with_path(part)
    if not leaves:
      raise ValueError(f"Task.{name} has no array leaves.")
    for path, leaf in leaves:
      shape = np.shape(leaf)
      if len(shape) < 2:
        raise ValueError(
            f"Task.{name}{jax.tree_util.keystr(path)} has shape {shape}; every leaf "
            "needs a leading task axis N and a per-task batch axis: [N, K, ...].")
      sizes.setdefault(name, {})[jax.tree_util.keystr(path)] = shape[0]
  all_n = {n for d in sizes.values() for n in d.values()}
  if len(all_n) != 1:
    raise ValueError(
        "Task leaves disagree on the number of tasks (leading axis): "
        f"{sizes}. Every support and query leaf must have the same N.")
  return all_n.pop()


def checked_loss(loss_fn: LossFn, compute_dtype=None) -> Callable:
  """Wraps ``loss_fn``: checks the loss is a scalar, casts for mixed precision.

  With ``compute_dtype`` (e.g. ``jnp.bfloat16``) floating parameters are cast
  before the forward pass; gradients flow back through the cast, so they (and
  the parameters and meta-gradients) stay float32. The loss is returned as
  float32.
  """

  def wrapped(params, batch):
    if compute_dtype is not None:
      params = jax.tree.map(
          lambda x: x.astype(compute_dtype)
          if jnp.issubdtype(x.dtype, jnp.floating) else x, params)
    out = loss_fn(params, batch)
    if not (isinstance(out, tuple) and len(out) == 2):
      raise ValueError(
          "loss_fn must return a pair (loss, aux); got "
          f"{type(out).__name__}. Return (loss, {{}}) if there is no aux.")
    loss, aux = out
    if jnp.shape(loss) != ():
      raise ValueError(
          f"loss_fn must return a scalar loss; got shape {jnp.shape(loss)}. "
          "Reduce it (e.g. jnp.mean) before returning.")
    return jnp.asarray(loss, jnp.float32), aux

  return wrapped


def copy_tree(tree):
  """Fresh copies of every array, so a donated state never aliases the caller's."""
  return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


def all_finite(tree) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  if not leaves:
    return jnp.array(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def global_norm(tree) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def select_tree(pred: jax.Array, on_true, on_false):
  """Elementwise ``pred ? on_true : on_false`` over matching pytrees."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def guarded_update(state: MetaState, grads, new_state_fn) -> Tuple[MetaState, jax.Array]:
  """Applies ``new_state_fn()`` only if ``grads`` are finite.

  A non-finite meta-gradient never overwrites good parameters: the update is
  skipped, ``num_skipped`` counted, and ``step`` still advances.

  Returns:
    (new_state, skipped) with ``skipped`` a float32 0/1 scalar.
  """
  ok = all_finite(grads)
  params, opt_state, extra = new_state_fn()
  new = MetaState(
      params=select_tree(ok, params, state.params),
      opt_state=select_tree(ok, opt_state, state.opt_state),
      extra=select_tree(ok, extra, state.extra),
      step=state.step + 1,
      num_skipped=state.num_skipped + jnp.where(ok, 0, 1).astype(jnp.int32),
  )
  return new, 1.0 - ok.astype(jnp.float32)


def init_state(outer, params, extra=()) -> MetaState:
  """A fresh MetaState; the outer optimizer acts on the pair (params, extra)."""
  params = copy_tree(params)  # the state owns its buffers (donation)
  return MetaState(params=params, opt_state=outer.init((params, extra)),
                   extra=extra, step=jnp.zeros((), jnp.int32),
                   num_skipped=jnp.zeros((), jnp.int32))


def apply_meta_update(outer, state: MetaState, grads, metrics: dict,
                      loss_key: str = "query_loss_after"):
  """Outer-optimizer step on ``grads = (param_grads, extra_grads)``, NaN-guarded.

  Returns:
    ``(new_state, metrics)`` with ``loss``, ``grad_norm`` and ``skipped`` added.
  """

  def apply():
    updates, opt_state = outer.update(grads, state.opt_state,
                                      (state.params, state.extra))
    params, extra = optax.apply_updates((state.params, state.extra), updates)
    return params, opt_state, extra

  new_state, skipped = guarded_update(state, grads, apply)
  metrics = dict(metrics)
  metrics["loss"] = metrics[loss_key]
  metrics["grad_norm"] = global_norm(grads)
  metrics["skipped"] = skipped
  return new_state, metrics


TaskMap = Union[None, str, int]
TASK_MAPS = ("vmap", "map")


def check_task_map(task_map: TaskMap) -> TaskMap:
  """Validates a ``task_map`` option (see :func:`task_mean`) and returns it."""
  if task_map is None or task_map in TASK_MAPS:
    return task_map
  if (isinstance(task_map, (int, np.integer)) and not isinstance(task_map, bool)
      and task_map >= 1):
    return int(task_map)
  raise ValueError(
      f"task_map={task_map!r} is not known; use None (= 'vmap'), 'vmap' "
      "(all tasks as one batch), 'map' (one task after the other) or a "
      "positive int k (chunks of k tasks vmapped, the chunks one after the "
      "other).")


def check_anchor_weight(anchor_weight) -> float:
  """Validates an ``anchor_weight`` (λ ≥ 0, finite) and returns it as a float."""
  try:
    value = float(anchor_weight)
  except (TypeError, ValueError):
    value = float("nan")
  if not np.isfinite(value) or value < 0:
    raise ValueError(
        f"anchor_weight={anchor_weight!r}; use a finite number >= 0 (0 turns "
        "the anchor term off).")
  return value


def task_mean(fn, *args, task_map: TaskMap = None):
  """Runs ``fn`` on every task along the leading axis of ``args`` and
  averages its outputs over the tasks.

  ``task_map`` says how the tasks are laid out in the compiled program (the
  values are the same up to float rounding):

  * ``None`` or ``"vmap"``: ``jax.vmap``, every task in one batched program
    (per-task weights become batched matmuls);
  * ``"map"``: one task after the other in a ``lax.scan`` whose body is the
    single-task program (plain matmuls; less memory), summing the outputs
    as it goes;
  * an int ``k``: ``lax.map`` over chunks of ``k`` vmapped tasks.

  Which is fastest depends on the backend and the model
  (docs/benchmarks.md, "Second run (session 7): metric passes opt-in,
  tasks in a loop").
  """
  task_map = check_task_map(task_map)
  if task_map == "map":
    # A running sum carried through the loop: no stacked [N, ...] outputs
    # to zero-fill and reduce (20 ms of a 124-ms large-MLP MAML step went
    # to filling them; docs/benchmarks.md, "Session 8: XLA CPU's YNNPACK
    # reductions").
    n = jax.tree.leaves(args)[0].shape[0]
    shapes = jax.eval_shape(fn, *jax.tree.map(lambda x: x[0], args))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def body(total, a):
      return jax.tree.map(jnp.add, total, fn(*a)), None

    total, _ = jax.lax.scan(body, zeros, args)
    return jax.tree.map(lambda x: x / n, total)
  if task_map is None or task_map == "vmap":
    out = jax.vmap(fn)(*args)
  else:
    out = jax.lax.map(lambda a: fn(*a), args, batch_size=task_map)
  return jax.tree.map(lambda x: jnp.mean(x, axis=0), out)


def task_mean_grad(fn, primal, *args, task_map: TaskMap = None):
  """``jax.value_and_grad`` of the task mean of ``fn``, laid out by ``task_map``.

  ``fn(primal, *task_args)`` returns ``(objective, aux)`` for one task; the
  result is ``((mean objective, mean aux), mean gradient with respect to
  primal)``, the same as ``jax.value_and_grad(lambda p: task_mean(lambda
  *a: fn(p, *a), *args, task_map=task_map), has_aux=True)(primal)``.

  With ``task_map="map"`` each task's gradient is taken inside the loop and
  summed as it goes. Differentiating the loop from outside instead makes
  XLA save every task's intermediate values (for MAML, its adapted weights)
  for a backward loop: stacked buffers to fill and slice, about 40 ms of a
  2.2M-parameter MLP's ~280-ms MAML step on a loaded machine
  (docs/benchmarks.md, "Session 15"). The other layouts differentiate the
  mean as a whole.
  """
  if check_task_map(task_map) == "map":
    vg = jax.value_and_grad(fn, has_aux=True)
    return task_mean(lambda *a: vg(primal, *a), *args, task_map="map")
  return jax.value_and_grad(
      lambda p: task_mean(lambda *a: fn(p, *a), *args, task_map=task_map),
      has_aux=True)(primal)
