r"""The inner loop as a rolled ``lax.scan`` vs unrolled, on the CPU backend.

``metatts.meta.inner.inner_loop`` runs its steps with ``lax.scan``. On XLA's
CPU backend a training step inside a scan (an XLA while loop) runs much
slower than the same step outside one, so ``unroll=None`` (the default)
unrolls loops of up to ``MAX_CPU_UNROLL`` steps on CPU. This measures both
ways on the test-time adaptation of each acoustic model
(``metatts.meta.adapt``: SGD lr 0.01 on the ``speaker+decoder`` filter, as
the quickstart's protocol) and on one FOMAML meta-step (``metatts.meta``
with 5 inner steps, 2 tasks) of the duration Tacotron:

* models: ``build_model(name, {"size": "tiny", ...})`` with the quickstart's
  sizes (80 mel bins, 85 speakers, ``duration_tacotron`` on 64 phoneme-like
  symbols, ``tacotron`` with ``reduction_factor`` 4), untrained (seed 0):
  speed does not depend on the weights;
* batch: 5 clips of 60 tokens and 256 frames (the quickstart's bucket) of
  random tokens and log-mel-like values, full lengths;
* per configuration: compile time (``lower`` + ``compile``), then
  ``--rounds`` interleaved rounds (every configuration once per round, so all
  see the same load) of one call each; the median seconds per call and per
  inner step.

Usage (2-core CPU, about 4 min)::

  .venv/bin/python benchmarks/inner_loop_unroll.py [--rounds 5] \
      [--steps 1,5,10] [--out runs/bench/inner_loop_unroll.json]

Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metatts import functional, meta, models
from metatts.types import Task, TTSBatch

MODELS = {
    "duration_tacotron": {"size": "tiny", "max_frames": 400},
    "tacotron": {"size": "tiny", "reduction_factor": 4, "max_frames": 400},
}


def make_batch(num_clips, tokens, frames, num_mels, num_symbols, seed):
  rng = np.random.default_rng(seed)
  return TTSBatch(
      tokens=jnp.asarray(rng.integers(1, num_symbols, (num_clips, tokens)),
                         jnp.int32),
      token_lengths=jnp.full((num_clips,), tokens, jnp.int32),
      mels=jnp.asarray(rng.normal(-5.0, 2.0, (num_clips, frames, num_mels)),
                       jnp.float32),
      mel_lengths=jnp.full((num_clips,), frames, jnp.int32),
      speaker_ids=jnp.full((num_clips,), 84, jnp.int32),
      seeds=None)


def build(name):
  cfg = dict(MODELS[name], num_symbols=64, num_mels=80, num_speakers=85)
  model = models.build_model(name, cfg, 0)
  graphdef, params, rest = functional.split(model)
  return params, functional.make_loss_fn(graphdef, rest)


def adapt_fn(loss_fn, num_steps, unroll):
  def fn(params, batch):
    return meta.adapt(params, batch, loss_fn,
                      inner_optimizer=optax.sgd(0.01), num_steps=num_steps,
                      filter=functional.filter_for("speaker+decoder"),
                      unroll=unroll)
  return jax.jit(fn)


def fomaml_fn(loss_fn, params, num_steps, unroll):
  learner = meta.fomaml(outer_optimizer=optax.adam(1e-3), inner_lr=0.01,
                        num_inner_steps=num_steps,
                        filter=functional.filter_for("speaker+decoder"),
                        unroll=unroll)
  state = learner.init(params)

  def fn(state, tasks):
    return learner.step(state, tasks, loss_fn)
  return jax.jit(fn), state


def timed(fn, *args):
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - t0


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", default="1,5,10")
  parser.add_argument("--out", default="runs/bench/inner_loop_unroll.json")
  args = parser.parse_args()
  steps = [int(s) for s in args.steps.split(",")]
  batch = make_batch(5, 60, 256, 80, 64, 0)
  cases = {}
  for name in MODELS:
    params, loss_fn = build(name)
    for n in steps:
      for unroll in (False, True):
        fn = adapt_fn(loss_fn, n, unroll)
        t0 = time.perf_counter()
        compiled = fn.lower(params, batch).compile()
        cases[(f"adapt {name}", n, unroll)] = dict(
            compile_s=time.perf_counter() - t0, call=compiled,
            args=(params, batch), times=[])
  params, loss_fn = build("duration_tacotron")
  half = jax.tree_util.tree_map(lambda x: x[:3], batch)
  tasks = Task(support=jax.tree_util.tree_map(lambda *x: jnp.stack(x),
                                              half, half),
               query=jax.tree_util.tree_map(lambda *x: jnp.stack(x),
                                            half, half))
  for unroll in (False, True):
    fn, state = fomaml_fn(loss_fn, params, 5, unroll)
    t0 = time.perf_counter()
    compiled = fn.lower(state, tasks).compile()
    cases[("fomaml step duration_tacotron (2 tasks, K=Q=3)", 5, unroll)] = dict(
        compile_s=time.perf_counter() - t0, call=compiled,
        args=(state, tasks), times=[])
  for case in cases.values():  # warm-up
    timed(case["call"], *case["args"])
  for _ in range(args.rounds):
    for case in cases.values():
      case["times"].append(timed(case["call"], *case["args"]))
  rows = []
  print(f"backend {jax.default_backend()}, {jax.device_count()} device(s), "
        f"{os.cpu_count()} CPUs, median of {args.rounds} interleaved rounds\n")
  print("| workload | inner steps | scan: compile s | scan: s per call | "
        "unrolled: compile s | unrolled: s per call | speed-up |")
  print("|---|---|---|---|---|---|---|")
  for (what, n, unroll), case in cases.items():
    case["median_s"] = statistics.median(case["times"])
    rows.append(dict(workload=what, steps=n, unroll=unroll,
                     compile_s=case["compile_s"], median_s=case["median_s"],
                     times=case["times"]))
    if unroll:
      rolled = cases[(what, n, False)]
      print(f"| {what} | {n} | {rolled['compile_s']:.1f} | "
            f"{rolled['median_s']:.3f} | {case['compile_s']:.1f} | "
            f"{case['median_s']:.3f} | "
            f"{rolled['median_s'] / case['median_s']:.1f}x |")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"rows": rows, "backend": jax.default_backend(),
               "rounds": args.rounds}, f, indent=1)


if __name__ == "__main__":
  main()
