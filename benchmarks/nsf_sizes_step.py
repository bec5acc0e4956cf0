"""Gradient step time of source-filter vocoder variants (base and narrower).

The session-9 probe behind docs/benchmarks.md, "The source-filter vocoder":
one jitted value_and_grad of the loss on 8 windows of 16 frames, median of 5,
and the forward pass alone. Usage:
.venv/bin/python benchmarks/nsf_sizes_step.py base k2 c24 2x6 c16
"""
import time, jax, jax.numpy as jnp, numpy as np, sys
from metatts.models import nsf, wavenet
from metatts.methods import base
from metatts import functional
import optax
variants = {
 "base": {},
 "k2": dict(kernel_size=2),
 "c24": dict(residual_channels=24, gate_channels=24, skip_channels=24, cond_channels=24),
 "2x6": dict(layers_per_stack=6),
 "c16": dict(residual_channels=16, gate_channels=16, skip_channels=16, cond_channels=16),
}
B, F = 8, 16
rng = np.random.default_rng(0)
clips=[]
for i in range(B):
  n=60; t=np.arange(n*200)/16000
  a=0.3*np.sin(2*np.pi*(120+10*i)*t).astype(np.float32)
  clips.append((rng.normal(size=(n,80)).astype(np.float32), a, np.full(n,120.+10*i,np.float32)))
b = jax.tree.map(jnp.asarray, wavenet.make_vocoder_batch(rng, clips, F, 200))
for name in sys.argv[1:]:
  cfg = nsf.nsf_config("base", **variants[name])
  g, p, r = base.build_params("nsf", cfg, 0)
  loss_fn = functional.make_loss_fn(g, r)
  vg = jax.jit(jax.value_and_grad(lambda p,b: loss_fn(p,b)[0]))
  l, gr = vg(p,b); jax.block_until_ready(gr)
  ts=[]
  for _ in range(5):
    t=time.perf_counter(); l,gr = vg(p,b); jax.block_until_ready(gr); ts.append(time.perf_counter()-t)
  fwd = jax.jit(lambda p,b: loss_fn(p,b)[0]); fwd(p,b).block_until_ready()
  tf=[]
  for _ in range(5):
    t=time.perf_counter(); fwd(p,b).block_until_ready(); tf.append(time.perf_counter()-t)
  print(name, "params", sum(x.size for x in jax.tree.leaves(p)), "rf", cfg.receptive_field, "step %.3f fwd %.3f" % (np.median(ts), np.median(tf)), flush=True)
