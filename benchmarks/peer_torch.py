r"""metatts.meta side by side with functional PyTorch MAML, FOMAML and Reptile.

Identical models, task batches and initial parameters on both sides. For each
workload and algorithm (at 1 and 5 inner steps) it builds

* ``metatts``: ``metatts.meta.get_learner(...)`` + ``meta.make_step`` (one
  jitted XLA program per meta-step, tasks vmapped), with its defaults;
* ``torch-loop``: a plain autograd task loop (``torch.autograd.grad`` with
  ``create_graph`` for second order);
* ``torch-func``: ``torch.func`` (``grad`` + ``vmap`` over tasks), the
  functional style of the PyTorch meta-learning libraries;
* ``torch-compile``: ``torch.compile`` of the ``torch-func`` step (skipped
  with the reason when it fails, with ``--no-compile``, and for the
  workloads outside ``--compile_workloads``: by default all but ``lstm``);
* ``torch-fused`` (the ``lstm`` workload only): the task loop with the LSTM
  as ``torch.nn.LSTM``, PyTorch's own C++ kernel, instead of a cell stepped
  in Python;

checks that every system computes the same meta-update (one step with an
SGD outer step of 1.0, i.e. the new parameters are ``θ - g``: the largest
absolute difference to metatts is printed and must stay under ``--atol``),
then times them interleaved (round-robin over the systems, ``--repeats``
rounds, each the mean of several calls) with an Adam outer step on both
sides, and prints the median ms per meta-step and the ratio fastest PyTorch
variant / metatts (the first ``--task_maps`` layout, and the fastest one).

Workloads (those of issue 14):

* ``mlp-small``: MLP 1-40-40-1, N=4 tasks, K=Q=10;
* ``mlp-large``: MLP 32-1024-1024-1024-32 (2.2 M parameters), N=4, K=Q=10;
* ``lstm``: an LSTM with 64 units over 100 frames of 80 features and a
  linear read-out to 80, N=4, K=Q=5 (the shape of a TTS decoder's
  recurrence), mean squared error against a target sequence;
* ``tts-decoder``: the decoder of the duration Tacotron that speaks
  (``experiments/configs/speech.py``: ``ParallelDecoder`` of size ``tiny``,
  a linear layer 80 -> 128, 4 residual blocks of a 5-tap convolution,
  LayerNorm and ReLU, a linear layer to 80 mels; 0.35 M parameters), run on
  the metatts side by metatts's own module (``functional.merge``), and on the
  PyTorch side by ``conv1d`` and ``layer_norm`` with the same parameters;
  N=4 tasks of K=Q=4 clips of 200 frames of 80 features (the upsampled
  encoder output and speaker vector), mean squared error against a per-task
  target.

Usage::

  .venv/bin/python benchmarks/peer_torch.py [--workloads mlp-small,lstm] \
      [--algorithms maml,fomaml,reptile] [--inner_steps 1,5] [--repeats 7] \
      [--no-compile] [--task_maps vmap,map] [--out runs/bench/peer_torch.json]

``--task_maps vmap,map`` also times metatts with the tasks in a loop
(``task_map="map"``) as ``metatts-map``, beside the default layout; a
``+dot`` suffix (``vmap+dot``, ``map+dot``) compiles that step with
``metatts.meta.parallel.CPU_DOT_FUSIONS_ONLY`` (XLA's YNNPACK fusions of
matrix products only), and a ``+conv`` suffix runs the tts-decoder's
convolutions as ``lax.conv_general_dilated`` (``Conv1D(lowering="conv")``)
instead of the library's one matmul over shifted copies.

Both sides use every core (XLA's and PyTorch's default thread pools).
Results: docs/benchmarks.md, "metatts against PyTorch".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import optax  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position
from torch import func as tfunc  # pylint: disable=g-import-not-at-top,wrong-import-position

from metatts import meta  # pylint: disable=g-import-not-at-top,wrong-import-position
from metatts.types import Task  # pylint: disable=g-import-not-at-top,wrong-import-position

WORKLOADS = {
    "mlp-small": dict(kind="mlp", sizes=(1, 40, 40, 1), n=4, k=10, q=10),
    "mlp-large": dict(kind="mlp", sizes=(32, 1024, 1024, 1024, 32), n=4,
                      k=10, q=10),
    "lstm": dict(kind="lstm", hidden=64, frames=100, dim=80, n=4, k=5, q=5),
    "tts-decoder": dict(kind="tts-decoder", frames=200, dim=80, n=4, k=4,
                        q=4),
}
ALGORITHMS = ("maml", "fomaml", "reptile")
INNER_LR = 0.01
OUTER_LR = 1e-3


# ------------------------------------------------------------------ the data

def make_workload(name: str, seed: int = 0):
  """(names, params, (sx, sy, qx, qy)) as float32 numpy arrays.

  ``names`` orders the parameters; both sides see them in that order.
  """
  w = WORKLOADS[name]
  rng = np.random.default_rng(seed)
  n, k, q = w["n"], w["k"], w["q"]
  if w["kind"] == "mlp":
    sizes = w["sizes"]
    params, names = [], []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
      params += [rng.normal(size=(a, b)) / np.sqrt(a), np.zeros(b)]
      names += [f"w{i}", f"b{i}"]
    d_in, d_out = sizes[0], sizes[-1]
    x = rng.normal(size=(n, k + q, d_in))
    w_task = rng.normal(size=(n, d_in, d_out)) / np.sqrt(d_in)
    y = np.tanh(np.einsum("npi,nio->npo", x, w_task))
  elif w["kind"] == "tts-decoder":
    _, treedef_leaves = _tts_decoder(seed)
    names = [name for name, _ in treedef_leaves]
    params = [np.asarray(leaf) for _, leaf in treedef_leaves]
    t, d = w["frames"], w["dim"]
    x = rng.normal(size=(n, k + q, t, d))
    w_task = rng.normal(size=(n, d, d)) / np.sqrt(d)
    y = np.tanh(np.einsum("npti,nio->npto", x, w_task))
  else:
    h, t, d = w["hidden"], w["frames"], w["dim"]
    names = ["wx", "wh", "b", "wo", "bo"]
    params = [rng.normal(size=(d, 4 * h)) / np.sqrt(d),
              rng.normal(size=(h, 4 * h)) / np.sqrt(h), np.zeros(4 * h),
              rng.normal(size=(h, d)) / np.sqrt(h), np.zeros(d)]
    x = rng.normal(size=(n, k + q, t, d)) * 0.5
    # A per-task smoothed copy of the input: a learnable, task-specific map.
    mix = rng.uniform(0.3, 0.9, size=(n, 1, 1, 1))
    y = mix * x + (1 - mix) * np.roll(x, 1, axis=2)
  params = [p.astype(np.float32) for p in params]
  data = (x[:, :k], y[:, :k], x[:, k:], y[:, k:])
  return names, params, tuple(a.astype(np.float32) for a in data)


# ---------------------------------------------------------------- the models

def _tts_decoder(seed: int = 0):
  """metatts's duration-Tacotron decoder (size tiny, 80 input features):
  ``((graphdef, rest, treedef), [(name, leaf)])`` with the parameters in
  flatten order, named by their path."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from metatts import functional  # pylint: disable=g-import-not-at-top
  from metatts.models import duration_tacotron as dt  # pylint: disable=g-import-not-at-top
  model = dt.ParallelDecoder(dt.duration_tacotron_config("tiny"),
                             WORKLOADS["tts-decoder"]["dim"],
                             rngs=nnx.Rngs(seed))
  graphdef, tree, rest = functional.split(model)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  named = [(jax.tree_util.keystr(path), leaf) for path, leaf in leaves]
  return (graphdef, rest, treedef), named

# The same maths on both sides: ReLU MLP with a linear output; an LSTM with
# gates (i, f, g, o) in one matmul, zero initial state, linear read-out.

def jax_loss(kind: str, names: List[str],
             conv_lowering: str = "matmul") -> Callable:
  """metatts ``loss_fn(params, batch) -> (loss, aux)`` on a dict of arrays.

  ``conv_lowering``: the tts-decoder's ``Conv1D.lowering`` ('matmul', the
  library's default, or 'conv': ``lax.conv_general_dilated``).
  """
  def mlp(p, x):
    layers = len(names) // 2
    for i in range(layers):
      x = x @ p[f"w{i}"] + p[f"b{i}"]
      if i < layers - 1:
        x = jax.nn.relu(x)
    return x

  def lstm(p, x):
    hidden = p["wh"].shape[0]
    xs = jnp.swapaxes(x, 0, 1) @ p["wx"] + p["b"]  # [T, B, 4H]

    def cell(carry, xt):
      h, c = carry
      z = xt + h @ p["wh"]
      i, f, g, o = jnp.split(z, 4, axis=-1)
      c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      h = jax.nn.sigmoid(o) * jnp.tanh(c)
      return (h, c), h

    zeros = jnp.zeros((x.shape[0], hidden), x.dtype)
    _, hs = jax.lax.scan(cell, (zeros, zeros), xs)
    return jnp.swapaxes(hs, 0, 1) @ p["wo"] + p["bo"]

  models = {"mlp": mlp, "lstm": lstm}
  if kind == "tts-decoder":
    from metatts import functional  # pylint: disable=g-import-not-at-top
    (graphdef, rest, treedef), _ = _tts_decoder()

    from flax import nnx  # pylint: disable=g-import-not-at-top
    from metatts.models import layers  # pylint: disable=g-import-not-at-top

    def decoder(p, x):
      tree = jax.tree_util.tree_unflatten(treedef, [p[n] for n in names])
      mask = jnp.ones(x.shape[:2], bool)
      model = functional.merge(graphdef, tree, rest)
      for _, module in nnx.iter_modules(model):
        if isinstance(module, layers.Conv1D):
          module.lowering = conv_lowering
      return model(x, mask, None)

    models[kind] = decoder
  apply = models[kind]

  def loss_fn(params, batch):
    x, y = batch
    return jnp.mean((apply(params, x) - y) ** 2), {}

  return loss_fn


def torch_loss(kind: str, names: List[str], fused: bool = False) -> Callable:
  """``loss(params_tuple, x, y) -> scalar`` with the same maths as jax_loss.

  ``fused``: the LSTM runs as ``torch.nn.LSTM`` (PyTorch's own C++ kernel,
  through ``torch.func.functional_call`` with the same parameters: gate order
  (i, f, g, o), ``weight_ih = wx.T``, ``weight_hh = wh.T``, ``bias_ih = b``,
  ``bias_hh = 0``) instead of a cell stepped in Python.
  """
  index = {n: i for i, n in enumerate(names)}

  def mlp(p, x):
    layers = len(names) // 2
    for i in range(layers):
      x = x @ p[index[f"w{i}"]] + p[index[f"b{i}"]]
      if i < layers - 1:
        x = torch.relu(x)
    return x

  def lstm(p, x):
    wx, wh, b, wo, bo = (p[index[k]] for k in ("wx", "wh", "b", "wo", "bo"))
    xs = x @ wx + b  # [B, T, 4H]
    h = x.new_zeros((x.shape[0], wh.shape[0]))
    c = h
    outs = []
    for t in range(x.shape[1]):
      z = xs[:, t] + h @ wh
      i, f, g, o = torch.chunk(z, 4, dim=-1)
      c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
      h = torch.sigmoid(o) * torch.tanh(c)
      outs.append(h)
    return torch.stack(outs, 1) @ wo + bo

  fused_lstm = {}

  def lstm_fused(p, x):
    wx, wh, b, wo, bo = (p[index[k]] for k in ("wx", "wh", "b", "wo", "bo"))
    if "module" not in fused_lstm:
      fused_lstm["module"] = torch.nn.LSTM(wx.shape[0], wh.shape[0],
                                           batch_first=True)
    weights = {"weight_ih_l0": wx.t(), "weight_hh_l0": wh.t(),
               "bias_ih_l0": b, "bias_hh_l0": torch.zeros_like(b)}
    hs, _ = tfunc.functional_call(fused_lstm["module"], weights, (x,))
    return hs @ wo + bo

  def tts_decoder(p, x):
    get = lambda n: p[index[n]]  # noqa: E731
    h = torch.relu(x @ get("['inp']['kernel']") + get("['inp']['bias']"))
    blocks = sorted({n.split("]")[1] for n in names if n.startswith(
        "['convs']")})
    for b in blocks:
      pre = f"['convs']{b}]"
      kernel = get(pre + "['conv']['conv']['kernel']")  # [taps, in, out]
      y = torch.nn.functional.conv1d(
          h.transpose(-1, -2), kernel.permute(2, 1, 0),
          get(pre + "['conv']['conv']['bias']"),
          padding=kernel.shape[0] // 2).transpose(-1, -2)
      y = torch.nn.functional.layer_norm(
          y, (y.shape[-1],), get(pre + "['norm']['scale']"),
          get(pre + "['norm']['bias']"), eps=1e-6)
      h = h + torch.relu(y)
    return h @ get("['out']['kernel']") + get("['out']['bias']")

  apply = {"mlp": mlp, "lstm": lstm_fused if fused else lstm,
           "tts-decoder": tts_decoder}[kind]

  def loss(p, x, y):
    return torch.mean((apply(p, x) - y) ** 2)

  return loss


# ------------------------------------------------------------ metatts side

def metatts_step(kind, names, algorithm, steps, outer, task_map="vmap"):
  """A metatts learner and its step; ``task_map`` may end in ``+dot``
  (``meta.parallel.CPU_DOT_FUSIONS_ONLY``: YNNPACK fuses matrix products
  only) and/or ``+conv`` (the tts-decoder's convolutions as
  ``lax.conv_general_dilated`` instead of the library's matmul form)."""
  layout, *suffixes = str(task_map).split("+")
  if not set(suffixes) <= {"dot", "conv"}:
    raise ValueError(f"--task_maps entry {task_map!r}: the suffixes are "
                     "'+dot' and '+conv' (e.g. map+dot, vmap+conv).")
  fusions = "dot" in suffixes
  loss_fn = jax_loss(kind, names,
                     conv_lowering="conv" if "conv" in suffixes else "matmul")
  layout = int(layout) if layout.isdigit() else layout
  kw = dict(inner_lr=INNER_LR, num_inner_steps=steps, outer_optimizer=outer,
            task_map=layout)
  learner = meta.get_learner(algorithm, **kw)
  options = meta.parallel.CPU_DOT_FUSIONS_ONLY if fusions else None
  return learner, meta.make_step(learner, loss_fn, donate=False,
                                 compiler_options=options)


# -------------------------------------------------------------- torch side

def torch_meta_grads_loop(loss, algorithm, steps):
  """The autograd task loop: mean over tasks of the meta-gradient (MAML,
  FOMAML) or of θ − φ (Reptile)."""
  def meta_grads(params, sx, sy, qx, qy):
    total = [torch.zeros_like(p) for p in params]
    for t in range(sx.shape[0]):
      fast = list(params)
      for _ in range(steps):
        inner = loss(fast, sx[t], sy[t])
        grads = torch.autograd.grad(inner, fast,
                                    create_graph=algorithm == "maml")
        fast = [w - INNER_LR * g for w, g in zip(fast, grads)]
      if algorithm == "reptile":
        task = [p.detach() - f.detach() for p, f in zip(params, fast)]
      elif algorithm == "maml":
        task = torch.autograd.grad(loss(fast, qx[t], qy[t]), params)
      else:  # fomaml: the query gradient at the adapted weights
        fast = [f.detach().requires_grad_() for f in fast]
        task = torch.autograd.grad(loss(fast, qx[t], qy[t]), fast)
      total = [a + g for a, g in zip(total, task)]
    return [a / sx.shape[0] for a in total]
  return meta_grads


def torch_meta_grads_func(loss, algorithm, steps):
  """torch.func: ``grad`` for the inner steps, ``vmap`` over tasks."""
  inner_grad = tfunc.grad(loss)

  def adapt(params, x, y, stop):
    fast = params
    for _ in range(steps):
      grads = inner_grad(fast, x, y)
      if stop:
        grads = tuple(g.detach() for g in grads)
      fast = tuple(w - INNER_LR * g for w, g in zip(fast, grads))
    return fast

  if algorithm == "maml":
    def task(params, sx, sy, qx, qy):
      return loss(adapt(params, sx, sy, False), qx, qy)
    per_task = tfunc.vmap(tfunc.grad(task), in_dims=(None, 0, 0, 0, 0))
  elif algorithm == "fomaml":
    def task(params, sx, sy, qx, qy):
      return inner_grad(adapt(params, sx, sy, True), qx, qy)
    per_task = tfunc.vmap(task, in_dims=(None, 0, 0, 0, 0))
  else:
    def task(params, sx, sy, qx, qy):
      del qx, qy
      fast = adapt(params, sx, sy, True)
      return tuple(p - f for p, f in zip(params, fast))
    per_task = tfunc.vmap(task, in_dims=(None, 0, 0, 0, 0))

  def meta_grads(params, sx, sy, qx, qy):
    with torch.no_grad() if algorithm != "maml" else contextlib.nullcontext():
      out = per_task(tuple(p.detach() for p in params), sx, sy, qx, qy)
    return [g.mean(0) for g in out]
  return meta_grads


def torch_system(loss, algorithm, steps, variant):
  """``(init(params) -> state, step(state, data) -> state)`` with Adam.

  ``torch-fused`` is the task loop over the ``fused`` loss (the LSTM as
  ``torch.nn.LSTM``; ``loss`` must be built with ``torch_loss(...,
  fused=True)``)."""
  if variant in ("torch-loop", "torch-fused"):
    meta_grads = torch_meta_grads_loop(loss, algorithm, steps)
  else:
    meta_grads = torch_meta_grads_func(loss, algorithm, steps)
    if variant == "torch-compile":
      # A fresh cache per row: every row compiles the same function with
      # another closure, and after 8 of them (torch._dynamo's
      # recompile_limit) dynamo stops compiling and runs it eagerly, which
      # timed later rows' torch-compile as torch-func.
      torch._dynamo.reset()  # pylint: disable=protected-access
      meta_grads = torch.compile(meta_grads)

  def init(params):
    ps = [torch.tensor(p, requires_grad=True) for p in params]
    return ps, torch.optim.Adam(ps, lr=OUTER_LR, foreach=True)

  def step(state, data):
    ps, opt = state
    grads = meta_grads(ps, *data)
    for p, g in zip(ps, grads):
      p.grad = g.detach()
    opt.step()
    return state

  return init, step, meta_grads


# ----------------------------------------------------------------- checking

def check(workload, algorithm, steps, variants,
          task_map="vmap") -> Dict[str, float]:
  """Largest |Δ| between each torch variant's meta-update and metatts's."""
  w = WORKLOADS[workload]
  names, params, data = make_workload(workload)
  learner, step = metatts_step(w["kind"], names, algorithm, steps,
                               optax.sgd(1.0), task_map)
  p0 = {n: jnp.asarray(p) for n, p in zip(names, params)}
  state = learner.init(p0)
  tasks = Task(support=(data[0], data[1]), query=(data[2], data[3]))
  new, _ = step(state, tasks)
  jax_update = [np.asarray(p0[n] - new.params[n]) for n in names]
  tdata = tuple(torch.tensor(a) for a in data)
  out = {}
  for variant in variants:
    loss_t = torch_loss(w["kind"], names, fused=variant == "torch-fused")
    _, _, meta_grads = torch_system(loss_t, algorithm, steps, variant)
    ps = [torch.tensor(p, requires_grad=True) for p in params]
    try:
      grads = meta_grads(ps, *tdata)
    except Exception as e:  # pylint: disable=broad-except
      out[variant] = f"failed: {type(e).__name__}: {str(e)[:160]}"
      continue
    out[variant] = max(float(np.max(np.abs(g.detach().numpy() - u)))
                       for g, u in zip(grads, jax_update))
  out["scale"] = max(float(np.max(np.abs(u))) for u in jax_update)
  return out


# ------------------------------------------------------------------ timing

def time_systems(workload, algorithm, steps, variants, repeats,
                 target_seconds=0.3, task_maps=("vmap",)) -> Dict[str, float]:
  """Median seconds per meta-step of each system, timed round-robin.

  ``task_maps``: the metatts layouts to time (``metatts.meta.base.task_mean``);
  the first is ``metatts``, the others ``metatts-<layout>``.
  """
  w = WORKLOADS[workload]
  names, params, data = make_workload(workload)
  runners: Dict[str, Tuple[Callable, list]] = {}
  tasks = Task(support=(data[0], data[1]), query=(data[2], data[3]))
  for i, task_map in enumerate(task_maps):
    learner, step = metatts_step(w["kind"], names, algorithm, steps,
                                 optax.adam(OUTER_LR), task_map)
    jstate = [learner.init({n: jnp.asarray(p)
                            for n, p in zip(names, params)})]

    def run_jax(calls, step=step, jstate=jstate):
      s = jstate[0]
      for _ in range(calls):
        s, metrics = step(s, tasks)
      jax.block_until_ready((s, metrics))
      jstate[0] = s

    runners["metatts" if i == 0 else f"metatts-{task_map}"] = run_jax
  tdata = tuple(torch.tensor(a) for a in data)
  failed = {}
  for variant in variants:
    loss_t = torch_loss(w["kind"], names, fused=variant == "torch-fused")
    init, tstep, _ = torch_system(loss_t, algorithm, steps, variant)
    tstate = init(params)
    try:
      tstep(tstate, tdata)  # compiles torch.compile's graphs
    except Exception as e:  # pylint: disable=broad-except
      failed[variant] = f"{type(e).__name__}: {str(e)[:160]}"
      continue

    def run_torch(calls, tstep=tstep, tstate=tstate):
      for _ in range(calls):
        tstep(tstate, tdata)
    runners[variant] = run_torch
  calls = {}
  for name, run in runners.items():
    run(1)  # compile / warm up
    tick = time.perf_counter()
    run(1)
    calls[name] = max(1, int(target_seconds / max(time.perf_counter() - tick,
                                                  1e-6)))
  times = {name: [] for name in runners}
  for _ in range(repeats):
    for name, run in runners.items():
      tick = time.perf_counter()
      run(calls[name])
      times[name].append((time.perf_counter() - tick) / calls[name])
  out = {name: statistics.median(t) for name, t in times.items()}
  out.update({name: f"failed: {why}" for name, why in failed.items()})
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workloads", default=",".join(WORKLOADS))
  parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
  parser.add_argument("--inner_steps", default="1,5")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--atol", type=float, default=1e-4)
  parser.add_argument("--no-compile", action="store_true")
  parser.add_argument(
      "--compile_workloads", default="mlp-small,mlp-large,tts-decoder",
      help="workloads that also time torch-compile (comma-separated; 'all' "
      "for every one). The LSTM is left out by default: compiling its "
      "100-frame loop with create_graph had not finished after 8.5 min "
      "(session 14, docs/benchmarks.md).")
  parser.add_argument("--out", default="")
  parser.add_argument(
      "--task_maps", default="vmap",
      help="metatts layouts of a meta-batch's tasks to time side by side "
      "(comma-separated: vmap, map, or a chunk size); the first is the one "
      "compared with PyTorch.")
  args = parser.parse_args(argv)
  task_maps = tuple(args.task_maps.split(","))
  variants = ["torch-loop", "torch-func"] + (
      [] if args.no_compile else ["torch-compile"])
  print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} "
        f"cores; jax {jax.__version__} ({jax.default_backend()}), torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads)", flush=True)
  compiled = (set(WORKLOADS) if args.compile_workloads == "all"
              else set(args.compile_workloads.split(",")))
  records = []
  for workload in args.workloads.split(","):
    # The LSTM also runs as torch.nn.LSTM, PyTorch's own kernel.
    fused = ["torch-fused"] if WORKLOADS[workload]["kind"] == "lstm" else []
    checked = variants[:2] + fused
    timed_variants = [v for v in variants
                      if v != "torch-compile" or workload in compiled] + fused
    if "torch-compile" in variants and workload not in compiled:
      print(f"{workload}: torch-compile not timed (--compile_workloads)",
            flush=True)
    for algorithm in args.algorithms.split(","):
      for steps in (int(s) for s in args.inner_steps.split(",")):
        diffs = check(workload, algorithm, steps, checked, task_maps[0])
        bad = [v for v in checked
               if isinstance(diffs[v], str) or diffs[v] > args.atol]
        seconds = time_systems(workload, algorithm, steps, timed_variants,
                               args.repeats, task_maps=task_maps)
        timed = {k: v for k, v in seconds.items() if not isinstance(v, str)}
        best = min((k for k in timed if not k.startswith("metatts")),
                   key=timed.get, default=None)
        ours = min((k for k in timed if k.startswith("metatts")),
                   key=timed.get)
        ratio = timed[best] / timed["metatts"] if best else float("nan")
        ratio_best = timed[best] / timed[ours] if best else float("nan")
        record = {"workload": workload, "algorithm": algorithm,
                  "inner_steps": steps, "max_abs_diff": diffs,
                  "agree": not bad, "seconds": seconds,
                  "fastest_torch": best, "ratio": ratio,
                  "fastest_metatts": ours, "ratio_best_layout": ratio_best}
        records.append(record)
        cells = ", ".join(f"{k} {1e3 * v:.1f} ms" if not isinstance(v, str)
                          else f"{k} {v}" for k, v in seconds.items())
        print(f"{workload} {algorithm} x{steps}: {cells}; metatts/"
              f"{best} = {ratio:.2f}x ({ours}: {ratio_best:.2f}x); same "
              f"numbers: {'yes' if not bad else 'NO ' + str(diffs)}",
              flush=True)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(records, f, indent=1)
  if any(not r["agree"] for r in records):
    sys.exit("Some systems disagree with metatts (see 'same numbers').")


if __name__ == "__main__":
  main()
