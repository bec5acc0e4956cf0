"""One process of a 2-process meta-training run on localhost CPU.

Usage: meta_multihost.py PROCESS_ID PORT OUT_JSON. Each process owns 2 CPU
devices (XLA_FLAGS set by the caller) and feeds its half of every meta-batch;
process 0 writes the final parameters. Started by tests/test_meta_devices.py.
"""

import json
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")

import numpy as np  # noqa: E402
import optax  # noqa: E402

from metatts import meta  # noqa: E402
from meta_devices import loss_fn, make_problem  # noqa: E402  (same toy problem)


def run(process_id=None):
  params, tasks_list = make_problem()
  learner = meta.maml(outer_optimizer=optax.adam(1e-2))
  step = meta.make_step(learner, loss_fn)
  state = learner.init(params)
  for tasks in tasks_list:
    if process_id is not None:  # this process's half of the global meta-batch
      half = tasks.support[0].shape[0] // 2
      tasks = jax.tree.map(lambda x: x[process_id * half:(process_id + 1) * half], tasks)
    state, metrics = step(state, tasks)
  return state.params


def main():
  if sys.argv[1] == "single":
    params = run()
  else:
    pid, port = int(sys.argv[1]), int(sys.argv[2])
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                               num_processes=2, process_id=pid)
    assert jax.device_count() == 4 and jax.local_device_count() == 2
    params = run(pid)
    params = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), params)
    if pid != 0:
      return 0
  with open(sys.argv[-1], "w") as f:
    json.dump({k: np.asarray(v).tolist() for k, v in params.items()}, f)
  return 0


if __name__ == "__main__":
  sys.exit(main())
