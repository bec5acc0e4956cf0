"""Lazy imports of the optional evaluation dependencies.

The core library is JAX-only. The judges need PyTorch (Resemblyzer), PocketSphinx
and PyWORLD/pysptk, which come with ``pip install metatts[evaluation]``. They are
imported on first use, so ``import metatts.evaluation`` always works.
"""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType

_INSTALL_HINT = {
    "resemblyzer": "pip install 'metatts[evaluation]' (installs torch and resemblyzer)",
    "torch": "pip install 'metatts[evaluation]' (installs torch==2.13.0 CPU)",
    "pocketsphinx": "pip install 'metatts[evaluation]' (installs pocketsphinx>=5)",
    "pyworld": "pip install 'metatts[audio]' (installs pyworld)",
    "pysptk": "pip install 'metatts[audio]' (installs pysptk)",
    "speechmos": "pip install speechmos onnxruntime (optional DNSMOS naturalness proxy)",
    "onnxruntime": "pip install speechmos onnxruntime (optional DNSMOS naturalness proxy)",
}


def require(module: str) -> ModuleType:
  """Imports an optional dependency or explains how to install it.

  Args:
    module: Importable module name, e.g. ``"resemblyzer"``.

  Returns:
    The imported module.

  Raises:
    ImportError: If the module is missing; the message names the pip command.
  """
  top = module.split(".")[0]
  try:
    with warnings.catch_warnings():
      # webrtcvad (pulled in by resemblyzer) and pyworld import pkg_resources.
      warnings.simplefilter("ignore", UserWarning)
      warnings.simplefilter("ignore", DeprecationWarning)
      return importlib.import_module(module)
  except ImportError as e:
    hint = _INSTALL_HINT.get(top, "pip install 'metatts[evaluation]'")
    raise ImportError(
        f"metatts.evaluation needs the optional package {top!r}, which could not "
        f"be imported ({e}). Install it with: {hint}") from e


def available(module: str) -> bool:
  """Returns whether an optional dependency can be imported."""
  try:
    require(module)
    return True
  except ImportError:
    return False
