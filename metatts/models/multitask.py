"""Multi-task building block: a shared trunk, per-task heads, one objective.

The multi-task baseline shares layers between tasks (e.g. an encoder used by
both a mel-reconstruction head and a speaker-classification head) and trains

    L(theta) = sum_t w_t L_t(theta_shared, theta_t) + lambda * R(theta_shared)

with ``R = sum |theta|`` ("l1") or ``R = sum theta^2`` ("l2"; no factor 1/2)
over the *shared* (trunk) parameters only (Caruana 1997; Ruder 2017). Heads
never see each other's parameters, so task ``a``'s loss has an exactly zero
gradient with respect to head ``b``.

Trunk and heads are any NNX modules or plain callables (a callable without
parameters is fine, e.g. a pooling function). ``MultiTaskModel(inputs)`` runs
the trunk once and every head on its output; :class:`MultiTaskObjective` is a
``loss(model, batch) -> (loss, aux)`` that ``metatts.functional.make_loss_fn``
accepts, so the meta-learners can adapt a multi-task model like any other.

References:
  R. Caruana, "Multitask Learning", Machine Learning 28, 1997.
  S. Ruder, "An Overview of Multi-Task Learning in Deep Neural Networks",
    arXiv:1706.05098, 2017.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from metatts.models import layers

Array = jax.Array
PyTree = Any
TaskLoss = Callable[[Any, Any], Any]  # (head output, batch) -> loss | (loss, aux)
_REGULARIZERS = ("l1", "l2", "none")


class MultiTaskModel(nnx.Module):
  """Shared trunk + named heads.

  Args:
    trunk: module or callable ``trunk(inputs) -> features``.
    heads: mapping name -> module or callable ``head(features) -> output``.
  """

  def __init__(self, trunk: Callable[..., Any],
               heads: Mapping[str, Callable[..., Any]]):
    if not heads:
      raise ValueError("MultiTaskModel needs at least one head; pass "
                       "heads={'name': module_or_callable}.")
    self.trunk = trunk
    self.heads = nnx.Dict(dict(heads))

  @property
  def task_names(self) -> Tuple[str, ...]:
    return tuple(sorted(self.heads.keys()))

  def __call__(self, inputs: Any,
               tasks: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Runs the trunk once and the requested heads on its features.

    Args:
      inputs: whatever the trunk takes.
      tasks: head names to run (default: all).

    Returns:
      dict name -> head output.
    """
    names = self.task_names if tasks is None else tuple(tasks)
    unknown = [t for t in names if t not in self.heads]
    if unknown:
      raise ValueError(f"Unknown task(s) {unknown}; this model has heads "
                       f"{list(self.task_names)}.")
    features = self.trunk(inputs)
    return {t: self.heads[t](features) for t in names}

  def shared_params(self) -> nnx.State:
    """The trunk's ``nnx.Param`` state (what the regularizer sees)."""
    if isinstance(self.trunk, nnx.Module):
      return nnx.state(self.trunk, nnx.Param)
    return nnx.State({})


def regularizer(params: PyTree, kind: str) -> Array:
  """``sum |x|`` ("l1"), ``sum x^2`` ("l2") or 0 ("none") over all leaves."""
  if kind not in _REGULARIZERS:
    raise ValueError(f"Unknown regularizer {kind!r}; use one of "
                     f"{_REGULARIZERS}.")
  leaves = jax.tree.leaves(params)
  if kind == "none" or not leaves:
    return jnp.zeros((), jnp.float32)
  if kind == "l1":
    return sum(jnp.abs(x.astype(jnp.float32)).sum() for x in leaves)
  return sum(jnp.square(x.astype(jnp.float32)).sum() for x in leaves)


@dataclasses.dataclass(frozen=True)
class MultiTaskObjective:
  """``loss(model, batch) -> (loss, aux)`` of a :class:`MultiTaskModel`.

  ``loss = sum_t weights[t] * task_losses[t](outputs[t], batch)
  + reg_weight * regularizer(shared params, kind)``.

  Attributes:
    task_losses: name -> ``fn(head_output, batch)`` returning a scalar or
      ``(scalar, aux)``. Only these heads are run.
    weights: name -> w_t (default 1 for every task).
    kind: ``"l1"``, ``"l2"`` or ``"none"``.
    reg_weight: lambda >= 0.
    inputs: ``fn(batch) -> trunk inputs`` (default: the batch itself).
  """

  task_losses: Mapping[str, TaskLoss]
  weights: Optional[Mapping[str, float]] = None
  kind: str = "l2"
  reg_weight: float = 0.0
  inputs: Callable[[Any], Any] = lambda batch: batch

  def __post_init__(self):
    if not self.task_losses:
      raise ValueError("MultiTaskObjective needs at least one task loss.")
    if self.kind not in _REGULARIZERS:
      raise ValueError(f"Unknown regularizer {self.kind!r}; use one of "
                       f"{_REGULARIZERS}.")
    if self.reg_weight < 0:
      raise ValueError(f"reg_weight={self.reg_weight} must be >= 0.")
    if self.weights is not None:
      extra = sorted(set(self.weights) - set(self.task_losses))
      if extra:
        raise ValueError(f"weights name task(s) {extra} without a loss; "
                         f"tasks are {sorted(self.task_losses)}.")

  def __call__(self, model: MultiTaskModel,
               batch: Any) -> Tuple[Array, Dict[str, Any]]:
    names = tuple(sorted(self.task_losses))
    outputs = model(self.inputs(batch), tasks=names)
    total = jnp.zeros((), jnp.float32)
    aux: Dict[str, Any] = {}
    for t in names:
      res = self.task_losses[t](outputs[t], batch)
      loss_t, aux_t = res if isinstance(res, tuple) else (res, None)
      w = 1.0 if self.weights is None else self.weights.get(t, 1.0)
      total = total + w * loss_t.astype(jnp.float32)
      aux[f"loss/{t}"] = loss_t
      if aux_t is not None:
        aux[f"aux/{t}"] = aux_t
    reg = regularizer(model.shared_params(), self.kind)
    aux["regularizer"] = reg
    total = total + self.reg_weight * reg
    aux["loss"] = total
    return total, aux


# ----------------------------------------------------------------------------
# A ready-made head: speaker classification on a sequence encoder
# ----------------------------------------------------------------------------


class PooledClassifierHead(nnx.Module):
  """Masked mean over time, then a linear classifier.

  Takes the trunk output ``(features [B, T, C], mask [B, T])`` and returns
  logits ``[B, num_classes]``; e.g. speaker classification beside the mel
  reconstruction head of an encoder.

  Args:
    in_features: C.
    num_classes: number of classes (speakers).
    rngs: initialization keys.
  """

  def __init__(self, in_features: int, num_classes: int, *,
               rngs: nnx.Rngs):
    self.linear = nnx.Linear(in_features, num_classes,
                             kernel_init=layers.normal_init(), rngs=rngs)

  def __call__(self, trunk_out: Tuple[Array, Array]) -> Array:
    features, mask = trunk_out
    m = mask.astype(jnp.float32)[..., None]
    pooled = (features * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    return self.linear(pooled)


def classification_loss(logits: Array,
                        labels: Array) -> Tuple[Array, Dict[str, Array]]:
  """Mean softmax cross-entropy and accuracy; ``labels`` int [B]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  nll = -jnp.take_along_axis(logp, labels[:, None], -1)[:, 0]
  acc = (jnp.argmax(logits, -1) == labels).mean()
  return nll.mean(), {"accuracy": acc}
