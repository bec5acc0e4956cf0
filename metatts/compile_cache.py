"""A persistent XLA compilation cache for metatts' entry points.

The CLI (``python -m metatts``), the experiment launcher
(``experiments/main.py``) and :func:`metatts.load` turn on jax's persistent
compilation cache, so a second ``adapt`` or ``say`` with the same shapes
loads its compiled programs from disk instead of compiling them again.

* Where: ``~/.cache/metatts/xla``; ``METATTS_COMPILE_CACHE=DIR`` picks
  another folder, ``METATTS_COMPILE_CACHE=off`` turns the cache off.
* A cache the process already configured (``JAX_COMPILATION_CACHE_DIR`` or
  ``jax.config.update("jax_compilation_cache_dir", ...)``) is left as it is.
* Every program is written (``MIN_COMPILE_SECONDS = 0``; jax's default
  skips programs that compiled in under a second). A warm ``say`` runs 15
  programs, 12-13 of them small (eager ops, staging, the feature
  transforms): recompiling those took ~1.2 s of every run on the busy
  2-core CPU, reading them back ~0.05 s (entries are 2-800 KB;
  docs/benchmarks.md). jax keys entries by the program, the jax/XLA
  version, the flags and the devices, so a stale entry is never used;
  deleting the folder is always safe.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

ENV = "METATTS_COMPILE_CACHE"
DEFAULT_DIR = os.path.join("~", ".cache", "metatts", "xla")
MIN_COMPILE_SECONDS = 0.0  # cache every program (jax's default: >= 1 s)
_OFF = ("off", "0", "false", "no", "none")


def enable(directory: Optional[str] = None) -> Optional[str]:
  """Turns the persistent compilation cache on; returns its folder or None.

  Args:
    directory: the folder (default: ``$METATTS_COMPILE_CACHE`` or
      ``~/.cache/metatts/xla``). Ignored when ``METATTS_COMPILE_CACHE=off``
      or when jax already has a cache folder.

  Returns:
    The cache folder in use, or None when the cache is off or its folder
    cannot be created (a one-line warning then goes to stderr and
    everything still works, compiling as before).
  """
  setting = os.environ.get(ENV, "").strip()
  if setting.lower() in _OFF:
    return None
  import jax  # pylint: disable=g-import-not-at-top
  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  path = os.path.abspath(os.path.expanduser(directory or setting
                                            or DEFAULT_DIR))
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    print(f"metatts: compilation cache off: cannot create {path} ({e}); "
          f"set {ENV}=DIR to a writable folder or {ENV}=off.",
          file=sys.stderr)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    MIN_COMPILE_SECONDS)
  return path


__all__ = ["DEFAULT_DIR", "ENV", "MIN_COMPILE_SECONDS", "enable"]
