"""What every training method is made of, and the shared training run.

A method (``transfer``, ``multitask``, ``zeroshot``, ``meta-<algorithm>``,
``scratch``) is a :class:`Method` object in one file of
``metatts.methods``. It says:

* how it builds its model and loss (:meth:`Method.setup`; by default the
  run's acoustic model, ``config.model.name`` from ``metatts.models.MODELS``,
  with its own ``loss``);
* how it trains (:meth:`Method.learner`, a ``metatts.meta`` learner, and
  whether every task trains on the new-voice row, ``slot_tasks``);
* how it exports (:meth:`Method.export`, ``metatts.training.export``);
* how a new voice starts (``new_voice``: the exported new-voice row is the
  meta-learned row, the mean of the trained rows, the random
  initialization, or the speaker encoder's vector of the clips) and is
  adapted: always ``metatts.voice.adapt`` with the exported protocol.

:meth:`Method.train` is the one training run every method shares (resumable
``metatts.training.loop.train``, export to ``WORKDIR/<method>/model``).

Compute budget: every method trains on the same stream of meta-batches
(``N`` speakers x ``K`` support + ``Q`` query clips). A pre-training step
makes one forward/backward pass over all ``N (K + Q)`` clips; (FO)MAML and
Meta-SGD with ``m`` inner steps make ``m`` over the ``N K`` support clips and
one over the ``N Q`` query clips; Reptile ``m`` over the support clips (and
iMAML also its CG products, not counted). With ``config.train.equal_budget``
every method trains for the steps that cost ``config.train.num_steps``
pre-training steps (:func:`steps_for_budget`). A method started from another
method of the run (``config.train.init_from``) with
``config.train.init_from_fraction`` f > 0 starts from that method's export
after f of its steps and trains for the other (1 - f) of the budget, so that
its total (the source's passes up to then plus its own) is the same as every
other method's (:func:`init_source`).

References:
  Finn et al. (2017), Model-agnostic meta-learning, ICML, arXiv:1703.03400.
  Nichol et al. (2018), On first-order meta-learning algorithms (Reptile),
    arXiv:1803.02999.
  Arik et al. (2018), Neural voice cloning with a few samples, NeurIPS,
    arXiv:1802.06006.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

from metatts import functional
from metatts import meta

# How a new voice's starting parameters are made (Method.new_voice).
NEW_VOICE = {
    "slot": "the new-voice speaker-table row as trained (meta-learned as the "
            "initialization of a new speaker's embedding)",
    "mean_row": "the new-voice row set to the mean of the trained speakers' "
                "rows (the average voice)",
    "random": "the random initialization (no training)",
    "encoder": "the speaker encoder's mean vector of the support clips",
}


def say(msg: str) -> None:
  print(msg, flush=True)


class Context(NamedTuple):
  """What a method needs from the run that trains it.

  Attributes:
    config: the experiment config (``config.train``, ``config.adapt``, ...).
    data: the corpus (``feature_config``, ``speakers`` in table order).
    workdir: the run folder; a method writes ``workdir/<name>``.
    model_name: ``config.model.name``, a key of ``metatts.models.MODELS``.
    model_config: the acoustic model's config fitted to the data.
    graphdef, rest, params0: the acoustic model's random initialization
      (``metatts.functional.split``), shared by every method.
    task_factory: ``slot -> (data_key, start_step) -> iterator of Task``
      (``slot`` None: each clip keeps its speaker's row).
  """

  config: Any
  data: Any
  workdir: str
  model_name: str
  model_config: Any
  graphdef: Any
  rest: Any
  params0: Any
  task_factory: Callable[[Optional[int]], Callable]

  @property
  def slot(self) -> int:
    """The speaker-table row of a new voice (after the training speakers)."""
    return len(self.data.speakers)


class Setup(NamedTuple):
  """A method's model and loss, ready for ``loop.train``."""

  params: Any  # the starting parameter pytree
  loss_fn: Callable  # loss_fn(params, batch) -> (loss, aux)


def adapt_info(config, slot: int) -> dict:
  """The test-time protocol recorded in every export (``config.adapt``)."""
  a = config.adapt
  return {"filter": a.filter, "optimizer": a.optimizer, "lr": float(a.lr),
          "default_steps": int(a.default_steps), "speaker_slot": int(slot)}


def loop_config(config, num_steps: int) -> ml_collections.ConfigDict:
  """``metatts.training.loop`` settings from ``config.train``."""
  t = config.train
  return ml_collections.ConfigDict(dict(
      num_steps=int(num_steps), seed=int(config.seed),
      log_every=int(t.log_every), checkpoint_every=int(t.checkpoint_every),
      max_to_keep=int(t.max_to_keep), max_skipped=int(t.max_skipped),
      eval_every=0))


def learner_for(learner_name: str, t, filter_name: str,
                also: Optional[Callable] = None):
  """A ``metatts.meta`` learner from ``config.train`` (``t``).

  Args:
    learner_name: 'pretrain', 'maml', 'fomaml', 'metasgd', 'reptile' or
      'imaml'.
    t: ``config.train``.
    filter_name: the inner loop's parameter filter.
    also: optional ``(path, leaf) -> bool`` that a leaf must pass as well
      to be adapted (a method's own exclusions).
  """
  pred = functional.filter_for(filter_name)
  if also is not None:
    named = pred
    pred = lambda path, leaf: named(path, leaf) and also(path, leaf)  # noqa: E731
    pred.filter_name = named.filter_name
  inner_steps = int(t.inner_steps.get(learner_name, 1))
  # How a meta-batch's tasks are laid out ("vmap" or "map"; same numbers).
  task_map = str(t.get("task_map", "vmap"))
  if learner_name == "pretrain":
    return meta.pretrain(optax.adam(t.outer_lr), inner_lr=t.inner_lr,
                         filter=pred, task_map=task_map)
  kw = dict(inner_lr=float(t.inner_lr), num_inner_steps=inner_steps,
            filter=pred, task_map=task_map)
  # The MAML family's outer Adam rate: ``meta_outer_lr`` when set (> 0),
  # e.g. a smaller rate for meta-training started from a pre-trained export.
  outer_lr = float(t.get("meta_outer_lr", 0.0) or t.outer_lr)
  # Meta-gradients clipped to a global norm before the outer optimizer
  # (``meta_clip_norm`` > 0): second-order MAML's spiked to 5.6e5 in a
  # base-study run (docs/results/adaptation.md, session 16). The reported
  # ``grad_norm`` is the norm before clipping.
  clip = float(t.get("meta_clip_norm", 0.0) or 0.0)

  def clipped(opt):
    return optax.chain(optax.clip_by_global_norm(clip), opt) if clip else opt

  anchor = float(t.get("anchor_weight", 0.0) or 0.0)
  # (Pre-training returned above: its loss is already the unadapted one.
  # iMAML's implicit gradient has no place for the term.)
  if anchor:
    if learner_name not in ANCHORED:
      raise ValueError(
          f"config.train.anchor_weight={anchor} is for the learners "
          f"{ANCHORED}, not {learner_name!r}; set it to 0 for this method.")
    kw["anchor_weight"] = anchor
  if learner_name == "reptile":
    # "sgd": the interpolation theta + epsilon * (phi - theta). "adam": the
    # pseudo-gradient through Adam, as for the MAML family (Nichol et al.
    # 2018 note either works); the filter's frozen parameters get their raw
    # query gradient through the same optimizer, so with a filter "sgd"
    # makes epsilon their learning rate (0.5 diverged in the base study).
    if str(t.get("reptile_outer", "sgd")) == "adam":
      return meta.reptile(outer_optimizer=clipped(optax.adam(outer_lr)), **kw)
    return meta.reptile(
        outer_optimizer=clipped(optax.sgd(float(t.reptile_epsilon))), **kw)
  if learner_name == "imaml":
    return meta.imaml(outer_optimizer=clipped(optax.adam(outer_lr)),
                      lam=float(t.imaml_lam), cg_steps=int(t.imaml_cg_steps),
                      **kw)
  return meta.get_learner(learner_name,
                          outer_optimizer=clipped(optax.adam(outer_lr)),
                          extra_metrics=False, **kw)


# The learners that take ``config.train.anchor_weight``.
ANCHORED = ("maml", "fomaml", "metasgd", "reptile")


def clip_passes(learner_name: Optional[str], t, num_steps: int) -> int:
  """Clip forward/backward passes of ``num_steps`` steps of a learner.

  Reptile passes over the query clips too when the filter leaves parameters
  out of the inner loop (their query gradient at the adapted parameters);
  the anchor term (``t.anchor_weight`` > 0) adds one query pass per task.
  """
  if learner_name is None:
    return 0
  n, k, q = int(t.num_tasks), int(t.num_support), int(t.num_query)
  if learner_name == "pretrain":
    return num_steps * n * (k + q)
  m = int(t.inner_steps.get(learner_name, 1))
  anchor = n * q if float(t.get("anchor_weight", 0.0) or 0.0) else 0
  if learner_name == "reptile":
    groups = str(t.get("filter", "all")).split("+")
    partial = "all" not in [g.strip() for g in groups]
    return num_steps * (n * k * m + (n * q if partial else 0) + anchor)
  return num_steps * (n * (k * m + q) + anchor)


def steps_for_budget(learner_name: Optional[str], t) -> int:
  """Training steps of a learner under ``config.train`` (``t``).

  With ``t.equal_budget`` the steps whose clip passes equal ``t.num_steps``
  pre-training steps (at least 1); otherwise ``t.num_steps``; 0 for a
  method that does not train.
  """
  if learner_name is None:
    return 0
  steps = int(t.num_steps)
  if not t.get("equal_budget", True):  # default_config's default
    return steps
  budget = clip_passes("pretrain", t, steps)
  per_step = clip_passes(learner_name, t, 1)
  return max(1, int(round(budget / per_step)))


def init_source(t) -> Optional[tuple]:
  """The run-internal starting point of ``uses_init_from`` methods, if split.

  Args:
    t: ``config.train``.

  Returns:
    ``(source, source_step, own_fraction)`` when ``t.init_from`` names a
    method of the registry and ``t.init_from_fraction`` f > 0: the source
    method's name, the step of its export that other methods start from
    (f x its own steps, at least 1) and the share (1 - f) of the budget that
    they train themselves; None otherwise (they start from the final
    export, or from random).

  Raises:
    ValueError: f outside [0, 1), or f > 0 with ``init_from`` an export
      folder (whose budget the run cannot know).
  """
  from metatts import methods as registry  # pylint: disable=g-import-not-at-top
  f = float(t.get("init_from_fraction", 0.0) or 0.0)
  src = t.get("init_from", "")
  if not 0.0 <= f < 1.0:
    raise ValueError(f"config.train.init_from_fraction={f}; use a fraction "
                     "in [0, 1) (0: start from the source's final export).")
  if f == 0.0 or not src:
    return None
  if src not in registry.METHODS or not registry.METHODS[src].trains:
    raise ValueError(
        f"config.train.init_from_fraction={f} needs config.train.init_from "
        f"to name a trained method of this run, not {src!r}; set the "
        "fraction to 0 to start from an export folder.")
  steps = registry.METHODS[src].steps_for_budget(t)
  return src, max(1, int(round(f * steps))), 1.0 - f


def build_params(model_name: str, model_config, seed: int):
  """Initializes a registered model and splits it.

  The model comes from ``metatts.models.build_model`` (the one model
  registry), initialized under ``nnx.jit`` (one compile instead of thousands
  of eager initializer dispatches).

  Args:
    model_name: a key of ``metatts.models.MODELS``.
    model_config: its config (object, size name or dict of fields).
    seed: the initialization seed.

  Returns:
    ``(graphdef, params, rest)`` as in ``metatts.functional.split``.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from metatts import models  # pylint: disable=g-import-not-at-top

  def make():
    return models.build_model(model_name, model_config, nnx.Rngs(seed))

  return functional.split(nnx.jit(make)())


def set_slot_to_mean(params, slot: int):
  """Returns params whose speaker-table row ``slot`` is the mean of the
  rows before it (the trained speakers)."""
  table = jnp.asarray(params["speaker"]["table"]["embedding"])  # [S + 1, D]
  mean = jnp.mean(table[:slot], axis=0)
  new = dict(params)
  new["speaker"] = dict(params["speaker"])
  new["speaker"]["table"] = dict(params["speaker"]["table"])
  new["speaker"]["table"]["embedding"] = table.at[slot].set(mean)
  return new


class Method:
  """A training method (subclass per file; see the module docstring).

  Attributes:
    name: the key in ``config.methods`` and the workdir folder.
    learner_name: the ``metatts.meta`` learner (None: does not train).
    slot_tasks: every training task uses the new-voice row (meta-learning
      the initialization of a new speaker's embedding).
    new_voice: a key of ``NEW_VOICE``.
    meta_learned: a meta-learner (a run's primary method is its first).
    uses_init_from: training starts from ``config.train.init_from``.
  """

  name: str = ""
  learner_name: Optional[str] = None
  slot_tasks: bool = False
  meta_learned: bool = False
  new_voice: str = "slot"
  uses_init_from: bool = False

  @property
  def trains(self) -> bool:
    return self.learner_name is not None

  def __repr__(self) -> str:
    return f"<method {self.name}: {self.learner_name}, {self.new_voice}>"

  # ---- model and loss -----------------------------------------------------

  def setup(self, ctx: Context, params) -> Setup:
    """The model and loss; default: the run's acoustic model's ``loss``."""
    return Setup(params, functional.make_loss_fn(ctx.graphdef, ctx.rest))

  def initial_params(self, ctx: Context):
    """Random init, or ``config.train.init_from`` when ``uses_init_from``."""
    return self._initial(ctx)[0]

  def _initial(self, ctx: Context):
    """``(params, source)``: the starting parameters and, when they come
    from an export, ``{"export", "method", "step"}`` (else ``None``)."""
    t = ctx.config.train
    src = t.init_from
    if not src or not self.uses_init_from:
      return ctx.params0, None
    from metatts.training import export  # pylint: disable=g-import-not-at-top
    split = init_source(t)
    if split is not None:
      path = os.path.join(ctx.workdir, src, f"model_at_{split[1]}")
    else:
      path = src if os.path.sep in src or os.path.isdir(src) else (
          os.path.join(ctx.workdir, src))
    _, params, info, _ = export.load_exported(path)
    step = split[1] if split else info.get("train_steps")
    say(f"[{self.name}] initialized from {info['directory']} "
        f"({info['method']}" + (f", step {split[1]}" if split else "") + ").")
    return jax.tree.map(jnp.asarray, params), {
        "export": info["directory"], "method": info["method"], "step": step}

  # ---- training -----------------------------------------------------------

  def learner(self, t, filter_name: str):
    """The learner from ``config.train`` (``t``)."""
    if not self.trains:
      raise ValueError(f"Method {self.name!r} does not train; it has no "
                       "learner.")
    return learner_for(self.learner_name, t, filter_name)

  def clip_passes(self, t, num_steps: int) -> int:
    return clip_passes(self.learner_name, t, num_steps)

  def steps_for_budget(self, t) -> int:
    """Own training steps: the whole budget, or (1 - f) of it when the
    method starts part-way through another method's run (init_source)."""
    split = init_source(t) if self.uses_init_from else None
    if split is not None and split[0] != self.name:
      t = ml_collections.ConfigDict(t.to_dict())
      t.num_steps = max(1, int(round(split[2] * int(t.num_steps))))
    return steps_for_budget(self.learner_name, t)

  def init_exports(self, ctx: Context) -> tuple:
    """Steps after which this method also exports a starting point for the
    methods that start from it (init_source).

    Made whenever the config names this method as the source, even if no
    method of this run starts from it: a later run of the same workdir with
    more methods needs it, and it cannot be made once training went past
    that step (its checkpoints are gone).
    """
    split = init_source(ctx.config.train)
    if split is None or split[0] != self.name:
      return ()
    return (split[1],)

  def trained_params(self, ctx: Context, params):
    """The acoustic-model parameters to export from the trained pytree."""
    if self.new_voice == "mean_row":
      return set_slot_to_mean(params, ctx.slot)
    return params

  # ---- export -------------------------------------------------------------

  def export(self, ctx: Context, directory: str, params, extra=None,
             info: Optional[Dict[str, Any]] = None) -> str:
    """Writes ``directory`` (what ``metatts.load`` reads)."""
    from metatts.training import export  # pylint: disable=g-import-not-at-top
    fc = ctx.data.feature_config
    return export.export_model(
        directory, method=self.name, model_name=ctx.model_name,
        model_config=ctx.model_config, params=params, feature_config=fc,
        symbols=fc.symbols, speakers=ctx.data.speakers,
        adapt=adapt_info(ctx.config, ctx.slot), extra=extra,
        info=dict(info or {}, new_voice=self.new_voice))

  def train(self, ctx: Context) -> Dict[str, Any]:
    """Trains (or resumes) the method and exports it.

    Returns:
      ``{"params", "extra", "seconds", "cpu_seconds", "clip_passes",
      "steps", "export", "initialized_from", "resumed_from", "num_skipped",
      "final"}``; ``initialized_from`` is ``{"export", "method", "step"}``
      of the export it started from, or ``None`` for a random start.
    """
    from metatts.training import loop  # pylint: disable=g-import-not-at-top
    t = ctx.config.train
    mdir = os.path.join(ctx.workdir, self.name)
    export_dir = os.path.join(mdir, "model")
    start, cpu0 = time.perf_counter(), time.process_time()
    if not self.trains:
      params = self.trained_params(ctx, ctx.params0)
      exp = self.export(ctx, export_dir, params, info={"train_steps": 0})
      return {"params": params, "extra": None, "steps": 0, "export": exp,
              "seconds": time.perf_counter() - start,
              "cpu_seconds": time.process_time() - cpu0, "clip_passes": 0,
              "initialized_from": None, "resumed_from": None, "num_skipped": 0, "final": {}}
    learner = self.learner(t, t.filter)
    params0, source = self._initial(ctx)
    setup = self.setup(ctx, params0)
    factory = ctx.task_factory(ctx.slot if self.slot_tasks else None)
    num_steps = self.steps_for_budget(t)
    say(f"[{self.name}] training {num_steps} steps ({self.learner_name}, "
        f"N={t.num_tasks} K={t.num_support} Q={t.num_query}, filter "
        f"{t.filter}) in {mdir}")
    for stop in self.init_exports(ctx):
      stop_dir = os.path.join(mdir, f"model_at_{stop}")
      if stop >= num_steps or os.path.isdir(stop_dir):
        continue
      part = loop.train(learner, setup.loss_fn, setup.params, factory,
                        loop_config(ctx.config, stop), mdir,
                        progress=bool(ctx.config.progress))
      if int(part.step) != stop:
        raise ValueError(
            f"{mdir}: the starting point at step {stop} of "
            f"config.train.init_from_fraction cannot be made, because the "
            f"run already went on to step {int(part.step)}; use a fresh "
            "--workdir, or set the fraction to 0.")
      self.export(ctx, stop_dir,
                  self.trained_params(ctx, part.meta_state.params),
                  info={"train_steps": stop, "learner": self.learner_name,
                        "of_steps": num_steps})
      say(f"[{self.name}] exported its step-{stop} model for the methods "
          f"that start from it: {stop_dir}")
    result = loop.train(learner, setup.loss_fn, setup.params, factory,
                        loop_config(ctx.config, num_steps), mdir,
                        progress=bool(ctx.config.progress))
    seconds = time.perf_counter() - start
    extra = result.meta_state.extra
    extra = extra if jax.tree_util.tree_leaves(extra) else None
    info = {"train_steps": int(result.step), "learner": self.learner_name,
            "num_skipped": int(result.meta_state.num_skipped)}
    params = self.trained_params(ctx, result.meta_state.params)
    exp = self.export(ctx, export_dir, params, extra, info)
    return {"params": params, "extra": extra, "seconds": seconds,
            "cpu_seconds": time.process_time() - cpu0,
            "clip_passes": self.clip_passes(t, num_steps),
            "steps": num_steps, "export": exp, "initialized_from": source,
            "resumed_from": result.resumed_from,
            "num_skipped": int(result.meta_state.num_skipped),
            "final": {k: v for k, v in result.metrics.items()
                      if isinstance(v, float)}}


__all__ = ["Context", "Method", "NEW_VOICE", "Setup", "adapt_info",
           "build_params", "clip_passes", "init_source", "learner_for", "loop_config", "set_slot_to_mean",
           "steps_for_budget"]
