"""The one boundary between Flax NNX models and pure-JAX parameter pytrees.

The meta-learners in ``metatts.meta`` never see a Flax module: they see a
parameter pytree (nested ``dict`` of arrays), a pure
``loss_fn(params, batch) -> (loss, aux)`` and a parameter filter. This module
makes those three things from any metatts model.

    model = build_model("tacotron", "tiny", nnx.Rngs(0))
    graphdef, params, rest = split(model)
    loss_fn = make_loss_fn(graphdef, rest)           # model.loss(batch)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, b)
    mask = mask_from_filter(params, filter_for("speaker+decoder"))

Parameter groups. ``filter_for`` names a group of parameters by the
attribute names of the model: a leaf belongs to group ``g`` when the
*outermost* string key on its path that names a group equals ``g`` or starts
with ``g + "_"``. In ``Tacotron`` the top-level attributes are ``encoder``,
``speaker``, ``attention``, ``decoder`` and ``postnet``, so
``('decoder', 'attention_rnn', 'gates', 'kernel')`` belongs to ``decoder``
(the outer key wins), and a model whose attribute is ``speaker_embedding``
puts it in ``speaker``. A wrapper model (``('acoustic', 'encoder', ...)``)
works too, because keys naming no group are skipped.

References:
  Finn et al. (2017), Model-agnostic meta-learning, ICML, arXiv:1703.03400.
  Flax NNX functional API: ``nnx.split`` / ``nnx.merge``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Tuple

import jax
from flax import nnx

from metatts.types import LossFn

PyTree = Any
Path = Tuple[Any, ...]
Predicate = Callable[[Path, Any], bool]

# Named parameter groups understood by ``filter_for``.
GROUPS = ("speaker", "encoder", "decoder", "postnet", "attention", "duration",
          "aligner")
FILTER_NAMES = GROUPS + ("all",)


def split(model: nnx.Module) -> Tuple[nnx.GraphDef, dict, nnx.State]:
  """Splits a model into its structure, its parameters and everything else.

  Args:
    model: any ``nnx.Module``.

  Returns:
    (graphdef, params, rest): ``graphdef`` is the static structure;
    ``params`` the ``nnx.Param`` leaves as a nested plain ``dict`` of arrays
    (keys are attribute names and list indices); ``rest`` an ``nnx.State``
    with all other variables (empty for Tacotron). All three are pytrees.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  return graphdef, nnx.to_pure_dict(params), rest


def merge(graphdef: nnx.GraphDef, params: PyTree,
          rest: Optional[nnx.State] = None) -> nnx.Module:
  """Rebuilds a model from ``split``'s outputs (works under jit/grad/vmap).

  Args:
    graphdef: from ``split``.
    params: a params pytree with the structure ``split`` returned (values
      may be tracers).
    rest: the rest state from ``split`` (None if empty).

  Returns:
    A new model whose ``nnx.Param`` values are ``params``.
  """
  if rest is None:
    return nnx.merge(graphdef, params)
  return nnx.merge(graphdef, params, rest)


def default_loss(model: nnx.Module, batch: PyTree) -> Tuple[jax.Array, Any]:
  """Calls ``model.loss(batch)``, the convention of every metatts model."""
  return model.loss(batch)


def make_loss_fn(graphdef: nnx.GraphDef, rest: Optional[nnx.State] = None,
                 loss: Optional[Callable[[nnx.Module, PyTree],
                                         Tuple[jax.Array, Any]]] = None
                 ) -> LossFn:
  """Builds the pure ``loss_fn(params, batch) -> (loss, aux)``.

  The function merges a fresh model from ``params`` on every call, so it is
  pure, jittable, vmappable over params and batch (e.g. over tasks) and
  differentiable to any order (the Tacotron forward pass is a
  ``jax.lax.scan``).

  Args:
    graphdef: from ``split``.
    rest: from ``split``.
    loss: ``loss(model, batch) -> (scalar, aux)``; default
      ``model.loss(batch)``.

  Returns:
    ``loss_fn(params, batch) -> (loss, aux)``.
  """
  loss = default_loss if loss is None else loss

  def loss_fn(params: PyTree, batch: PyTree):
    return loss(merge(graphdef, params, rest), batch)

  return loss_fn


def path_keys(path: Path) -> Tuple[Any, ...]:
  """Converts a ``jax.tree_util`` key path to plain ``str | int`` keys."""
  out = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      out.append(k.key)
    elif isinstance(k, jax.tree_util.SequenceKey):
      out.append(k.idx)
    elif isinstance(k, jax.tree_util.GetAttrKey):
      out.append(k.name)
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      out.append(k.key)
    else:
      out.append(k)
  return tuple(out)


def group_of(path: Path) -> Optional[str]:
  """The parameter group of a path (see the module docstring), or None."""
  for k in path_keys(path):
    if not isinstance(k, str):
      continue
    for g in GROUPS:
      if k == g or k.startswith(g + "_"):
        return g
  return None


def filter_for(name: str, params: Optional[PyTree] = None) -> Predicate:
  """A predicate ``(path, leaf) -> bool`` selecting a named parameter group.

  Args:
    name: one of ``FILTER_NAMES`` ('speaker', 'encoder', 'decoder',
      'postnet', 'attention', 'all') or a '+'-joined combination such as
      'speaker+decoder'.
    params: optional params pytree; when given, a filter that selects no leaf
      of it raises.

  Returns:
    The predicate; ``path`` may be a tuple of plain keys or a
    ``jax.tree_util`` key path.

  Raises:
    ValueError: unknown name, or nothing selected in ``params``.
  """
  if not isinstance(name, str) or not name.strip():
    raise ValueError(
        f"Parameter filter {name!r} is empty; use one of {list(FILTER_NAMES)}"
        " or a '+'-joined combination such as 'speaker+decoder'.")
  parts = [p.strip() for p in name.split("+")]
  unknown = [p for p in parts if p not in FILTER_NAMES]
  if unknown:
    raise ValueError(
        f"Unknown parameter filter {unknown} in {name!r}; valid names are "
        f"{list(FILTER_NAMES)}, combinable with '+' (e.g. 'speaker+decoder').")
  if "all" in parts:
    predicate = lambda path, leaf: True  # noqa: E731
  else:
    wanted = frozenset(parts)

    def predicate(path, leaf):
      del leaf
      return group_of(path) in wanted

  predicate.__name__ = f"filter_{name.replace('+', '_')}"
  predicate.filter_name = name
  if params is not None:
    mask_from_filter(params, predicate)
  return predicate


def mask_from_filter(params: PyTree, predicate: Predicate) -> PyTree:
  """Boolean pytree (same structure as ``params``) of selected leaves.

  Args:
    params: params pytree.
    predicate: ``(path, leaf) -> bool`` (e.g. from ``filter_for``); it
      receives plain ``str | int`` key tuples.

  Returns:
    Pytree of Python bools.

  Raises:
    ValueError: the predicate selects no leaf.
  """
  mask = jax.tree_util.tree_map_with_path(
      lambda p, x: bool(predicate(path_keys(p), x)), params)
  if not any(jax.tree_util.tree_leaves(mask)):
    groups = sorted({g for g in (group_of(p) for p, _ in
                                 jax.tree_util.tree_leaves_with_path(params))
                     if g is not None})
    name = getattr(predicate, "filter_name", getattr(predicate, "__name__",
                                                     "predicate"))
    hint = (f"its parameter groups are {groups}; pick one of those or 'all'"
            if groups else "it has no named parameter groups; use 'all'")
    raise ValueError(
        f"Parameter filter {name!r} selects no parameter of this model: "
        f"{hint}.")
  return mask


def count(params: PyTree, mask: Optional[PyTree] = None) -> int:
  """Number of scalar parameters (only the masked ones when ``mask`` given)."""
  leaves = jax.tree_util.tree_leaves(params)
  if mask is None:
    return int(sum(x.size for x in leaves))
  return int(sum(x.size for x, m in zip(leaves,
                                        jax.tree_util.tree_leaves(mask)) if m))
