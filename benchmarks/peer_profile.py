r"""Why a metatts meta-step is or is not 1.5x the fastest PyTorch variant.

For one row of ``benchmarks/peer_torch.py`` (a workload, an algorithm, its
inner steps and a metatts task layout) this measures, in one run:

* the step of both systems (metatts and every PyTorch variant of
  ``peer_torch.py``, interleaved, median ms);
* **the matrix products metatts's step runs**: every ``dot`` of the step's
  optimized XLA program (fusions included, multiplied by the known trip
  count of the ``while`` loops around them: ``lax.map`` over tasks, scans),
  with its FLOPs; the products of the step's jaxpr are counted too, to show
  how many XLA removed;
* **each distinct product timed alone**, as one XLA program and as
  ``torch.einsum`` (which dispatches to PyTorch's ``mm``/``bmm``), on this
  machine with every core; the **product floor** is the sum over the step's
  products of the faster of the two libraries' times. A step cannot be
  faster than the floor without matrix products faster than both libraries'
  own (or fewer products: a different formulation);
* where the PyTorch step's time goes: ``torch.profiler`` self CPU time of
  its matrix-product and convolution kernels against the whole step
  (the fastest of ``torch-loop`` and, for the LSTM, ``torch-fused``;
  otherwise ``torch-loop``).

It prints the verdict for issue 14's aim: metatts must take at most
``fastest torch / 1.5``; when the product floor is already above that, the
aim needs faster products than either library has, not less overhead.
The difference ``metatts - floor`` is what XLA spends outside the products
as timed alone (element-wise work, reductions, layout copies, and any
product that runs slower inside the fused program than alone).

Usage::

  .venv/bin/python benchmarks/peer_profile.py --workload mlp-large \
      --algorithm maml --inner_steps 1 --task_map map [--repeats 5]

Results: docs/benchmarks.md, "metatts against PyTorch".
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import statistics
import string
import sys
import time
from typing import Dict, List, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from jax.extend import core as jax_core  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import optax  # pylint: disable=g-import-not-at-top,wrong-import-position
import torch  # pylint: disable=g-import-not-at-top,wrong-import-position

import peer_torch  # pylint: disable=g-import-not-at-top,wrong-import-position
from metatts.types import Task  # pylint: disable=g-import-not-at-top,wrong-import-position

AIM = 1.5
# PyTorch's matrix-product and convolution kernels, as torch.profiler names
# them on CPU.
TORCH_PRODUCT_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
                     "aten::mkldnn_convolution", "aten::_slow_conv2d_forward",
                     "aten::convolution_backward", "aten::_mkldnn_convolution",
                     "aten::mkldnn_convolution_backward")

# A product's signature: (lhs shape, rhs shape, dimension numbers, dtype).
Signature = Tuple[tuple, tuple, tuple, str]


def _subjaxprs(eqn):
  """(jaxpr, multiplicity) of every sub-program an equation runs."""
  mult = int(eqn.params["length"]) if eqn.primitive.name == "scan" else 1
  for value in eqn.params.values():
    values = value if isinstance(value, (tuple, list)) else (value,)
    for v in values:
      if isinstance(v, jax_core.ClosedJaxpr):
        yield v.jaxpr, mult
      elif isinstance(v, jax_core.Jaxpr):
        yield v, mult



def products(jaxpr, mult: int = 1,
             out: "collections.Counter[Signature]" = None,
             whiles: "collections.Counter[str]" = None
             ) -> "collections.Counter[Signature]":
  """Counts every ``dot_general`` a jaxpr runs, by signature. A ``while``
  loop's trip count is unknown from the jaxpr: its body is counted once,
  and the loop is counted in ``whiles["loops"]``."""
  out = collections.Counter() if out is None else out
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "while" and whiles is not None:
      whiles["loops"] += 1
    if eqn.primitive.name == "dot_general":
      lhs, rhs = (v.aval for v in eqn.invars[:2])
      (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
      dims = (tuple(lc), tuple(rc), tuple(lb), tuple(rb))
      out[(tuple(lhs.shape), tuple(rhs.shape), dims, str(lhs.dtype))] += mult
    for sub, m in _subjaxprs(eqn):
      products(sub, mult * m, out, whiles)
  return out


_COMP_RE = re.compile(r"^(?:ENTRY )?%([\w.\-]+) \((.*)\) -> .* \{$")
_PARAM_RE = re.compile(r"([\w.\-]+): (\w+)\[([\d,]*)\]")
_INSTR_RE = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]")
_DOT_RE = re.compile(r"dot\(%([\w.\-]+), %([\w.\-]+)\)")
_DIMS_RE = {k: re.compile(k + r"=\{([\d,]*)\}") for k in (
    "lhs_contracting_dims", "rhs_contracting_dims", "lhs_batch_dims",
    "rhs_batch_dims")}
_CALLS_RE = re.compile(r"(?:calls|body|to_apply)=%([\w.\-]+)")
_TRIP_RE = re.compile(r'known_trip_count":\{"n":"(\d+)"')


def _ints(text: str) -> tuple:
  return tuple(int(v) for v in text.split(",") if v)


def compiled_products(hlo_text: str) -> "collections.Counter[Signature]":
  """Counts the ``dot`` instructions of an optimized HLO module, by
  signature, as XLA will run them: inside fusions, and multiplied by the
  known trip count of the ``while`` loops around them (``lax.map`` over
  tasks, ``scan``s). What XLA removed (common subexpressions, dead or
  simplified products) is not counted, unlike in the step's jaxpr."""
  comps, entry, current = {}, None, None
  for line in hlo_text.splitlines():
    m = _COMP_RE.match(line)
    if m:
      current = m.group(1)
      shapes = {name: _ints(dims) for name, _, dims in
                _PARAM_RE.findall(m.group(2))}
      dtypes = {name: dt for name, dt, _ in _PARAM_RE.findall(m.group(2))}
      comps[current] = {"shapes": shapes, "dtypes": dtypes, "dots": [],
                        "calls": []}
      if line.startswith("ENTRY"):
        entry = current
      continue
    if current is None or line.startswith("}"):
      continue
    comp = comps[current]
    m = _INSTR_RE.match(line)
    if m:
      comp["shapes"][m.group(1)] = _ints(m.group(3))
      comp["dtypes"][m.group(1)] = m.group(2)
    d = _DOT_RE.search(line)
    if d and " dot(" in line:
      dims = tuple(_ints(r.search(line).group(1)) if r.search(line) else ()
                   for r in _DIMS_RE.values())
      comp["dots"].append((d.group(1), d.group(2), dims))
    trip = _TRIP_RE.search(line)
    for callee in _CALLS_RE.findall(line):
      comp["calls"].append((callee, int(trip.group(1)) if trip and
                            " while(" in line else 1))
  out = collections.Counter()

  def visit(name, mult):
    comp = comps.get(name)
    if comp is None:
      return
    for lhs, rhs, dims in comp["dots"]:
      sig = (comp["shapes"][lhs], comp["shapes"][rhs], dims,
             {"f32": "float32", "bf16": "bfloat16", "f16": "float16",
              "f64": "float64"}.get(comp["dtypes"][lhs], "float32"))
      out[sig] += mult
    for callee, times in comp["calls"]:
      visit(callee, mult * times)

  visit(entry, 1)
  return out


def flops(sig: Signature) -> float:
  lhs, rhs, (lc, rc, lb, rb), _ = sig
  batch = math.prod(lhs[i] for i in lb)
  contract = math.prod(lhs[i] for i in lc)
  lhs_free = math.prod(d for i, d in enumerate(lhs) if i not in lc + lb)
  rhs_free = math.prod(d for i, d in enumerate(rhs) if i not in rc + rb)
  return 2.0 * batch * contract * lhs_free * rhs_free


def einsum_spec(sig: Signature) -> str:
  """The ``torch.einsum`` string of a ``dot_general`` (same output order:
  batch, lhs free, rhs free)."""
  lhs, rhs, (lc, rc, lb, rb), _ = sig
  letters = iter(string.ascii_letters)
  left = [next(letters) for _ in lhs]
  right = [None] * len(rhs)
  for i, j in zip(lb, rb):
    right[j] = left[i]
  for i, j in zip(lc, rc):
    right[j] = left[i]
  right = [c if c is not None else next(letters) for c in right]
  result = ([left[i] for i in lb]
            + [c for i, c in enumerate(left) if i not in lc + lb]
            + [c for j, c in enumerate(right) if j not in rc + rb])
  return f"{''.join(left)},{''.join(right)}->{''.join(result)}"


def _median_seconds(run, target=0.05, repeats=5) -> float:
  run()
  tick = time.perf_counter()
  run()
  calls = max(1, int(target / max(time.perf_counter() - tick, 1e-7)))
  times = []
  for _ in range(repeats):
    tick = time.perf_counter()
    for _ in range(calls):
      run()
    times.append((time.perf_counter() - tick) / calls)
  return statistics.median(times)


def time_product(sig: Signature, repeats: int) -> Dict[str, float]:
  """Seconds of one product alone: XLA (one jitted dot_general) and
  ``torch.einsum``."""
  lhs, rhs, (lc, rc, lb, rb), dtype = sig
  rng = np.random.default_rng(0)
  a = rng.normal(size=lhs).astype(dtype)
  b = rng.normal(size=rhs).astype(dtype)
  dot = jax.jit(lambda x, y: jax.lax.dot_general(x, y, ((lc, rc), (lb, rb))))
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  xla = _median_seconds(lambda: dot(ja, jb).block_until_ready(),
                        repeats=repeats)
  ta, tb = torch.from_numpy(a), torch.from_numpy(b)
  spec = einsum_spec(sig)
  expected = np.asarray(dot(ja, jb))
  check = np.max(np.abs(torch.einsum(spec, ta, tb).numpy() - expected))
  scale = 1.0 + float(np.max(np.abs(expected)))
  if check > 1e-3 * scale:
    raise AssertionError(f"einsum {spec} disagrees with dot_general {sig} "
                         f"by {check}")
  with torch.no_grad():
    tt = _median_seconds(lambda: torch.einsum(spec, ta, tb), repeats=repeats)
  return {"xla": xla, "torch": tt}


def torch_profile(workload, algorithm, steps, variant="torch-loop",
                  calls=5) -> Dict[str, float]:
  """Self CPU seconds per step of PyTorch's product kernels vs the step."""
  w = peer_torch.WORKLOADS[workload]
  names, params, data = peer_torch.make_workload(workload)
  loss_t = peer_torch.torch_loss(w["kind"], names,
                                 fused=variant == "torch-fused")
  init, tstep, _ = peer_torch.torch_system(loss_t, algorithm, steps, variant)
  state = init(params)
  tdata = tuple(torch.tensor(a) for a in data)
  tstep(state, tdata)
  from torch import profiler  # pylint: disable=g-import-not-at-top
  with profiler.profile(activities=[profiler.ProfilerActivity.CPU]) as prof:
    tick = time.perf_counter()
    for _ in range(calls):
      tstep(state, tdata)
    wall = (time.perf_counter() - tick) / calls
  by_op = {e.key: e.self_cpu_time_total * 1e-6 / calls
           for e in prof.key_averages()}
  total = sum(by_op.values())
  prod = sum(v for k, v in by_op.items() if k in TORCH_PRODUCT_OPS)
  top = sorted(by_op.items(), key=lambda kv: -kv[1])[:6]
  return {"wall_profiled": wall, "self_cpu_total": total,
          "products": prod, "top": top}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workload", default="mlp-large",
                      choices=sorted(peer_torch.WORKLOADS))
  parser.add_argument("--algorithm", default="maml",
                      choices=peer_torch.ALGORITHMS)
  parser.add_argument("--inner_steps", type=int, default=1)
  parser.add_argument("--task_map", default="vmap",
                      help="metatts layout (peer_torch.py --task_maps entry)")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--no-compile", action="store_true")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  w = peer_torch.WORKLOADS[args.workload]
  names, params, data = peer_torch.make_workload(args.workload)
  label = (f"{args.workload} {args.algorithm} x{args.inner_steps} "
           f"({args.task_map})")
  print(f"# {label}; jax {jax.__version__}, torch {torch.__version__}, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)

  # 1. The step's products, from its jaxpr.
  learner, step = peer_torch.metatts_step(
      w["kind"], names, args.algorithm, args.inner_steps,
      optax.adam(peer_torch.OUTER_LR), args.task_map)
  state = learner.init({n: jnp.asarray(p) for n, p in zip(names, params)})
  tasks = Task(support=(data[0], data[1]), query=(data[2], data[3]))
  whiles = collections.Counter()
  try:
    traced = products(jax.make_jaxpr(step)(state, tasks).jaxpr,
                      whiles=whiles)
  except ValueError:  # a step with compiler_options cannot be traced nested
    traced = collections.Counter()
  compiled = step.lower(state, tasks).compile()
  counted = compiled_products(compiled.as_text())
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  total_flops = sum(flops(s) * c for s, c in counted.items())
  traced_flops = sum(flops(s) * c for s, c in traced.items())
  print(f"products in the step's jaxpr: {sum(traced.values())} of "
        f"{len(traced)} shapes, {traced_flops / 1e9:.3f} GFLOP; in the "
        f"compiled program (counted below): {sum(counted.values())} dots of "
        f"{len(counted)} shapes, {total_flops / 1e9:.3f} GFLOP "
        f"(XLA cost analysis of the compiled step: "
        f"{cost.get('flops', float('nan')) / 1e9:.3f} GFLOP, "
        f"{cost.get('bytes accessed', float('nan')) / 1e9:.3f} GB); "
        f"while loops counted once: {whiles['loops']}", flush=True)

  # 2. Each product alone.
  rows = []
  for sig, count in sorted(counted.items(), key=lambda kv: -flops(kv[0]) *
                           kv[1]):
    t = time_product(sig, args.repeats)
    rows.append({"lhs": sig[0], "rhs": sig[1], "dims": sig[2],
                 "count": count, "gflop": flops(sig) * count / 1e9,
                 "xla_ms": 1e3 * t["xla"] * count,
                 "torch_ms": 1e3 * t["torch"] * count})
  floor = sum(min(r["xla_ms"], r["torch_ms"]) for r in rows)
  xla_sum = sum(r["xla_ms"] for r in rows)
  torch_sum = sum(r["torch_ms"] for r in rows)
  print("| lhs | rhs | (contract, batch) | count | GFLOP | XLA ms | torch ms |")
  print("|---|---|---|---|---|---|---|")
  for r in rows[:12]:
    lc, rc, lb, rb = r["dims"]
    print(f"| {r['lhs']} | {r['rhs']} | ({lc}{rc}, {lb}{rb}) | {r['count']} "
          f"| {r['gflop']:.3f} | {r['xla_ms']:.1f} | {r['torch_ms']:.1f} |")
  if len(rows) > 12:
    print(f"| ... {len(rows) - 12} more shapes | | | | "
          f"{sum(r['gflop'] for r in rows[12:]):.3f} | "
          f"{sum(r['xla_ms'] for r in rows[12:]):.1f} | "
          f"{sum(r['torch_ms'] for r in rows[12:]):.1f} |")
  print(f"products alone: XLA {xla_sum:.1f} ms, torch {torch_sum:.1f} ms, "
        f"floor (faster of the two per shape) {floor:.1f} ms", flush=True)

  # 3. Both steps, interleaved, and where PyTorch's time goes.
  variants = ["torch-loop", "torch-func"] + (
      [] if args.no_compile else ["torch-compile"]) + (
          ["torch-fused"] if w["kind"] == "lstm" else [])
  seconds = peer_torch.time_systems(args.workload, args.algorithm,
                                    args.inner_steps, variants, args.repeats,
                                    task_maps=(args.task_map,))
  timed = {k: v for k, v in seconds.items() if not isinstance(v, str)}
  best = min((k for k in timed if k != "metatts"), key=timed.get)
  profiled = best if best in ("torch-loop", "torch-fused") else "torch-loop"
  prof = torch_profile(args.workload, args.algorithm, args.inner_steps,
                       variant=profiled)
  ours, theirs = 1e3 * timed["metatts"], 1e3 * timed[best]
  aim = theirs / AIM
  print(f"steps: metatts {ours:.1f} ms; " + ", ".join(
      f"{k} {1e3 * v:.1f} ms" for k, v in timed.items() if k != "metatts")
        + f"; ratio {theirs / ours:.2f}x; the aim ({AIM}x) needs "
        f"<= {aim:.1f} ms")
  print(f"{profiled} profiled: {1e3 * prof['wall_profiled']:.1f} ms wall, "
        f"{1e3 * prof['self_cpu_total']:.1f} ms self CPU of which products "
        f"{1e3 * prof['products']:.1f} ms; top: " + ", ".join(
            f"{k} {1e3 * v:.1f}" for k, v in prof["top"]))
  print(f"metatts outside the products (step - XLA products alone): "
        f"{ours - xla_sum:.1f} ms")
  verdict = ("metatts meets the aim" if ours <= aim else
             "the product floor alone is above the aim: 1.5x needs faster "
             "matrix products than either library's (or fewer of them)"
             if floor > aim else
             "the product floor is below the aim: the gap is outside the "
             "products alone (fusion, element-wise work, layouts)")
  print(f"verdict: floor {floor:.1f} ms vs aim {aim:.1f} ms: {verdict}")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    record = {"row": label, "load": os.getloadavg(), "products": rows,
              "floor_ms": floor, "xla_products_ms": xla_sum,
              "torch_products_ms": torch_sum, "seconds": seconds,
              "fastest_torch": best, "aim_ms": aim, "profiled": profiled,
              "torch_profile": prof,
              "cost_analysis": {k: float(v) for k, v in cost.items()
                                if isinstance(v, (int, float))}}
    existing = []
    if os.path.exists(args.out):
      with open(args.out) as f:
        existing = json.load(f)
    with open(args.out, "w") as f:
      json.dump(existing + [record], f, indent=1, default=str)


if __name__ == "__main__":
  main()
