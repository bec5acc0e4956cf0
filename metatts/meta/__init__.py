"""Meta-learning algorithms as pure functions over parameter pytrees.

Every learner is a :class:`MetaLearner` ``(init, step, adapt)`` of pure
functions, like an optax transformation; the model is seen only through
``loss_fn(params, batch) -> (loss, aux)``. Nothing here imports Flax or TTS.
"""

from metatts.meta.base import MetaLearner, MetaState, resolve_filter
from metatts.meta.imaml import conjugate_gradient, imaml
from metatts.meta.inner import adapt, inner_loop
from metatts.meta.maml import fomaml, maml, metasgd
from metatts.meta.parallel import make_step, task_mesh
from metatts.meta.pretrain import pretrain
from metatts.meta.reptile import reptile

# Registry for configs: config.method -> constructor.
LEARNERS = {
    "maml": maml,
    "fomaml": fomaml,
    "metasgd": metasgd,
    "reptile": reptile,
    "imaml": imaml,
    "pretrain": pretrain,
}


def get_learner(name: str, **kwargs) -> MetaLearner:
  """Builds a learner by name (``LEARNERS``); unknown names raise ValueError."""
  if name not in LEARNERS:
    raise ValueError(
        f"Unknown meta-learning method {name!r}; choose one of {sorted(LEARNERS)}.")
  return LEARNERS[name](**kwargs)


__all__ = [
    "LEARNERS", "MetaLearner", "MetaState", "adapt", "conjugate_gradient",
    "fomaml", "get_learner", "imaml", "inner_loop", "make_step", "maml",
    "metasgd", "pretrain", "reptile", "resolve_filter", "task_mesh",
]
