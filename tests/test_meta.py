"""metatts.meta against closed forms, finite differences and hand computation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from metatts import meta
from metatts.types import Task

D = 3  # features of the linear-regression toy
N, K, Q = 4, 6, 5


def linreg_loss(params, batch):
  x, y = batch
  pred = x @ params["w"] + params["b"]
  return 0.5 * jnp.mean(jnp.sum((pred - y) ** 2, axis=-1)), {"pred": pred}


def make_tasks(seed=0, n=N):
  rng = np.random.default_rng(seed)
  xs = rng.normal(size=(n, K, D)).astype(np.float32)
  xq = rng.normal(size=(n, Q, D)).astype(np.float32)
  w_true = rng.normal(size=(n, D, 1)).astype(np.float32)
  ys = np.einsum("nkd,ndo->nko", xs, w_true) + 0.1
  yq = np.einsum("nkd,ndo->nko", xq, w_true) + 0.1
  return Task(support=(xs, ys), query=(xq, yq))


def init_params(seed=1):
  rng = np.random.default_rng(seed)
  return {"w": rng.normal(size=(D, 1)).astype(np.float32),
          "b": np.zeros((1,), np.float32)}


def meta_gradient(learner, params, tasks, loss_fn=linreg_loss):
  """Meta-gradient read off one step of an sgd(1.0) outer optimizer."""
  state = learner.init(params)
  new, metrics = jax.jit(learner.step, static_argnums=2)(state, tasks, loss_fn)
  return jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b),
                      state.params, new.params), metrics


# ---------------------------------------------------------------- numpy refs


def np_design(x):
  """Augments x with a column of ones so that [w; b] is one vector."""
  return np.concatenate([x, np.ones(x.shape[:-1] + (1,))], axis=-1).astype(np.float64)


def np_task_quantities(tasks, i):
  xs, ys = (np.asarray(a[i], np.float64) for a in tasks.support)
  xq, yq = (np.asarray(a[i], np.float64) for a in tasks.query)
  xs, xq = np_design(xs), np_design(xq)
  a_s, b_s = xs.T @ xs / len(xs), xs.T @ ys / len(xs)
  a_q, b_q = xq.T @ xq / len(xq), xq.T @ yq / len(xq)
  return a_s, b_s, a_q, b_q


def np_theta(params):
  return np.concatenate([params["w"], params["b"][:, None]], axis=0).astype(np.float64)


def np_split(g):
  return {"w": g[:D], "b": g[D:, 0]}


def np_maml_grad(params, tasks, alpha, steps, first_order):
  """Closed form: g = [(I - αA_s)^k]^T (A_q φ_k - b_q) (second order)."""
  theta = np_theta(params)
  total = np.zeros_like(theta)
  for i in range(len(tasks.support[0])):
    a_s, b_s, a_q, b_q = np_task_quantities(tasks, i)
    phi = theta.copy()
    for _ in range(steps):
      phi = phi - alpha * (a_s @ phi - b_s)
    gq = a_q @ phi - b_q
    if first_order:
      total += gq
    else:
      jac = np.linalg.matrix_power(np.eye(D + 1) - alpha * a_s, steps)
      total += jac.T @ gq
  return np_split(total / len(tasks.support[0]))


def np_meta_objective(theta, tasks, alpha, steps):
  total = 0.0
  for i in range(len(tasks.support[0])):
    a_s, b_s, a_q, b_q = np_task_quantities(tasks, i)
    xq, yq = (np.asarray(a[i], np.float64) for a in tasks.query)
    phi = theta.copy()
    for _ in range(steps):
      phi = phi - alpha * (a_s @ phi - b_s)
    r = np_design(xq) @ phi - yq
    total += 0.5 * np.mean(np.sum(r ** 2, axis=-1))
  return total / len(tasks.support[0])


def assert_tree_close(a, b, rtol=1e-4, atol=1e-5):
  for k in a:
    np.testing.assert_allclose(np.asarray(a[k]).ravel(), np.asarray(b[k]).ravel(),
                               rtol=rtol, atol=atol, err_msg=k)


# ---------------------------------------------------------------- MAML


@pytest.mark.parametrize("steps", [1, 3])
def test_maml_matches_closed_form_and_finite_differences(steps):
  tasks, params, alpha = make_tasks(), init_params(), 0.1
  learner = meta.maml(alpha, optax.sgd(1.0), steps)
  grad, _ = meta_gradient(learner, params, tasks)
  assert_tree_close(grad, np_maml_grad(params, tasks, alpha, steps, False))
  # Central finite differences of the numpy meta-objective.
  theta, eps = np_theta(params), 1e-5
  fd = np.zeros_like(theta)
  for j in range(theta.size):
    e = np.zeros_like(theta)
    e.flat[j] = eps
    fd.flat[j] = (np_meta_objective(theta + e, tasks, alpha, steps)
                  - np_meta_objective(theta - e, tasks, alpha, steps)) / (2 * eps)
  assert_tree_close(grad, np_split(fd), rtol=1e-3, atol=1e-4)


def test_fomaml_drops_the_hessian_term_and_differs_from_maml():
  tasks, params, alpha = make_tasks(), init_params(), 0.3
  g_fo, _ = meta_gradient(meta.fomaml(alpha, optax.sgd(1.0), 2), params, tasks)
  g_so, _ = meta_gradient(meta.maml(alpha, optax.sgd(1.0), 2), params, tasks)
  assert_tree_close(g_fo, np_maml_grad(params, tasks, alpha, 2, True))
  diff = np.linalg.norm(g_fo["w"] - g_so["w"])
  assert diff > 0.05 * np.linalg.norm(g_so["w"]), diff


def test_second_order_through_adam_inner_optimizer_matches_finite_differences():
  tasks, params = make_tasks(n=2), init_params()
  inner = optax.adam(0.05)

  def objective(p, tasks):
    def per_task(s, q):
      adapted, _ = meta.adapt(p, s, linreg_loss, inner_optimizer=inner, num_steps=3)
      return linreg_loss(adapted, q)[0]
    return jnp.mean(jax.vmap(per_task)(tasks.support, tasks.query))

  learner = meta.maml(outer_optimizer=optax.sgd(1.0), num_inner_steps=3,
                      inner_optimizer=inner)
  grad, _ = meta_gradient(learner, params, tasks)
  with jax.enable_x64(True):
    f64 = jax.jit(objective)
    p64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
    t64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tasks)
    eps = 1e-6
    for key in p64:
      fd = np.zeros(p64[key].size)
      for j in range(p64[key].size):
        e = jnp.zeros(p64[key].size).at[j].set(eps).reshape(p64[key].shape)
        plus = dict(p64, **{key: p64[key] + e})
        minus = dict(p64, **{key: p64[key] - e})
        fd[j] = (float(f64(plus, t64)) - float(f64(minus, t64))) / (2 * eps)
      np.testing.assert_allclose(grad[key].ravel(), fd, rtol=2e-3, atol=2e-4, err_msg=key)


def test_metasgd_learning_rate_gradient_closed_form():
  tasks, params, alpha = make_tasks(), init_params(), 0.1
  learner = meta.metasgd(alpha, optax.sgd(1.0), 1)
  state = learner.init(params)
  new, _ = jax.jit(learner.step, static_argnums=2)(state, tasks, linreg_loss)
  # dL_q/dα = -g_s ⊙ ∇L_q(φ), φ = θ - α ⊙ g_s, for each parameter entry.
  theta = np_theta(params)
  total = np.zeros_like(theta)
  for i in range(N):
    a_s, b_s, a_q, b_q = np_task_quantities(tasks, i)
    g_s = a_s @ theta - b_s
    phi = theta - alpha * g_s
    total += -g_s * (a_q @ phi - b_q)
  expected = np_split(total / N)
  # extra holds one rate array per adapted leaf, in flatten order (b, w).
  leaves = jax.tree_util.tree_leaves(params)
  names = ["b", "w"]
  assert [np.shape(l) for l in leaves] == [(1,), (D, 1)]
  for name, old, nw in zip(names, state.extra, new.extra):
    np.testing.assert_allclose(np.asarray(old) - np.asarray(nw), expected[name].reshape(np.shape(old)),
                               rtol=1e-4, atol=1e-5)


def test_maml_plus_plus_options_run_and_anneal():
  from metatts.meta.maml import _msl_weights
  w0 = np.asarray(_msl_weights(jnp.int32(0), 4, 10))
  w_mid = np.asarray(_msl_weights(jnp.int32(5), 4, 10))
  w_end = np.asarray(_msl_weights(jnp.int32(20), 4, 10))
  np.testing.assert_allclose(w0, [0.25] * 4)
  np.testing.assert_allclose(w_end, [0, 0, 0, 1])
  np.testing.assert_allclose(w_mid.sum(), 1.0, rtol=1e-6)
  assert w_mid[-1] > 0.25 and w_mid[0] < 0.25
  learner = meta.maml(0.1, optax.adam(1e-2), 3, multi_step_loss=True,
                      learn_inner_lr="per_step_per_layer", first_order_steps=2)
  state = learner.init(init_params())
  assert [np.shape(x) for x in state.extra] == [(3,), (3,)]
  step = jax.jit(learner.step, static_argnums=2)
  tasks = make_tasks()
  for _ in range(4):
    state, metrics = step(state, tasks, linreg_loss)
  assert np.isfinite(float(metrics["loss"]))
  assert not np.allclose(np.asarray(state.extra[0]), 0.1)  # rates were learned
  # Multi-step loss at step 0 = mean of the query losses after each inner step.
  learner = meta.maml(0.1, optax.sgd(1.0), 2, multi_step_loss=True)
  grad, _ = meta_gradient(learner, init_params(), tasks)
  g1 = np_maml_grad(init_params(), tasks, 0.1, 1, False)
  g2 = np_maml_grad(init_params(), tasks, 0.1, 2, False)
  assert_tree_close(grad, {k: 0.5 * (g1[k] + g2[k]) for k in g1})


# ---------------------------------------------------------------- Reptile


def test_reptile_update_is_theta_plus_eps_times_phi_minus_theta():
  tasks, params, alpha, eps, steps = make_tasks(), init_params(), 0.1, 0.5, 3
  learner = meta.reptile(alpha, optax.sgd(eps), steps)
  state = learner.init(params)
  new, _ = jax.jit(learner.step, static_argnums=2)(state, tasks, linreg_loss)
  theta = np_theta(params)
  phis = []
  for i in range(N):
    a_s, b_s, _, _ = np_task_quantities(tasks, i)
    phi = theta.copy()
    for _ in range(steps):
      phi = phi - alpha * (a_s @ phi - b_s)
    phis.append(phi)
  expected = np_split(theta + eps * (np.mean(phis, axis=0) - theta))
  assert_tree_close(new.params, expected)


# ---------------------------------------------------------------- anchor term


def np_query_grad_at_theta(params, tasks):
  """Closed form of mean_tasks ∇L_query(θ) for the linear-regression toy."""
  theta = np_theta(params)
  total = sum(a_q @ theta - b_q for _, _, a_q, b_q in
              (np_task_quantities(tasks, i) for i in range(N)))
  return total / N


@pytest.mark.parametrize("first_order", [False, True])
def test_anchor_adds_lambda_times_the_unadapted_query_gradient(first_order):
  tasks, params, alpha, steps, lam = make_tasks(), init_params(), 0.1, 2, 0.7
  learner = meta.maml(alpha, optax.sgd(1.0), steps, first_order=first_order,
                      anchor_weight=lam)
  grads, metrics = meta_gradient(learner, params, tasks)
  plain = np_maml_grad(params, tasks, alpha, steps, first_order)
  anchor = np_split(np_query_grad_at_theta(params, tasks))
  expected = jax.tree.map(lambda p, a: p + lam * a, plain, anchor)
  assert_tree_close(grads, expected)
  # Its value is reported, and it is the unadapted query loss.
  q_before = np.mean([linreg_loss(params, (tasks.query[0][i], tasks.query[1][i]))[0]
                      for i in range(N)])
  np.testing.assert_allclose(metrics["query_loss_before"], q_before, rtol=1e-5)
  # Without the anchor the gradient is the closed form alone (the term is real).
  grads0, _ = meta_gradient(meta.maml(alpha, optax.sgd(1.0), steps,
                                      first_order=first_order), params, tasks)
  assert_tree_close(grads0, plain)
  assert np.abs(np.asarray(grads["w"]) - np.asarray(grads0["w"])).max() > 1e-3


def test_reptile_anchor_in_the_units_of_each_part():
  """Adapted leaves get λ·α·m·g, leaves outside the filter λ·g (closed form)."""
  tasks, params, alpha, steps, lam, eps = make_tasks(), init_params(), 0.1, 3, 0.5, 1.0
  only_w = lambda path, leaf: path[-1] == "w"  # noqa: E731  b stays frozen
  learner = meta.reptile(alpha, optax.sgd(eps), steps, filter=only_w,
                         anchor_weight=lam)
  grads, _ = meta_gradient(learner, params, tasks)
  theta = np_theta(params)
  diff_w, grad_b = np.zeros((D, 1)), np.zeros((1,))
  for i in range(N):
    a_s, b_s, a_q, b_q = np_task_quantities(tasks, i)
    phi = theta.copy()
    for _ in range(steps):  # only w moves: the b row of the update is dropped
      step = alpha * (a_s @ phi - b_s)
      step[D:] = 0.0
      phi = phi - step
    diff_w += (theta - phi)[:D] / N
    grad_b += (a_q @ phi - b_q)[D:, 0] / N
  g = np_query_grad_at_theta(params, tasks)
  expected = {"w": diff_w + lam * alpha * steps * g[:D],
              "b": grad_b + lam * g[D:, 0]}
  assert_tree_close(grads, expected)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "x"])
def test_bad_anchor_weight_names_the_fix(bad):
  with pytest.raises(ValueError, match="anchor_weight.*>= 0"):
    meta.maml(anchor_weight=bad)
  with pytest.raises(ValueError, match="anchor_weight.*>= 0"):
    meta.reptile(anchor_weight=bad)


# ---------------------------------------------------------------- iMAML


def quad_loss(params, batch):
  """½ (u − w·a)ᵀ A (u − w·a) + ½ c·w²; batch = (A [1,d,d], a [1,d], c [1,1])."""
  mat, vec, c = batch
  r = params["u"] - params["w"] * vec[0]
  return 0.5 * r @ mat[0] @ r + 0.5 * c[0, 0] * params["w"] ** 2, {}


def test_imaml_matches_implicit_closed_form_including_frozen_leaves():
  rng = np.random.default_rng(3)
  d, lam, n = 4, 2.0, 2
  def spd():
    m = rng.normal(size=(d, d))
    return (m @ m.T / d + 0.5 * np.eye(d)).astype(np.float32)
  a_mats = np.stack([spd() for _ in range(n)])[:, None]
  b_mats = np.stack([spd() for _ in range(n)])[:, None]
  a_vecs = rng.normal(size=(n, 1, d)).astype(np.float32)
  b_vecs = rng.normal(size=(n, 1, d)).astype(np.float32)
  zeros, ones = np.zeros((n, 1, 1), np.float32), np.ones((n, 1, 1), np.float32)
  tasks = Task(support=(a_mats, a_vecs, zeros), query=(b_mats, b_vecs, ones))
  params = {"u": rng.normal(size=(d,)).astype(np.float32), "w": np.float32(0.7)}
  learner = meta.imaml(0.1, optax.sgd(1.0), num_inner_steps=400, lam=lam, cg_steps=2 * d,
                       filter=lambda path, _: path[0] == "u")
  state = learner.init(params)
  new, _ = jax.jit(learner.step, static_argnums=2)(state, tasks, quad_loss)
  grad = {k: np.asarray(state.params[k]) - np.asarray(new.params[k]) for k in params}

  # Closed form with support loss ½(u − w a)ᵀA(u − w a): φ* = (A+λI)⁻¹(A a w + λθ),
  # query loss ½(φ − w b)ᵀB(φ − w b) + ½w², F(θ, w) = L_q(φ*(θ, w), w).
  theta, w = params["u"].astype(np.float64), float(params["w"])
  def meta_objective(theta, w):
    total = 0.0
    for i in range(n):
      a_m, b_m = a_mats[i, 0].astype(np.float64), b_mats[i, 0].astype(np.float64)
      phi = np.linalg.solve(a_m + lam * np.eye(d), a_m @ a_vecs[i, 0] * w + lam * theta)
      r = phi - w * b_vecs[i, 0].astype(np.float64)  # float64: FD step is 1e-6
      total += 0.5 * r @ b_m @ r + 0.5 * w ** 2
    return total / n
  g_theta = np.zeros(d)
  for i in range(n):
    a_m, b_m = a_mats[i, 0].astype(np.float64), b_mats[i, 0].astype(np.float64)
    inv = np.linalg.inv(a_m + lam * np.eye(d))
    phi = inv @ (a_m @ a_vecs[i, 0] * w + lam * theta)
    g_theta += lam * inv @ (b_m @ (phi - w * b_vecs[i, 0]))
  g_theta /= n
  h = 1e-6
  g_w = (meta_objective(theta, w + h) - meta_objective(theta, w - h)) / (2 * h)
  np.testing.assert_allclose(grad["u"], g_theta, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(grad["w"], g_w, rtol=1e-3, atol=1e-4)


def test_conjugate_gradient_solves_spd_system():
  rng = np.random.default_rng(0)
  m = rng.normal(size=(5, 5))
  a = jnp.asarray(m @ m.T + 5 * np.eye(5), jnp.float32)
  b = [jnp.asarray(rng.normal(size=5), jnp.float32)]
  x = meta.conjugate_gradient(lambda v: [a @ v[0]], b, 10)
  np.testing.assert_allclose(np.asarray(a @ x[0]), np.asarray(b[0]), atol=1e-4)


def test_imaml_memory_does_not_grow_with_inner_steps():
  tasks, params = make_tasks(), init_params()
  def temp_bytes(steps):
    learner = meta.imaml(0.1, optax.sgd(1.0), steps, lam=1.0, cg_steps=3)
    state = learner.init(params)
    compiled = jax.jit(learner.step, static_argnums=2).lower(
        state, tasks, linreg_loss).compile()
    return compiled.memory_analysis().temp_size_in_bytes
  assert temp_bytes(40) <= temp_bytes(2) * 1.05 + 1024


# ---------------------------------------------------------------- filters


def test_filter_freezes_excluded_leaves_in_inner_loop_but_outer_trains_them():
  tasks, params = make_tasks(), init_params()
  only_b = lambda path, leaf: path[0] == "b"
  adapted, losses = meta.adapt(params, jax.tree.map(lambda x: x[0], tasks.support),
                               linreg_loss, inner_optimizer=optax.sgd(0.1),
                               num_steps=5, filter=only_b)
  np.testing.assert_array_equal(np.asarray(adapted["w"]), params["w"])
  assert not np.allclose(np.asarray(adapted["b"]), params["b"])
  assert losses.shape == (6,) and float(losses[-1]) < float(losses[0])
  # A boolean mask pytree means the same as the predicate.
  mask = {"w": False, "b": True}
  adapted2, _ = meta.adapt(params, jax.tree.map(lambda x: x[0], tasks.support),
                           linreg_loss, inner_optimizer=optax.sgd(0.1),
                           num_steps=5, filter=mask)
  np.testing.assert_array_equal(np.asarray(adapted2["b"]), np.asarray(adapted["b"]))
  for learner in (meta.maml(0.1, optax.sgd(0.1), 2, filter=only_b),
                  meta.reptile(0.1, optax.sgd(0.5), 2, filter=only_b),
                  meta.imaml(0.1, optax.sgd(0.1), 5, filter=only_b)):
    state = learner.init(params)
    new, _ = jax.jit(learner.step, static_argnums=2)(state, tasks, linreg_loss)
    assert not np.allclose(np.asarray(new.params["w"]), params["w"])


def test_maml_with_filter_matches_closed_form():
  """ANIL-style: only b adapts; w gets the full second-order meta-gradient."""
  tasks, params, alpha = make_tasks(), init_params(), 0.2
  learner = meta.maml(alpha, optax.sgd(1.0), 1, filter=lambda p, _: p[0] == "b")
  grad, _ = meta_gradient(learner, params, tasks)
  theta = np_theta(params)
  total = np.zeros_like(theta)
  proj = np.zeros((D + 1, D + 1))
  proj[D, D] = 1.0  # only the bias coordinate moves in the inner loop
  for i in range(N):
    a_s, b_s, a_q, b_q = np_task_quantities(tasks, i)
    phi = theta - alpha * proj @ (a_s @ theta - b_s)
    total += (np.eye(D + 1) - alpha * proj @ a_s).T @ (a_q @ phi - b_q)
  assert_tree_close(grad, np_split(total / N))


# ---------------------------------------------------------------- compile, devices


def test_second_step_does_not_recompile():
  learner = meta.maml(0.1, optax.adam(1e-3), 2)
  step = meta.make_step(learner, linreg_loss)
  state = learner.init(init_params())
  state, _ = step(state, make_tasks(0))
  state, _ = step(state, make_tasks(1))
  jitted = getattr(step, "jitted", step)
  assert jitted._cache_size() == 1


def test_remat_gives_the_same_meta_gradient():
  tasks, params = make_tasks(), init_params()
  g1, _ = meta_gradient(meta.maml(0.1, optax.sgd(1.0), 4), params, tasks)
  g2, _ = meta_gradient(meta.maml(0.1, optax.sgd(1.0), 4, remat=True), params, tasks)
  assert_tree_close(g1, g2, rtol=1e-5, atol=1e-6)



def test_unrolled_and_rolled_inner_loops_agree():
  """``unroll`` changes how XLA runs the steps, not which steps run."""
  tasks, params = make_tasks(), init_params()
  g1, _ = meta_gradient(meta.maml(0.1, optax.sgd(1.0), 4, unroll=False),
                        params, tasks)
  g2, _ = meta_gradient(meta.maml(0.1, optax.sgd(1.0), 4, unroll=True),
                        params, tasks)
  assert_tree_close(g1, g2, rtol=1e-5, atol=1e-6)
  assert meta.inner.resolve_unroll(4, True) and not meta.inner.resolve_unroll(
      4, False)


def test_cpu_unroll_default_and_its_environment_override(monkeypatch):
  """Loops of up to 16 steps unroll on CPU unless METATTS_CPU_UNROLL says
  otherwise (the test session sets it to 0, tests/conftest.py)."""
  cpu = jax.default_backend() == "cpu"
  monkeypatch.delenv(meta.inner.UNROLL_ENV, raising=False)
  assert meta.inner.max_cpu_unroll() == meta.inner.MAX_CPU_UNROLL == 16
  assert meta.inner.resolve_unroll(4) == cpu
  assert meta.inner.resolve_unroll(16) == cpu
  assert not meta.inner.resolve_unroll(17)
  monkeypatch.setenv(meta.inner.UNROLL_ENV, "0")
  assert not meta.inner.resolve_unroll(1)
  assert meta.inner.resolve_unroll(1, True)  # an explicit choice wins
  monkeypatch.setenv(meta.inner.UNROLL_ENV, "5")
  assert meta.inner.resolve_unroll(5) == cpu
  assert not meta.inner.resolve_unroll(6)
  for bad in ("-1", "many", "2.5"):
    monkeypatch.setenv(meta.inner.UNROLL_ENV, bad)
    with pytest.raises(ValueError, match="METATTS_CPU_UNROLL"):
      meta.inner.resolve_unroll(3)


def test_bf16_compute_keeps_f32_params_and_is_close():
  tasks, params = make_tasks(), init_params()
  g32, _ = meta_gradient(meta.maml(0.1, optax.sgd(1.0), 1), params, tasks)
  learner = meta.maml(0.1, optax.sgd(1.0), 1, compute_dtype=jnp.bfloat16)
  state = learner.init(params)
  new, metrics = jax.jit(learner.step, static_argnums=2)(state, tasks, linreg_loss)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(new.params))
  g16 = {k: np.asarray(state.params[k]) - np.asarray(new.params[k]) for k in params}
  assert_tree_close(g16, g32, rtol=0.05, atol=0.05)
  assert metrics["loss"].dtype == jnp.float32


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
  tasks, params = make_tasks(), init_params()
  learner = meta.maml(0.1, optax.sgd(0.1), 1)
  state = learner.init(params)
  bad_n = Task(support=tasks.support, query=jax.tree.map(lambda x: x[:2], tasks.query))
  with pytest.raises(ValueError, match="same N"):
    learner.step(state, bad_n, linreg_loss)
  with pytest.raises(ValueError, match="leading task axis"):
    learner.step(state, Task(support=(np.zeros(3), np.zeros(3)), query=tasks.query), linreg_loss)
  with pytest.raises(ValueError, match="Task"):
    learner.step(state, tasks.support, linreg_loss)
  with pytest.raises(ValueError, match="selects no leaf"):
    meta.maml(filter=lambda p, _: False).init(params)
  with pytest.raises(ValueError, match="scalar"):
    learner.step(state, tasks, lambda p, b: (linreg_loss(p, b)[1]["pred"], {}))
  with pytest.raises(ValueError, match="does not match"):
    meta.resolve_filter(params, {"w": True})
  with pytest.raises(ValueError, match="Unknown meta-learning method"):
    meta.get_learner("mamll")


@pytest.mark.parametrize("name", ["maml", "reptile", "imaml", "pretrain"])
def test_nonfinite_meta_gradient_is_skipped_and_counted(name):
  tasks, params = make_tasks(), init_params()
  learner = meta.get_learner(name)
  state = learner.init(params)
  poisoned = Task(support=(tasks.support[0], np.full_like(tasks.support[1], np.nan)),
                  query=(tasks.query[0], np.full_like(tasks.query[1], np.nan)))
  step = jax.jit(learner.step, static_argnums=2)
  new, metrics = step(state, poisoned, linreg_loss)
  assert float(metrics["skipped"]) == 1.0
  assert int(new.num_skipped) == 1 and int(new.step) == 1
  for k in params:
    np.testing.assert_array_equal(np.asarray(new.params[k]), params[k])
  new2, metrics2 = step(new, tasks, linreg_loss)
  assert float(metrics2["skipped"]) == 0.0 and int(new2.num_skipped) == 1


def test_pretrain_gradient_is_gradient_of_the_average_loss():
  tasks, params = make_tasks(), init_params()
  grad, _ = meta_gradient(meta.pretrain(optax.sgd(1.0)), params, tasks)
  theta = np_theta(params)
  total = np.zeros_like(theta)
  for i in range(N):
    a_s, b_s, a_q, b_q = np_task_quantities(tasks, i)
    total += 0.5 * ((a_s @ theta - b_s) + (a_q @ theta - b_q))
  assert_tree_close(grad, np_split(total / N))


def test_conjugate_gradient_stops_at_negative_curvature():
  """On an indefinite system CG keeps its last iterate instead of blowing up."""
  a = jnp.diag(jnp.array([2.0, -1.0], jnp.float32))
  b = [jnp.array([1.0, 1.0], jnp.float32)]
  x = meta.conjugate_gradient(lambda v: [a @ v[0]], b, 10)
  # First direction b has curvature bᵀAb = 1 > 0: one step x = (bᵀb / bᵀAb)·b = 2b.
  # The next direction has negative curvature, so CG stops there.
  np.testing.assert_allclose(np.asarray(x[0]), [2.0, 2.0], atol=1e-6)


# ---------------------------------------------------------------- task layout


@pytest.mark.parametrize("task_map", ["map", 1, 3])
def test_task_map_gives_the_vmap_step_for_every_learner(task_map):
  """``task_map`` changes how the tasks are laid out (a loop, chunks of k
  with a remainder: 4 tasks in chunks of 3), not what the step computes."""
  tasks, params = make_tasks(), init_params()
  # Second-order MAML against its closed form, whatever the layout.
  grad, _ = meta_gradient(meta.maml(0.1, optax.sgd(1.0), 3, task_map=task_map),
                          params, tasks)
  assert_tree_close(grad, np_maml_grad(params, tasks, 0.1, 3, False))
  only_w = lambda path, _: path[0] == "w"  # noqa: E731
  learners = {
      "fomaml": lambda **k: meta.fomaml(0.1, optax.sgd(1.0), 2, **k),
      "metasgd": lambda **k: meta.metasgd(0.1, optax.sgd(1.0), 2, **k),
      "reptile": lambda **k: meta.reptile(0.1, optax.sgd(0.5), 3,
                                          filter=only_w, **k),
      "imaml": lambda **k: meta.imaml(0.1, optax.sgd(1.0), 4, filter=only_w,
                                      **k),
      "pretrain": lambda **k: meta.pretrain(optax.sgd(1.0), **k),
  }
  for name, make in learners.items():
    want, want_m = meta_gradient(make(), params, tasks)
    got, got_m = meta_gradient(make(task_map=task_map), params, tasks)
    assert_tree_close(got, want, rtol=1e-5, atol=1e-6)
    for k in want_m:
      np.testing.assert_allclose(got_m[k], want_m[k], rtol=1e-5, atol=1e-6,
                                 err_msg=f"{name} {k}")


@pytest.mark.parametrize("bad", ["scan", 0, -2, 1.5, True])
def test_unknown_task_map_names_the_choices(bad):
  with pytest.raises(ValueError, match="task_map=.*'map'"):
    meta.maml(0.1, task_map=bad)


def test_map_layout_differentiates_each_task_inside_the_loop():
  """With ``task_map="map"`` the meta-gradient of MAML is taken per task
  inside the loop (``base.task_mean_grad``): the compiled step holds no
  buffer of every task's hidden weights. Differentiating the loop from
  outside saved values of every task, stacked [N, ...], for a backward loop
  (docs/benchmarks.md, "Session 15"); vmap holds per-task weights by design."""
  sizes, n, h = (8, 48, 48, 8), 4, 48  # [n, h, h] occurs only per task

  def loss_fn(p, batch):
    x, y = batch
    for i in range(len(sizes) - 1):
      x = x @ p[f"w{i}"] + p[f"b{i}"]
      x = jax.nn.relu(x) if i < len(sizes) - 2 else x
    return jnp.mean((x - y) ** 2), {}

  rng = np.random.default_rng(0)
  params = {}
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    params[f"w{i}"] = (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32)
    params[f"b{i}"] = np.zeros(b, np.float32)
  x = rng.normal(size=(n, 20, sizes[0])).astype(np.float32)
  w_task = rng.normal(size=(n, sizes[0], sizes[-1])).astype(np.float32)
  y = np.tanh(np.einsum("npi,nio->npo", x, w_task))
  tasks = Task(support=(x[:, :10], y[:, :10]), query=(x[:, 10:], y[:, 10:]))
  per_task = f"f32[{n},{h},{h}]"
  for task_map, want in (("map", False), ("vmap", True)):
    learner = meta.maml(0.1, optax.adam(1e-3), 1, task_map=task_map)
    hlo = jax.jit(learner.step, static_argnums=2).lower(
        learner.init(params), tasks, loss_fn).compile().as_text()
    assert (per_task in hlo) == want, (task_map, per_task)


def test_compiler_options_reach_the_step_and_keep_its_numbers():
  """``make_step(compiler_options=...)`` compiles the same step with other
  XLA options: YNNPACK fusions of matrix products only, on CPU."""
  tasks, params = make_tasks(), init_params()
  for learner in (meta.maml(0.1, optax.sgd(1.0), 2),
                  meta.reptile(0.1, optax.sgd(0.5), num_inner_steps=2)):
    state = learner.init(params)
    want, _ = meta.make_step(learner, linreg_loss, donate=False)(state, tasks)
    opts = (meta.parallel.CPU_DOT_FUSIONS_ONLY
            if jax.default_backend() == "cpu" else None)
    got, _ = meta.make_step(learner, linreg_loss, donate=False,
                            compiler_options=opts)(state, tasks)
    assert_tree_close(got.params, want.params, rtol=1e-6, atol=1e-7)
  if jax.default_backend() == "cpu":
    with pytest.raises(Exception, match="xla_cpu_experimental_ynn_fusion_type"):
      meta.make_step(learner, linreg_loss, donate=False, compiler_options={
          "xla_cpu_experimental_ynn_fusion_type": "dot"})(state, tasks)
