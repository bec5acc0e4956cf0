"""Tests of the sinusoid task generator, model and experiment run()."""

import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metatts import experiments
from metatts.data import sinusoid as sinusoid_data
from metatts.experiments import sinusoid as sinusoid_exp
from metatts.types import Task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(arg):
  spec = importlib.util.spec_from_file_location(
      "sinusoid_config", os.path.join(ROOT, "experiments", "configs",
                                      "sinusoid.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_tasks_shapes_ranges_and_targets():
  tasks, hidden = sinusoid_data.sample_tasks(jax.random.PRNGKey(1), 7, 10, 3)
  assert isinstance(tasks, Task)
  (xs, ys), (xq, yq) = tasks.support, tasks.query
  assert xs.shape == ys.shape == (7, 10, 1)
  assert xq.shape == yq.shape == (7, 3, 1)
  amp, phase = np.asarray(hidden.amplitude), np.asarray(hidden.phase)
  assert np.all((amp >= 0.1) & (amp <= 5.0))
  assert np.all((phase >= 0.0) & (phase <= np.pi))
  for x, y in ((xs, ys), (xq, yq)):
    x, y = np.asarray(x, np.float64), np.asarray(y)
    assert np.all((x >= -5.0) & (x <= 5.0))
    # Independent reference: numpy float64 sine with each task's parameters.
    ref = amp[:, None, None] * np.sin(x - phase[:, None, None])
    np.testing.assert_allclose(y, ref, atol=2e-5)
  assert not np.allclose(np.asarray(xs[:, :3]), np.asarray(xq))


def test_task_distribution_moments():
  _, hidden = sinusoid_data.sample_tasks(jax.random.PRNGKey(2), 20000, 1, 1)
  amp, phase = np.asarray(hidden.amplitude), np.asarray(hidden.phase)
  # U[a, b]: mean (a + b) / 2, std (b - a) / sqrt(12).
  assert amp.mean() == pytest.approx(2.55, abs=0.03)
  assert amp.std() == pytest.approx(4.9 / np.sqrt(12), abs=0.03)
  assert phase.mean() == pytest.approx(np.pi / 2, abs=0.03)


def test_tasks_deterministic_and_iterator_restartable():
  key = jax.random.PRNGKey(5)
  a, _ = sinusoid_data.sample_tasks(key, 3)
  b, _ = sinusoid_data.sample_tasks(key, 3)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  full = sinusoid_data.task_iterator(key, 0, 3, 4, 2)
  stream = [next(full) for _ in range(5)]
  restarted = sinusoid_data.task_iterator(key, 3, 3, 4, 2)
  for expected in stream[3:]:
    jax.tree.map(np.testing.assert_array_equal, next(restarted), expected)
  assert not np.array_equal(np.asarray(stream[0].support[0]),
                            np.asarray(stream[1].support[0]))


def test_bad_task_counts_raise():
  with pytest.raises(ValueError, match="num_support=0"):
    sinusoid_data.sample_tasks(jax.random.PRNGKey(0), 2, num_support=0)


def test_mlp_matches_numpy_reference():
  sizes = (1, 40, 40, 1)
  params = sinusoid_exp.mlp_init(jax.random.PRNGKey(0), sizes)
  assert {k: v.shape for k, v in params.items()} == {
      "w0": (1, 40), "b0": (40,), "w1": (40, 40), "b1": (40,),
      "w2": (40, 1), "b2": (1,)}
  # Finn et al.'s small initialization: std 0.01 truncated at 2 std.
  w1 = np.asarray(params["w1"])
  assert np.abs(w1).max() <= 0.02 + 1e-7 and 0.006 < w1.std() < 0.011
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(
      jax.random.PRNGKey(9), p.shape), params)
  x = np.linspace(-5, 5, 11, dtype=np.float32)[:, None]
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  h = np.maximum(x @ p["w0"] + p["b0"], 0)
  h = np.maximum(h @ p["w1"] + p["b1"], 0)
  ref = h @ p["w2"] + p["b2"]
  np.testing.assert_allclose(sinusoid_exp.mlp_apply(params, x), ref,
                             rtol=1e-4, atol=1e-4)
  y = np.sin(x)
  loss, aux = sinusoid_exp.mse_loss(params, (x, y))
  assert aux == {}
  assert float(loss) == pytest.approx(np.mean((ref - y) ** 2), rel=1e-4)


@pytest.mark.parametrize("method", ["maml", "fomaml", "reptile", "metasgd",
                                    "imaml", "pretrain"])
def test_config_builds_every_method(method):
  config = load_config(f"{method},smoke")
  assert config.method == method and config.num_steps == 20
  assert config.inner_lr == 0.01 and config.num_support == 10
  assert tuple(config.layer_sizes) == (1, 40, 40, 1)
  learner = sinusoid_exp.make_learner(config)
  assert callable(learner.step) and callable(learner.adapt)
  quick = load_config(method)
  assert quick.size == "quick" and quick.num_steps > config.num_steps


def test_bad_config_argument_and_method():
  with pytest.raises(ValueError, match="METHOD"):
    load_config("maml,huge")
  with pytest.raises(ValueError, match="METHOD"):
    load_config("protonet")
  config = load_config("maml,smoke")
  config.method = "protonet"
  with pytest.raises(ValueError, match="reptile"):
    sinusoid_exp.make_learner(config)
  config.experiment = "nope"
  with pytest.raises(ValueError, match="sinusoid"):
    experiments.run(config, "/nonexistent")


def test_evaluator_zero_steps_is_plain_mse_and_steps_follow_sgd():
  config = load_config("maml,smoke")
  learner = sinusoid_exp.make_learner(config)
  params = sinusoid_exp.mlp_init(jax.random.PRNGKey(3), (1, 40, 40, 1))
  state = learner.init(params)
  tasks, _ = sinusoid_exp.held_out_tasks(config, 4)
  mse, _ = sinusoid_exp.make_evaluator(learner, (0, 1))(state, tasks)
  for t in range(4):
    support = jax.tree.map(lambda a, t=t: a[t], tasks.support)
    query = jax.tree.map(lambda a, t=t: a[t], tasks.query)
    before = sinusoid_exp.mse_loss(params, query)[0]
    np.testing.assert_allclose(mse[0][t], before, rtol=1e-6)
    # One SGD step with lr 0.01, written out by hand.
    grads = jax.grad(lambda p: sinusoid_exp.mse_loss(p, support)[0])(params)
    stepped = jax.tree.map(lambda p, g: p - 0.01 * g, params, grads)
    np.testing.assert_allclose(
        mse[1][t], sinusoid_exp.mse_loss(stepped, query)[0], rtol=1e-5)


@pytest.mark.slow
def test_notebook_runs_headless(tmp_path):
  """What a notebook does: notebooks/sinusoid.ipynb, executed by nbclient in
  a fresh folder, builds the config, calls run() and shows the results. No
  error cell and nothing Colab-only runs; its printed MSEs are results.json's;
  the figures display (the library's plot does not switch the notebook's
  matplotlib backend); its outputs land under the working directory with the
  user's umask. (This replaced an in-process run() of the same config: the
  notebook makes the same call.)"""
  from notebook_runner import modes, run_notebook  # pylint: disable=g-import-not-at-top
  done = run_notebook("sinusoid.ipynb", tmp_path, umask=0o027)
  print(f"sinusoid.ipynb executed in {done.seconds:.1f} s")
  assert not done.outputs("error")
  workdir = tmp_path / "runs" / "notebook_sinusoid"
  with open(workdir / "results.json") as f:
    result = json.load(f)
  assert result["method"] == "maml" and result["num_steps"] == 20
  assert result["num_skipped"] == 0 and result["resumed_from"] is None
  assert set(result["mse"]) == {"0", "1", "10"}
  assert all(np.isfinite(v) for v in result["mse"].values())
  assert os.path.getsize(workdir / "adaptation.png") > 1000
  for steps in ("0", "1", "10"):
    line = (f"query MSE after {steps:>2} adaptation steps: "
            f"{result['mse'][steps]:.3f} ± {result['mse_ci95'][steps]:.3f}")
    assert line in done.text, done.text[-2000:]
  assert done.count("image/png") == 2  # the curves and the library's plot
  assert sorted(os.listdir(tmp_path)) == ["runs"]
  found = modes(tmp_path)
  assert found["runs/notebook_sinusoid"] == 0o750
  for name in ("results.json", "adaptation.png", "metrics.json"):
    assert found[f"runs/notebook_sinusoid/{name}"] == 0o640, name
  loose = {p: m for p, m in found.items() if m & 0o007}
  assert not loose, loose  # nothing for "other" under umask 027
