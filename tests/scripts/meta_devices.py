"""Runs a few meta-steps on a 1-device and a 4-device mesh; prints max diffs.

Started by tests/test_meta_devices.py in a fresh process with
XLA_FLAGS=--xla_force_host_platform_device_count=4 (the flag must be set
before JAX starts, so it cannot run inside the pytest process).
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from metatts import meta
from metatts.types import Task


def loss_fn(params, batch):
  x, y = batch
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  pred = h @ params["w2"]
  return jnp.mean((pred - y) ** 2), {}


def make_problem(num_batches=3, num_tasks=8):
  """A small tanh-MLP regression problem: initial params and meta-batches."""
  rng = np.random.default_rng(0)
  params = {"w1": rng.normal(size=(2, 16)).astype(np.float32) * 0.5,
            "b1": np.zeros(16, np.float32),
            "w2": rng.normal(size=(16, 1)).astype(np.float32) * 0.5}
  batches = []
  for _ in range(num_batches):
    x = rng.normal(size=(num_tasks, 10, 2)).astype(np.float32)
    y = np.sin(x.sum(-1, keepdims=True))
    batches.append(Task(support=(x[:, :5], y[:, :5]), query=(x[:, 5:], y[:, 5:])))
  return params, batches


def main():
  assert jax.device_count() == 4, jax.devices()
  params, batches = make_problem()
  results = {}
  for name in ("maml", "reptile", "imaml", "metasgd"):
    finals = []
    for devices in (jax.devices()[:1], jax.devices()):
      learner = meta.get_learner(name, outer_optimizer=optax.adam(1e-2))
      step = meta.make_step(learner, loss_fn, mesh=meta.task_mesh(devices))
      state = learner.init(params)
      # Ahead-of-time lowering works on one device and on several (the
      # benchmarks call step.lower(...).compile()).
      # (An AttributeError on several devices before 2026-12-01.)
      step.lower(learner.init(params), batches[0]).compile().memory_analysis()
      for tasks in batches:
        state, metrics = step(state, tasks)
      if len(devices) == 4:
        shard_devices = {d.id for d in state.params["w1"].sharding.device_set}
        assert len(shard_devices) == 4, shard_devices
      finals.append(jax.device_get((state.params, metrics)))
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(
        jax.tree_util.tree_leaves(finals[0]), jax.tree_util.tree_leaves(finals[1])))
    scale = max(float(np.max(np.abs(a))) for a in jax.tree_util.tree_leaves(finals[0]))
    results[name] = {"max_abs_diff": diff, "scale": scale}
  # An indivisible meta-batch gets a clear error.
  learner = meta.maml()
  step = meta.make_step(learner, loss_fn)
  bad = jax.tree.map(lambda x: x[:6], batches[0])
  try:
    step(learner.init(params), bad)
    results["indivisible_error"] = None
  except ValueError as e:
    results["indivisible_error"] = str(e)
  print(json.dumps(results))


if __name__ == "__main__":
  sys.exit(main())
