"""Gradient of one dilated causal convolution on XLA CPU: three ways.

The session-9 probe behind docs/benchmarks.md, "The source-filter vocoder"
(the 2-D products table): `[B, T, C] @ W` per tap, `lax.conv_general_dilated`,
and one 2-D product on `[B * T, K * C]`; forward, weight and input gradient,
median of 7 after a compile. Usage: .venv/bin/python benchmarks/conv_grad_products.py
"""
import time, jax, jax.numpy as jnp, numpy as np
def t(f, *a):
  f=jax.jit(f); jax.block_until_ready(f(*a)); ts=[]
  for _ in range(7):
    s=time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter()-s)
  return np.median(ts)
x = jax.random.normal(jax.random.key(0), (8, 3200, 32)); w = jax.random.normal(jax.random.key(1), (3, 32, 64))*0.1
d = 64
def shifted(w, x):
  t_ = x.shape[1]; pad = 2*d
  xp = jnp.pad(x, ((0,0),(pad,0),(0,0)))
  y = 0
  for k in range(3): y = y + xp[:, k*d:k*d+t_] @ w[k]
  return jnp.sum(y**2)
def conv(w, x):
  xp = jnp.pad(x, ((0,0),(2*d,0),(0,0)))
  y = jax.lax.conv_general_dilated(xp, w, (1,), "VALID", rhs_dilation=(d,), dimension_numbers=("NWC","WIO","NWC"))
  return jnp.sum(y**2)
def shifted2(w, x):  # weight grad via explicit 2D reshape
  t_ = x.shape[1]; pad = 2*d
  xp = jnp.pad(x, ((0,0),(pad,0),(0,0)))
  xc = jnp.concatenate([xp[:, k*d:k*d+t_] for k in range(3)], -1).reshape(-1, 96)
  y = xc @ w.reshape(96, 64)
  return jnp.sum(y**2)
print("same?", float(shifted(w,x)), float(conv(w,x)), float(shifted2(w,x)))
for name, f in [("shifted", shifted), ("conv", conv), ("concat2d", shifted2)]:
  print(name, "fwd %.4f gradw %.4f gradx %.4f" % (t(f, w, x), t(jax.grad(f), w, x), t(jax.grad(f, 1), w, x)))
