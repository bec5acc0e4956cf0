r"""Seconds per meta-step of the base study's meta-learners, at its real size.

The base study (``experiments/configs/base.py``) meta-trains the duration
Tacotron from transfer's step-2000 export on its corpus (``synth-base``,
built and cached by the study), N=2 tasks of K=Q=4 clips, 80 tokens x 256
frames, the ``speaker+decoder`` filter and 5 inner SGD steps of lr 0.01.
This builds exactly that step for each ``LEARNER:LOOP[:TASKS]`` argument
(``LEARNER``: ``maml``, ``fomaml``, ``reptile``, optionally ``@STEPS`` for
another number of inner steps than the study's; ``LOOP``: ``rolled`` or
``unrolled``, ``metatts.meta.inner.resolve_unroll``; ``TASKS``: ``vmap``,
the default, or ``map``, ``metatts.meta.base.task_mean``; an optional fourth
field ``dot`` compiles it with ``metatts.meta.parallel.CPU_DOT_FUSIONS_ONLY``),
runs it on the study's
first task batches and prints the first call (compile + run) and the
following calls' seconds, one XLA thread (the study's training workers run
that way). Speed does not depend on the weights, so the model is the
untrained initialization.

Usage (needs the study's corpus: run the study once, or let this build it)::

  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
      .venv/bin/python benchmarks/study_meta_step.py maml:rolled fomaml:unrolled

Results: docs/benchmarks.md, "The base study's meta-steps".
"""

import importlib.util
import os
import sys
import time

import jax
import optax

from metatts import functional
from metatts import meta
from metatts.experiments import data as data_lib
from metatts.experiments import tts
from metatts.training import loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def study_config():
  spec = importlib.util.spec_from_file_location(
      "base", os.path.join(REPO, "experiments", "configs", "base.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("study")


def main(argv):
  cases = [a.split(":") for a in argv[1:]] or [["fomaml", "unrolled"],
                                               ["maml", "rolled"]]
  c = study_config()
  data = tts.prepare_data(c, progress=False)
  ctx = tts.context(c, data, os.path.join("/tmp", "study_meta_step"))
  loss_fn = functional.make_loss_fn(ctx.graphdef, ctx.rest)
  tasks = data_lib.task_factory(data, c, 0)(loop._data_key(int(c.seed)), 0)  # pylint: disable=protected-access
  batches = [next(tasks) for _ in range(4)]
  pred = functional.filter_for(c.train.filter)
  for case in cases:
    name, how, task_map, fusions = (case + ["vmap", ""][len(case) - 2:])[:4]
    name, _, at = name.partition("@")  # maml@1: 1 inner step
    steps = int(at) if at else int(c.train.inner_steps.get(name, 1))
    kw = dict(inner_lr=float(c.train.inner_lr), num_inner_steps=steps,
              filter=pred, unroll=how == "unrolled", task_map=task_map)
    if name == "reptile":
      learner = meta.reptile(outer_optimizer=optax.adam(3e-4), **kw)
    else:
      learner = meta.get_learner(name, outer_optimizer=optax.adam(3e-4),
                                 extra_metrics=False, **kw)
    step = meta.make_step(
        learner, loss_fn, donate=False,
        compiler_options=(meta.parallel.CPU_DOT_FUSIONS_ONLY
                          if fusions == "dot" else None))
    state = learner.init(ctx.params0)
    tick = time.perf_counter()
    state, metrics = step(state, batches[0])
    jax.block_until_ready(metrics)
    first = time.perf_counter() - tick
    times = []
    for b in batches[1:]:
      tick = time.perf_counter()
      state, metrics = step(state, b)
      jax.block_until_ready(metrics)
      times.append(time.perf_counter() - tick)
    print(f"{name} ({steps} inner steps, {how}, tasks {task_map}"
          f"{', YNNPACK dot fusions only' if fusions == 'dot' else ''}): "
          f"first call {first:.1f} s, "
          f"then {', '.join(f'{t:.2f}' for t in times)} s per meta-step",
          flush=True)


if __name__ == "__main__":
  main(sys.argv)
