"""Training step of the base source-filter vocoder: vmapped tasks vs a loop.

The session-9 probe behind docs/benchmarks.md, "The source-filter vocoder":
`meta.pretrain` steps of `nsf` base on 8 windows of 16 frames, as 4 tasks of
1 + 1 windows (task_map vmap or map) or 1 task of 4 + 4 (vmap); median of 5.
Usage: .venv/bin/python benchmarks/nsf_train_step.py
"""
import time, jax, jax.numpy as jnp, numpy as np, optax
from metatts.models import nsf, wavenet
from metatts.methods import base
from metatts import functional, meta
from metatts.types import Task
from metatts.meta import parallel
cfg = nsf.nsf_config("base")
g, p, r = base.build_params("nsf", cfg, 0)
loss_fn = functional.make_loss_fn(g, r)
rng = np.random.default_rng(0)
def clip(i):
  n=60; t=np.arange(n*200)/16000
  return (rng.normal(size=(n,80)).astype(np.float32), (0.3*np.sin(2*np.pi*(120+10*i)*t)).astype(np.float32), np.full(n,120.+10*i,np.float32))
def task(N,K,Q):
  sup=[wavenet.make_vocoder_batch(rng,[clip(i) for i in range(K)],16,200) for _ in range(N)]
  qry=[wavenet.make_vocoder_batch(rng,[clip(i) for i in range(Q)],16,200) for _ in range(N)]
  st=lambda bs: type(bs[0])(*(None if x[0] is None else np.stack(x) for x in zip(*bs)))
  return Task(st(sup), st(qry))
for (N,K,Q,tm) in [(4,1,1,"vmap"),(4,1,1,"map"),(1,4,4,"vmap")]:
  learner = meta.pretrain(optax.adam(1e-3), inner_lr=1e-3, filter=functional.filter_for("all"), task_map=tm)
  state = learner.init(p)
  step = parallel.make_step(learner, loss_fn, donate=False)
  tk = jax.tree.map(jnp.asarray, task(N,K,Q))
  s2, m = step(state, tk); jax.block_until_ready(s2)
  ts=[]
  for _ in range(5):
    t0=time.perf_counter(); s2, m = step(state, tk); jax.block_until_ready(s2); ts.append(time.perf_counter()-t0)
  print(N,K,Q,tm, "%.3f s/step" % np.median(ts), flush=True)
