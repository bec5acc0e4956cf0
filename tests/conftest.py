"""Test-session setup: one persistent XLA compilation cache for the run.

Many tests compile the same programs (the smoke runs, their ``kill -9``
resume, the CLI and launcher subprocesses, the export reloads). A cache
directory created fresh for this session, exported through the environment
so that subprocesses use it too, compiles each program once per run; a run
never reads a previous run's cache, so every run still compiles from
scratch. ``METATTS_TEST_XLA_CACHE=DIR`` uses (and keeps) ``DIR`` instead;
``METATTS_TEST_XLA_CACHE=off`` disables the cache.

The tests are compile-bound (tiny models, few steps), so the session also
compiles with ``--xla_backend_optimization_level=0``: the same XLA programs
with less LLVM optimization, which halves the smoke run's wall time
(docs/benchmarks.md, "The test suite"). ``METATTS_TEST_XLA_OPT=off`` keeps
XLA's default optimization. For the same reason inner loops stay rolled
(``METATTS_CPU_UNROLL=0`` unless set).
"""

import os
import shutil
import tempfile

_OPT_FLAG = "--xla_backend_optimization_level=0"
if (os.environ.get("METATTS_TEST_XLA_OPT", "") != "off"
    and _OPT_FLAG not in os.environ.get("XLA_FLAGS", "")):
  # Before jax is imported; subprocesses inherit it through the environment.
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                             + _OPT_FLAG).strip()

# Inner loops stay rolled (``metatts.meta.inner.max_cpu_unroll``): on the
# tiny test models an unrolled 5-step adaptation compiles in ~12 s against
# ~7 s rolled, and runs in about the same time. Both compute the same steps
# (test_meta.py checks them against each other). METATTS_CPU_UNROLL=16
# tests the library's CPU default instead.
os.environ.setdefault("METATTS_CPU_UNROLL", "0")

_SETTING = os.environ.get("METATTS_TEST_XLA_CACHE", "")
_OWNED = None
if _SETTING != "off":
  if _SETTING:
    _DIR = os.path.abspath(os.path.expanduser(_SETTING))
    os.makedirs(_DIR, exist_ok=True)
  else:
    _DIR = _OWNED = tempfile.mkdtemp(prefix="metatts-test-xla-")
    os.environ["METATTS_TEST_XLA_CACHE"] = _DIR  # pytest-xdist workers share it
  # Read by jax when it is imported, here and in every subprocess.
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _DIR
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", _DIR)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def pytest_sessionfinish(session, exitstatus):  # pylint: disable=unused-argument
  if _OWNED and not hasattr(session.config, "workerinput"):
    shutil.rmtree(_OWNED, ignore_errors=True)
