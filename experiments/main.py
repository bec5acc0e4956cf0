r"""Runs a metatts experiment from a config file.

Usage:

  python experiments/main.py --config experiments/configs/sinusoid.py:maml \
      --workdir runs/quickstart [--config.num_steps=2000]

The config is locked: overriding a key it does not have is an error, and so
is a value of the wrong type or out of range (``--config.num_steps=-5``): one
line naming the key and the fix, exit status 2, nothing written. Running
again with the same ``--workdir`` resumes from the newest checkpoint. All the
work is done by ``metatts.experiments.run(config, workdir)``, which notebooks
can call directly.
"""

import json
import os
import sys

from absl import app
from absl import logging
from absl import flags
from ml_collections import config_flags

# Allow running from a source checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from metatts import compile_cache  # pylint: disable=g-import-not-at-top
from metatts import experiments  # pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. "
    "experiments/configs/sinusoid.py:maml", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (checkpoints, TensorBoard events, "
    "metrics.json, results). Rerunning with the same one resumes.")
flags.mark_flags_as_required(["config", "workdir"])


def _config_keys(argv) -> str:
  """Best-effort list of the config's keys, for the error message."""
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")),
              None)
  if spec is None and "--config" in argv[:-1]:
    spec = argv[argv.index("--config") + 1]
  if not spec:
    return "?"
  path, _, arg = spec.partition(":")
  try:
    namespace = {}
    with open(path) as f:
      exec(compile(f.read(), path, "exec"), namespace)  # pylint: disable=exec-used
    config = namespace["get_config"](arg) if arg else namespace["get_config"]()
    return ", ".join(sorted(config.keys()))
  except Exception:  # pylint: disable=broad-except
    return "?"


def _parse_flags(argv):
  """Parses flags; an override of a key the config lacks is a clear error."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    bad = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    detail = e
    while detail.args and isinstance(detail.args[0], BaseException):
      detail = detail.args[0]
    detail = str(detail.args[0] if detail.args else detail).replace("\n", " ")
    sys.stderr.write(
        f"error: {' '.join(bad) or 'a --config.KEY override'} names a key that "
        f"the config does not have ({detail}). The config is "
        f"locked; valid keys are: {_config_keys(argv)}. Fix the spelling or "
        "add the key to the config's get_config().\n")
    sys.exit(2)
  except flags.Error as e:
    sys.stderr.write(f"error: {e}\nPass --helpshort to see the flags.\n")
    sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file at INFO.
  workdir = _WORKDIR.value
  compile_cache.enable()  # ~/.cache/metatts/xla; METATTS_COMPILE_CACHE=off
  try:
    result = experiments.run(_CONFIG.value, workdir)
  except experiments.ConfigError as e:
    # Checked before anything is written to the workdir: one line per bad
    # key, naming the value and the fix.
    sys.stderr.write("".join(f"error: {line}\n" for line in e.problems))
    sys.exit(2)
  print(json.dumps(result, indent=1))
  print(f"\nDone. Results: {result.get('results_path', workdir)}")
  if result.get("plot_path"):
    print(f"Adaptation plot: {result['plot_path']}")
  print(f"Curves: tensorboard --logdir {os.path.abspath(workdir)}  "
        f"(or {os.path.join(os.path.abspath(workdir), 'metrics.json')})")


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
