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

import pytest

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


# ---------------------------------------------------------------------------
# Scheduling the files on the pytest-xdist workers (``make test``: 2 workers,
# ``--dist loadfile``).
#
# xdist hands out files in the order of their number of tests, and gives a
# worker its next file as soon as it has at most 2 tests left. The suite's
# longest files hold 2-4 tests behind one long module fixture (the study,
# the smoke run), so a worker that started one of them at once took the
# next long file as well while the other worker ran out of work: in session
# 8 the two workers were busy for 1003 s and 1262 s of one 1289-s run. Here
# the longest file left goes out first (seconds per file measured in that
# run; a file not listed counts a second per test), and a worker gets its
# next file only when it is on its last test.
_FILE_SECONDS = {
    "test_tts_duration.py": 253, "test_tts_experiment.py": 241,
    "test_long_runs.py": 195, "test_configs.py": 182,
    "test_tts_zeroshot.py": 141, "test_aligner_timings.py": 115,
    "test_duration_tacotron.py": 107, "test_methods.py": 102,
    "test_evaluation_parallel.py": 94, "test_api_zeroshot.py": 70,
    "test_api.py": 69, "test_tacotron.py": 69, "test_cli_speed.py": 67,
    "test_meta.py": 58, "test_evaluation_report.py": 53,
    "test_functional.py": 49, "test_wavenet.py": 45, "test_aligner.py": 35,
    "test_sinusoid.py": 33, "test_evaluation_judges.py": 32,
    "test_cli.py": 29, "test_reliability.py": 25,
    "test_compile_cache.py": 25, "test_meta_devices.py": 25,
    "test_launcher.py": 24, "test_synth.py": 24, "test_nsf.py": 50,
}


def _file_seconds(scope, tests):
  return _FILE_SECONDS.get(os.path.basename(scope), len(tests))


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist, if loaded
def pytest_xdist_make_scheduler(config, log):
  """Longest file first, next file on the last test (``--dist loadfile``)."""
  if config.getvalue("dist") != "loadfile":
    return None
  from xdist.scheduler import LoadFileScheduling  # pylint: disable=g-import-not-at-top

  class LongestFileFirst(LoadFileScheduling):
    """``LoadFileScheduling`` with the order and refill rule above."""

    def _assign_work_unit(self, node):
      longest = max(self.workqueue,
                    key=lambda s: _file_seconds(s, self.workqueue[s]))
      self.workqueue.move_to_end(longest, last=False)
      super()._assign_work_unit(node)

    def _reschedule(self, node):
      if node.shutting_down:
        return
      if not self.workqueue:
        node.shutdown()
        return
      if self._pending_of(self.assigned_work[node]) > 1:
        return
      self._assign_work_unit(node)

  return LongestFileFirst(config, log)
