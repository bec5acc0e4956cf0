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
XLA's default optimization.
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


# The longest test files, longest first (seconds of setup + calls on the idle
# 2-core CPU, docs/benchmarks.md "The test suite"). pytest-xdist's
# ``--dist loadfile`` hands out files in collection order, so starting with
# these keeps a long file from running alone at the end while the other
# worker has nothing left to do.
_LONGEST_FIRST = (
    "test_tts_duration.py", "test_tts_experiment.py", "test_configs.py",
    "test_long_runs.py", "test_tts_zeroshot.py", "test_aligner_timings.py",
    "test_duration_tacotron.py", "test_evaluation_parallel.py",
    "test_methods.py", "test_cli_speed.py", "test_api.py",
    "test_api_zeroshot.py")


def pytest_collection_modifyitems(session, config, items):  # pylint: disable=unused-argument
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(
      os.path.basename(str(item.fspath)), len(rank)))  # stable: rest in order
