"""Few-shot sinusoid regression (Finn et al. 2017, Sec. 5.1) as a library run.

``run(config, workdir)`` meta-trains a 1-40-40-1 ReLU MLP with the method in
``config.method`` (maml, fomaml, reptile, metasgd, imaml, or the transfer
learning baseline ``pretrain``), then measures the query MSE on held-out tasks
after 0, 1 and 10 adaptation steps on K support points. It is what
``experiments/main.py`` calls, and a notebook can call it too.

References:
  Finn, Abbeel, Levine. "Model-Agnostic Meta-Learning for Fast Adaptation of
  Deep Networks." ICML 2017. https://arxiv.org/abs/1703.03400
  Nichol, Achiam, Schulman. "On First-Order Meta-Learning Algorithms" (Reptile).
  arXiv:1803.02999, 2018.
  Li, Zhou, Chen, Li. "Meta-SGD: Learning to Learn Quickly for Few-Shot
  Learning." arXiv:1707.09835, 2017.
  Rajeswaran, Finn, Kakade, Levine. "Meta-Learning with Implicit Gradients"
  (iMAML). NeurIPS 2019.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metatts import meta
from metatts.data import sinusoid as sinusoid_data
from metatts.training import loop

Params = Dict[str, jax.Array]

# Adaptation step counts reported in the results (Finn et al. Fig. 2 shows
# 0, 1 and 10 gradient steps).
EVAL_STEPS = (0, 1, 10)


# ----------------------------------------------------------------------------
# The model: a pure-JAX MLP over a dict of weights.


def mlp_init(key: jax.Array, sizes: Sequence[int]) -> Params:
  """Initializes an MLP ``sizes[0] -> ... -> sizes[-1]``.

  Weights ~ N(0, 0.01^2) truncated at two standard deviations, biases zero:
  the small initialization of Finn et al.'s sinusoid network. (A He-scaled
  init makes plain SGD with step 0.01 diverge on inputs in [-5, 5].)

  Args:
    key: PRNG key.
    sizes: layer widths including input and output, e.g. ``(1, 40, 40, 1)``.

  Returns:
    ``{"w0": [sizes[0], sizes[1]], "b0": [sizes[1]], "w1": ..., ...}``.
  """
  if len(sizes) < 2 or any(int(s) < 1 for s in sizes):
    raise ValueError(f"mlp_init: sizes={tuple(sizes)} must list >= 2 positive "
                     "widths, e.g. (1, 40, 40, 1).")
  params = {}
  keys = jax.random.split(key, len(sizes) - 1)
  for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
    params[f"w{i}"] = 0.01 * jax.random.truncated_normal(
        keys[i], -2.0, 2.0, (fan_in, fan_out), jnp.float32)
    params[f"b{i}"] = jnp.zeros((fan_out,), jnp.float32)
  return params


def mlp_apply(params: Params, x: jax.Array) -> jax.Array:
  """Applies the MLP: ReLU between layers, linear output.

  Args:
    params: from ``mlp_init``.
    x: float32 [..., sizes[0]].

  Returns:
    float32 [..., sizes[-1]].
  """
  num_layers = len(params) // 2
  h = x
  for i in range(num_layers):
    h = h @ params[f"w{i}"] + params[f"b{i}"]
    if i < num_layers - 1:
      h = jax.nn.relu(h)
  return h


def mse_loss(params: Params, batch: Tuple[jax.Array, jax.Array]):
  """Mean squared error of the MLP on ``(x, y)``, both [P, 1].

  Returns:
    ``(loss, aux)`` with ``aux = {}`` (the metatts ``loss_fn`` contract).
  """
  x, y = batch
  pred = mlp_apply(params, x)  # [P, 1]
  return jnp.mean((pred - y) ** 2), {}


# ----------------------------------------------------------------------------
# Methods: a small explicit registry config.method -> learner builder.


def _outer(config):
  return optax.adam(config.outer_lr)


def _maml_kwargs(config):
  return dict(inner_lr=config.inner_lr, outer_optimizer=_outer(config),
              num_inner_steps=config.num_inner_steps)


METHODS: Dict[str, Callable[[Any], Any]] = {
    "maml": lambda c: meta.maml(**_maml_kwargs(c)),
    "fomaml": lambda c: meta.fomaml(**_maml_kwargs(c)),
    "metasgd": lambda c: meta.metasgd(**_maml_kwargs(c)),
    "reptile": lambda c: meta.reptile(**_maml_kwargs(c)),
    "imaml": lambda c: meta.imaml(**_maml_kwargs(c), lam=c.imaml_lam,
                                  cg_steps=c.imaml_cg_steps),
    "pretrain": lambda c: meta.pretrain(_outer(c), inner_lr=c.inner_lr),
}


def make_learner(config) -> Any:
  """Builds the meta-learner named by ``config.method``.

  Raises:
    ValueError: for an unknown method.
  """
  if config.method not in METHODS:
    raise ValueError(
        f"config.method={config.method!r} is not a sinusoid method; use one of "
        f"{sorted(METHODS)} (e.g. --config experiments/configs/sinusoid.py:"
        "reptile).")
  return METHODS[config.method](config)


# ----------------------------------------------------------------------------
# Evaluation.


def make_evaluator(learner, num_steps: Sequence[int] = EVAL_STEPS):
  """Returns a jitted ``evaluate(meta_state, tasks) -> (mse, adapted)``.

  For every task the learner's own test-time adaptation (``learner.adapt``:
  its inner optimizer and, for Meta-SGD, its learned learning rates) runs
  ``n`` steps on the support set for each ``n`` in ``num_steps``.

  Returns:
    A function returning ``mse = {n: float32 [N]}`` (query MSE per task) and
    ``adapted = {n: params with leaves [N, ...]}``.
  """

  def per_task(state, support, query):
    mse, adapted = {}, {}
    for n in num_steps:
      if n == 0:
        params = state.params
      else:
        params, _ = learner.adapt(state, support, mse_loss, num_steps=n)
      mse[n] = mse_loss(params, query)[0]
      adapted[n] = params
    return mse, adapted

  @jax.jit
  def evaluate(state, tasks):
    return jax.vmap(per_task, in_axes=(None, 0, 0))(state, tasks.support,
                                                    tasks.query)
  return evaluate


def held_out_tasks(config, num_tasks: int):
  """The fixed evaluation tasks: a key disjoint from every training seed."""
  key = jax.random.fold_in(jax.random.PRNGKey(config.eval_seed), 10**6)
  return sinusoid_data.sample_tasks(key, num_tasks, config.num_support,
                                    config.num_eval_query)


def plot_adaptation(tasks, hidden, adapted, method: str, path: str,
                    num_plots: int = 2) -> str:
  """Saves a PNG of held-out tasks: truth, support points and the fits after
  each number of adaptation steps (cf. Finn et al. 2017, Fig. 2).

  Args:
    tasks: held-out ``Task`` ((x, y) leaves [N, K, 1]).
    hidden: their ``SinusoidParams``.
    adapted: ``{n: params with leaves [N, ...]}`` from ``make_evaluator``.
    method: title label.
    path: output PNG path.
    num_plots: how many of the tasks to draw.

  Returns:
    ``path``.
  """
  # A Figure with its own Agg canvas, not pyplot: switching the global
  # backend (matplotlib.use) would stop a notebook's later plots showing.
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  grid = np.linspace(-5.0, 5.0, 200, dtype=np.float32)[:, None]  # [200, 1]
  fig = Figure(figsize=(5 * num_plots, 3.5))
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, num_plots, sharey=True, squeeze=False)
  styles = (":", "--", "-", "-.")
  for t, ax in enumerate(axes[0]):
    amp, phase = float(hidden.amplitude[t]), float(hidden.phase[t])
    ax.plot(grid[:, 0], amp * np.sin(grid[:, 0] - phase), "k-", lw=2,
            label="ground truth")
    for i, (n, params) in enumerate(sorted(adapted.items())):
      task_params = jax.tree.map(lambda a, t=t: a[t], params)
      ax.plot(grid[:, 0], np.asarray(mlp_apply(task_params, grid))[:, 0],
              styles[i % len(styles)],
              label=f"after {n} step{'' if n == 1 else 's'}")
    ax.plot(np.asarray(tasks.support[0][t, :, 0]),
            np.asarray(tasks.support[1][t, :, 0]), "r^",
            label="K support points")
    ax.set_xlabel("x")
    ax.set_title(f"{method}: held-out task {t}")
  axes[0, 0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


# ----------------------------------------------------------------------------
# The run.


def run(config, workdir: str) -> Dict[str, Any]:
  """Meta-trains on sinusoid tasks and evaluates few-shot adaptation.

  Resumes from the newest checkpoint in ``workdir`` if there is one.

  Args:
    config: a ``ConfigDict`` from ``experiments/configs/sinusoid.py``.
    workdir: output directory (checkpoints, TensorBoard events,
      ``metrics.json``, ``results.json``, ``adaptation.png``).

  Returns:
    A dict with ``method``, ``mse`` (``{"0": ..., "1": ..., "10": ...}`` mean
    query MSE over ``config.num_eval_tasks`` held-out tasks), ``mse_ci95``
    (half-width of the 95% interval), ``mse_median``, ``num_diverged``
    (tasks whose adapted MSE is not finite), ``num_steps``, ``train_seconds``,
    ``workdir``, ``results_path`` and ``plot_path``.
  """
  os.makedirs(workdir, exist_ok=True)
  learner = make_learner(config)
  init_params = mlp_init(jax.random.PRNGKey(config.seed),
                         tuple(config.layer_sizes))

  def factory(data_key, start_step):
    return sinusoid_data.task_iterator(data_key, start_step,
                                       config.meta_batch_size,
                                       config.num_support, config.num_query)

  evaluate = make_evaluator(learner)
  # Periodic evaluation uses the same held-out tasks (same shapes: one
  # compile); they are never used for training or model selection.
  tasks, hidden = held_out_tasks(config, config.num_eval_tasks)

  def eval_fn(state, step):
    del step
    mse, _ = evaluate(state, tasks)
    return {f"mse_after_{n}_steps": jnp.mean(v) for n, v in mse.items()}

  start = time.perf_counter()
  result = loop.train(learner, mse_loss, init_params, factory, config, workdir,
                      eval_fn=eval_fn, progress=config.progress)
  train_seconds = time.perf_counter() - start

  mse, adapted = evaluate(result.meta_state, tasks)
  mse = {n: np.asarray(v) for n, v in mse.items()}
  summary = {
      "method": config.method,
      "num_eval_tasks": int(config.num_eval_tasks),
      "num_support": int(config.num_support),
      "mse": {str(n): float(v.mean()) for n, v in mse.items()},
      "mse_ci95": {str(n): float(1.96 * v.std(ddof=1) / np.sqrt(v.size))
                   for n, v in mse.items()},
      # Robust to the few tasks where adaptation diverges.
      "mse_median": {str(n): float(np.median(v)) for n, v in mse.items()},
      "num_diverged": {str(n): int(np.sum(~np.isfinite(v)))
                       for n, v in mse.items()},
      "num_steps": int(result.step),
      "num_skipped": int(result.meta_state.num_skipped),
      "train_seconds": train_seconds,
      "resumed_from": result.resumed_from,
      "workdir": os.path.abspath(workdir),
  }
  summary["plot_path"] = plot_adaptation(
      tasks, hidden, adapted, config.method,
      os.path.join(workdir, "adaptation.png"))
  summary["results_path"] = os.path.join(os.path.abspath(workdir),
                                         "results.json")
  with open(summary["results_path"], "w") as f:
    json.dump(summary, f, indent=1)
  return summary
