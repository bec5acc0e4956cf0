r"""Meta-step throughput and compiled memory of the metatts.meta learners.

For every algorithm, number of inner steps (1, 5, 10, 20) and, where the
learner supports it, with and without rematerialization of the inner steps,
this script compiles one jitted meta-step (``metatts.meta.make_step``) and
reports

* meta-steps per second: the median over ``--repeats`` timed runs, each the
  mean of several calls, measured after compilation and one warm-up call;
* memory: XLA's ``compiled.memory_analysis()`` of the step, temp + argument +
  output bytes (the peak a CPU has no allocator statistics for), and the temp
  bytes alone (activations/tapes, what rematerialization trades for compute).

Models: the sinusoid MLP 1-40-40-1 (Finn et al. 2017) and a 32-1024-1024-1024-32
ReLU MLP (2.16 M parameters) on random regression tasks, N=4 tasks of K=10
support and 10 query points per meta-batch.

Usage:

  python benchmarks/meta_step.py --out runs/bench/meta_step.json \
      [--models sinusoid,large] [--algorithms maml,reptile] \
      [--inner_steps 1,5,10,20] [--repeats 5] [--markdown]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Dict, List

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from metatts import meta  # pylint: disable=g-import-not-at-top
from metatts.data import sinusoid as sinusoid_data  # pylint: disable=g-import-not-at-top
from metatts.experiments import sinusoid as sinusoid_exp  # pylint: disable=g-import-not-at-top
from metatts.types import Task  # pylint: disable=g-import-not-at-top

MODELS = {
    "sinusoid": (1, 40, 40, 1),
    "large": (32, 1024, 1024, 1024, 32),
}
ALGORITHMS = ("maml", "fomaml", "metasgd", "reptile", "imaml", "pretrain")
NUM_TASKS, NUM_SUPPORT, NUM_QUERY = 4, 10, 10


def make_tasks(model: str, key: jax.Array) -> Task:
  """A meta-batch for ``model``: sinusoids, or random linear-tanh tasks."""
  if model == "sinusoid":
    tasks, _ = sinusoid_data.sample_tasks(key, NUM_TASKS, NUM_SUPPORT,
                                          NUM_QUERY)
    return tasks
  d_in, d_out = MODELS[model][0], MODELS[model][-1]
  k_w, k_x = jax.random.split(key)
  w = jax.random.normal(k_w, (NUM_TASKS, d_in, d_out)) / jnp.sqrt(d_in)
  x = jax.random.normal(k_x, (NUM_TASKS, NUM_SUPPORT + NUM_QUERY, d_in))
  y = jnp.tanh(jnp.einsum("npi,nio->npo", x, w))
  return Task(support=(x[:, :NUM_SUPPORT], y[:, :NUM_SUPPORT]),
              query=(x[:, NUM_SUPPORT:], y[:, NUM_SUPPORT:]))


def make_learner(algorithm: str, inner_steps: int, remat: bool):
  """Builds a learner; ``None`` if it has no ``remat`` option but one is asked."""
  if algorithm == "pretrain":
    return None if remat else meta.pretrain(optax.adam(1e-3))
  builder = meta.LEARNERS[algorithm]
  kwargs = dict(inner_lr=0.01, outer_optimizer=optax.adam(1e-3),
                num_inner_steps=inner_steps)
  if remat:
    if "remat" not in inspect.signature(meta.maml).parameters or (
        algorithm not in ("maml", "fomaml", "metasgd")):
      return None
    kwargs["remat"] = True
  return builder(**kwargs)


def measure(learner, params, tasks, repeats: int,
            target_seconds: float = 0.3) -> Dict[str, Any]:
  """Compiles and times one meta-step; returns throughput and memory."""
  step = meta.make_step(learner, sinusoid_exp.mse_loss)
  state = learner.init(params)
  start = time.perf_counter()
  compiled = step.lower(state, tasks).compile()
  compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  state, metrics = compiled(state, tasks)  # warm-up
  jax.block_until_ready((state, metrics))
  start = time.perf_counter()
  state, metrics = compiled(state, tasks)
  jax.block_until_ready((state, metrics))
  calls = max(1, int(target_seconds / max(time.perf_counter() - start, 1e-6)))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls):
      state, metrics = compiled(state, tasks)
    jax.block_until_ready((state, metrics))
    times.append((time.perf_counter() - start) / calls)
  seconds = statistics.median(times)
  out = {"steps_per_sec": 1.0 / seconds, "ms_per_step": 1e3 * seconds,
         "compile_s": compile_s, "calls_per_repeat": calls}
  if mem is not None:
    out["temp_bytes"] = int(mem.temp_size_in_bytes)
    out["peak_bytes"] = int(mem.temp_size_in_bytes + mem.argument_size_in_bytes
                            + mem.output_size_in_bytes)
  return out


def run(models: List[str], algorithms: List[str], inner_steps: List[int],
        repeats: int) -> List[Dict[str, Any]]:
  """Measures every combination; returns one record per measurement."""
  records = []
  for model in models:
    params = sinusoid_exp.mlp_init(jax.random.PRNGKey(0), MODELS[model])
    num_params = sum(x.size for x in jax.tree.leaves(params))
    tasks = make_tasks(model, jax.random.PRNGKey(1))
    for algorithm in algorithms:
      for n in (inner_steps if algorithm != "pretrain" else [0]):
        for remat in (False, True):
          learner = make_learner(algorithm, max(n, 1), remat)
          if learner is None:
            continue
          record = {"model": model, "num_params": int(num_params),
                    "algorithm": algorithm, "inner_steps": n, "remat": remat}
          record.update(measure(learner, params, tasks, repeats))
          records.append(record)
          print(json.dumps(record), flush=True)
  return records


def _size(num_bytes: int) -> str:
  if num_bytes >= 2**20:
    return f"{num_bytes / 2**20:.1f} MiB"
  return f"{num_bytes / 2**10:.0f} KiB"


def markdown(records: List[Dict[str, Any]]) -> str:
  """Tables: one row per (algorithm, remat), one column per inner-step count."""
  lines = []
  for model in dict.fromkeys(r["model"] for r in records):
    rows = [r for r in records if r["model"] == model]
    steps = sorted({r["inner_steps"] for r in rows if r["inner_steps"] > 0})
    lines.append(f"\n**{model} MLP {MODELS[model]} "
                 f"({rows[0]['num_params']:,} parameters)**: meta-steps/s, "
                 "compiled peak memory (temp part)\n")
    lines.append("| algorithm | remat | " + " | ".join(
        f"{n} inner" for n in steps) + " |")
    lines.append("|---|---|" + "---|" * len(steps))
    for key in dict.fromkeys((r["algorithm"], r["remat"]) for r in rows):
      cells = []
      for n in steps:
        match = [r for r in rows if (r["algorithm"], r["remat"]) == key and (
            r["inner_steps"] in (n, 0))]
        if not match:
          cells.append("n/a")
          continue
        r = match[0]
        if r["inner_steps"] == 0 and n != steps[0]:
          cells.append("–")
          continue
        cells.append(f"{r['steps_per_sec']:.4g}/s, {_size(r['peak_bytes'])} "
                     f"({_size(r['temp_bytes'])})")
        if r["inner_steps"] == 0:
          cells[-1] += " (no inner loop)"
      lines.append(f"| {key[0]} | {'yes' if key[1] else 'no'} | " +
                   " | ".join(cells) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="sinusoid,large")
  parser.add_argument("--algorithms", default=",".join(ALGORITHMS))
  parser.add_argument("--inner_steps", default="1,5,10,20")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default="runs/bench/meta_step.json")
  parser.add_argument("--markdown", action="store_true",
                      help="print markdown tables at the end")
  args = parser.parse_args()
  models = args.models.split(",")
  algorithms = args.algorithms.split(",")
  for name, allowed in (("model", MODELS), ("algorithm", ALGORITHMS)):
    for value in (models if name == "model" else algorithms):
      if value not in allowed:
        parser.error(f"unknown {name} {value!r}; choose from {sorted(allowed)}")
  inner_steps = [int(n) for n in args.inner_steps.split(",")]
  records = run(models, algorithms, inner_steps, args.repeats)
  machine = {"platform": platform.platform(), "processor": platform.machine(),
             "cpu_count": os.cpu_count(), "jax": jax.__version__,
             "backend": jax.default_backend(),
             "devices": [str(d) for d in jax.devices()]}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"machine": machine, "records": records}, f, indent=1)
  print(f"Wrote {args.out}")
  if args.markdown:
    print(markdown(records))


if __name__ == "__main__":
  main()
