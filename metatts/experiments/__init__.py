"""Experiments as library functions: ``run(config, workdir) -> dict``.

``experiments/main.py`` and notebooks call :func:`run`, which dispatches on
``config.experiment`` through the explicit registry ``EXPERIMENTS``.
"""

from typing import Any, Callable, Dict

from metatts.experiments import sinusoid
from metatts.experiments import tts

EXPERIMENTS: Dict[str, Callable[[Any, str], Dict[str, Any]]] = {
    "sinusoid": sinusoid.run,
    "tts": tts.run,
}


def run(config, workdir: str) -> Dict[str, Any]:
  """Runs the experiment named by ``config.experiment`` in ``workdir``.

  Args:
    config: an experiment config (``ml_collections.ConfigDict``) with an
      ``experiment`` key naming an entry of ``EXPERIMENTS``.
    workdir: output directory; a rerun in the same directory resumes.

  Returns:
    The experiment's result dict.

  Raises:
    ValueError: if ``config.experiment`` is missing or unknown.
  """
  name = config.get("experiment") if hasattr(config, "get") else None
  if name not in EXPERIMENTS:
    raise ValueError(
        f"config.experiment={name!r} is not a known experiment; set it to one "
        f"of {sorted(EXPERIMENTS)} in the config's get_config().")
  return EXPERIMENTS[name](config, workdir)


__all__ = ["EXPERIMENTS", "run"]
