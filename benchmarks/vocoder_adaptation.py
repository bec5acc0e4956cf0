r"""Vocoder adaptation, paired: a meta-learned vocoder at few steps against
fine-tuned vocoders at many (issue 15's second Done-when).

Every export named by ``--vocoder NAME=EXPORT`` is adapted to each held-out
speaker of the vocoder study by one protocol
(:func:`metatts.experiments.vocoder.heldout_adaptation`: 5 support clips,
SGD over all parameters at the study's rate, 0/5/20/100 steps; the same
windows for every export) and judged by the loss on windows of 2 other clips
and by the MCD of their full resynthesis. Printed (and written to ``--out``
as JSON, with one value per speaker): the means per step count, and the
paired difference per speaker ``FIRST@--few - OTHER@--many`` with its 95%
t interval (negative: the first export is better).

``--resample`` uses new random windows of the support clips for every 5
steps after the first 5 (``config.vocoder.heldout_resample``), which is how
a user fine-tuning on their clips for 100 steps would use them. The first 5
steps see the same windows either way, so ``FIRST@5`` is the same.

Each export's table is saved in ``--out`` as soon as it is done, and a rerun
with the same protocol reuses it. Usage (the study, its ``:meta`` run and
an equal-budget ``transfer`` control first; docs/results/vocoder.md)::

  .venv/bin/python benchmarks/vocoder_adaptation.py --resample \
      --vocoder meta=runs/vocoder-meta/vocoder/model \
      --vocoder fine-tuned=runs/vocoder/vocoder/model \
      --vocoder control=runs/vocoder-control/vocoder/model \
      --out runs/vocoder-adaptation.json
"""
import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
from metatts import functional  # pylint: disable=wrong-import-position
from metatts.evaluation import study  # pylint: disable=wrong-import-position
from metatts.experiments import data as edata  # pylint: disable=wrong-import-position
from metatts.experiments import vocoder as evoc  # pylint: disable=wrong-import-position
from metatts.training import export  # pylint: disable=wrong-import-position


def _config(path: str, arg: str, resample: bool, steps, shots, lr):
  spec = importlib.util.spec_from_file_location("vocoder_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config(arg)
  c.vocoder.heldout_resample = bool(resample)
  c.adapt.steps = tuple(steps)
  c.adapt.shots = tuple(shots)
  if lr:
    c.vocoder.inner_lr = float(lr)
  return c


def _table(config, data, path: str, progress: bool):
  model, params, info, _ = export.load_exported(path)
  graphdef, _, rest = functional.split(model)
  log = print if progress else None
  return evoc.heldout_adaptation(graphdef, rest, params, data.heldout,
                                 data.feature_config, info["model"],
                                 evoc.heldout_protocol(config), log=log)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--vocoder", action="append", required=True,
                  metavar="NAME=EXPORT",
                  help="a vocoder export to adapt; the first is compared "
                  "at --few steps against every other at --many")
  ap.add_argument("--config", default=os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
      "experiments", "configs", "vocoder.py"))
  ap.add_argument("--config-arg", default="study")
  ap.add_argument("--resample", action="store_true")
  ap.add_argument("--lr", type=float, default=0.0,
                  help="the adaptation's SGD rate (default: the config's "
                  "vocoder.inner_lr)")
  ap.add_argument("--steps", default="0,5,20,100")
  ap.add_argument("--shots", default="5")
  ap.add_argument("--few", type=int, default=5)
  ap.add_argument("--many", type=int, default=100)
  ap.add_argument("--out", default="")
  ap.add_argument("--quiet", action="store_true")
  a = ap.parse_args(argv)
  named = []
  for item in a.vocoder:
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
      ap.error(f"--vocoder {item!r}: use NAME=EXPORT_FOLDER")
    named.append((name, os.path.expanduser(path)))
  steps = [int(s) for s in a.steps.split(",")]
  shots = [int(k) for k in a.shots.split(",")]
  if a.few not in steps or a.many not in steps:
    ap.error(f"--few {a.few} and --many {a.many} must be in --steps {steps}")
  config = _config(a.config, a.config_arg, a.resample, steps, shots, a.lr)
  protocol = evoc.heldout_protocol(config)
  saved = {}
  if a.out and os.path.isfile(a.out):
    with open(a.out) as f:
      saved = json.load(f)
    if saved.get("protocol") != protocol:
      saved = {}
  tables = saved.get("vocoders", {})
  data = None
  stamp = lambda p: os.stat(os.path.join(  # noqa: E731
      export.resolve_export_dir(p), "model.json")).st_mtime_ns
  for name, path in named:
    if name in tables and tables[name].get("export") == os.path.abspath(
        path) and tables[name].get("mtime_ns") == stamp(path):
      continue  # the same export judged by the same protocol
    if data is None:
      data = edata.prepare_data(config, progress=not a.quiet)
    tick = time.perf_counter()
    loss, mcd = _table(config, data, path, not a.quiet)
    tables[name] = {"export": os.path.abspath(path), "mtime_ns": stamp(path),
                    "loss": loss, "mcd": mcd,
                    "seconds": time.perf_counter() - tick}
    if a.out:
      tmp = a.out + ".tmp"
      with open(tmp, "w") as f:
        json.dump({"protocol": protocol, "vocoders": tables}, f, indent=1)
      os.replace(tmp, a.out)
  first = named[0][0]
  print(f"protocol: {json.dumps(protocol)}")
  comparisons = {}
  for judge in ("loss", "mcd"):
    for split in sorted(tables[first][judge]):
      for k in sorted(tables[first][judge][split], key=int):
        print(f"\n{judge}, {split}, {k} clips: mean over speakers")
        print("  " + " ".join(f"{'@' + str(s):>8}" for s in steps) +
              "  vocoder")
        for name, _ in named:
          cells = tables[name][judge][split][k]
          print("  " + " ".join(f"{np.mean(cells[str(s)]):8.3f}"
                                for s in steps) + f"  {name}")
        a_vals = tables[first][judge][split][k][str(a.few)]
        for name, _ in named[1:]:
          b_vals = tables[name][judge][split][k][str(a.many)]
          p = study.paired(dict(enumerate(a_vals)), dict(enumerate(b_vals)),
                           judge)
          comparisons[f"{judge}/{split}/{k}/{first}@{a.few}-{name}@{a.many}"] = (
              dict(p))
          print(f"  {first}@{a.few} - {name}@{a.many}: {p['diff']:+.3f} "
                f"[{p['low']:+.3f}, {p['high']:+.3f}] (n={p['n']}, "
                f"p_t={p['p_t']:.3f})")
  if a.out:
    with open(a.out) as f:
      out = json.load(f)
    out["comparisons"] = comparisons
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
      json.dump(out, f, indent=1)
    os.replace(tmp, a.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
