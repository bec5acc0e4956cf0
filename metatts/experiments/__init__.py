"""Experiments as library functions: ``run(config, workdir) -> dict``.

``experiments/main.py`` and notebooks call :func:`run`, which dispatches on
``config.experiment`` through the explicit registry ``EXPERIMENTS`` after
checking the config against its schema (``metatts.experiments.validation``).
"""

import os
from typing import Any, Callable, Dict

from metatts.experiments import sinusoid
from metatts.experiments import tts
from metatts.experiments import validation
from metatts.experiments import vocoder
from metatts.experiments.validation import ConfigError

EXPERIMENTS: Dict[str, Callable[[Any, str], Dict[str, Any]]] = {
    "sinusoid": sinusoid.run,
    "tts": tts.run,
    "vocoder": vocoder.run,
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
    ConfigError: (a ``ValueError``) before anything is written to
      ``workdir`` if the config fails its schema (a missing or unknown
      ``config.experiment``, a missing or unknown key, a value of the wrong
      type or out of range); one line per failure, naming the key, the value
      and the fix.
  """
  validation.validate(config, os.path.abspath(workdir))
  return EXPERIMENTS[config.experiment](config, workdir)


__all__ = ["ConfigError", "EXPERIMENTS", "run"]
