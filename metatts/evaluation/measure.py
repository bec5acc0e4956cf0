"""Measuring clips for the judges: in worker processes, cached on disk.

Judging a samples folder (:mod:`metatts.evaluation.pipeline`) has two halves:

* *measuring* what each audio source alone costs seconds for: reading it,
  its Resemblyzer embedding (``"embed"``), its WORLD analysis (``"features"``,
  kept for reference clips) or its WORLD analysis + DTW against the same-text
  reference with MCD and F0 errors (``"world"``), its PocketSphinx transcript
  (``"asr"``), its DNSMOS (``"dnsmos"``); a Griffin-Lim resynthesis of a
  reference clip is measured like a file;
* *scoring* in the parent, in milliseconds: cosines against enrollments,
  EER trials, WER counts against the text, aggregation.

This module does the measuring. One :class:`Request` is one audio source and
the parts still missing for it; :func:`measure` does it. :class:`Runner` runs
requests in the calling process (``workers=1``) or in a pool of ``spawn``-ed
worker processes, each of which loads Resemblyzer and PocketSphinx once (JAX
in the parent is not fork-safe, hence ``spawn``). The very same
:func:`measure` runs either way, so the numbers are identical. (Limiting
numpy's BLAS to one thread in the workers was tried: it changes the
Resemblyzer embeddings at 1e-7, so the workers keep the libraries'
defaults.)

:class:`Cache` keeps every measured part in ``<folder>/<fingerprint>/
<entry>.json``. An entry is keyed by the clip's path relative to the samples
folder and the SHA-256 of its bytes; a ``"world"`` part also by the
reference clip's hash; the fingerprint hashes the judge settings, the judges'
package versions and the source of the judge modules. A rerun (after an
interruption, or with one more method) measures only what is new or changed.

Errors: a clip that fails with ``ValueError``/``FileNotFoundError`` (silent,
unreadable, NaN: the judges' documented failures) gives ``{"error": msg}``
for that part, which is cached like a result. Any other exception of a clip
is an error too, but is not cached. A missing judge (``ImportError``) stops
the run.

References:
  Python ``concurrent.futures.ProcessPoolExecutor`` and ``multiprocessing``
  start methods (``spawn``).
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import hashlib
import json
import logging
import multiprocessing
import os
import tempfile
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from metatts.evaluation.audio_io import EVAL_SAMPLE_RATE, load_wav

log = logging.getLogger(__name__)

# Parts in the order they are computed (a clip's first failing part is its
# error, as in the serial judge): the embedding, the WORLD analysis (kept, for
# references) or WORLD + DTW against the reference, the transcript, DNSMOS.
PARTS = ("embed", "features", "world", "asr", "dnsmos")
GRIFFIN_LIM_ITERS = 32
GRIFFIN_LIM_SEED = 0
# Bump when a judge's output changes in a way the source hash cannot see.
CACHE_VERSION = 1
# Auto mode: at most this many workers, and none below this many seconds of
# estimated serial work (starting a worker, which loads torch, Resemblyzer,
# PocketSphinx and JAX, costs about 13 CPU-seconds).
MAX_AUTO_WORKERS = 4
MIN_PARALLEL_SECONDS = 60.0
# Rough CPU-seconds per part of a ~2 s clip on the 2-core development VM
# (docs/benchmarks.md, "Judging"; DNSMOS a guess); only the auto mode uses
# them.
PART_SECONDS = {"load": 0.002, "embed": 0.09, "features": 0.21,
                "world": 0.23, "asr": 0.86, "dnsmos": 0.3,
                "griffin_lim": 1.2}
# Requests per pool task: the per-task overhead is milliseconds and a clip
# seconds, so small chunks balance the load best.
MAX_CHUNK = 4


class Request(NamedTuple):
  """One audio source to measure and the parts still missing for it."""
  wav: str  # the file read (for griffin_lim: the reference clip)
  griffin_lim: bool  # measure metatts's Griffin-Lim resynthesis of wav
  parts: Tuple[str, ...]  # subset of PARTS, in PARTS order
  ref: Optional[object] = None  # world.WorldFeatures of the same-text reference
  f0_method: str = "dio"


# --------------------------------------------------------------- measuring
def _embed(wav, req):
  from metatts.evaluation import secs  # pylint: disable=g-import-not-at-top
  return secs.embed_utterance(wav, EVAL_SAMPLE_RATE, req.wav)


def _features(wav, req):
  from metatts.evaluation import world  # pylint: disable=g-import-not-at-top
  return world.world_features(wav, EVAL_SAMPLE_RATE, f0_method=req.f0_method,
                              name=req.wav)


def _world(wav, req):
  from metatts.evaluation import f0, mcd  # pylint: disable=g-import-not-at-top
  from metatts.evaluation.dtw import align  # pylint: disable=g-import-not-at-top
  feat = _features(wav, req)
  path = align(feat.mcep[:, 1:], req.ref.mcep[:, 1:])
  fm = f0.f0_metrics_from_features(feat, req.ref, path)
  return {"mcd": mcd.mcd_from_features(feat, req.ref, path),
          "f0_rmse": fm.rmse_cents, "f0_rmse_hz": fm.rmse_hz, "vde": fm.vde}


def _asr(wav, req):
  from metatts.evaluation import wer  # pylint: disable=g-import-not-at-top
  return wer.transcribe(wav, EVAL_SAMPLE_RATE, req.wav)


def _dnsmos(wav, req):  # pylint: disable=unused-argument
  from metatts.evaluation import naturalness  # pylint: disable=g-import-not-at-top
  return naturalness.dnsmos(wav, EVAL_SAMPLE_RATE)


_PART_FNS: Dict[str, Callable] = {"embed": _embed, "features": _features,
                                  "world": _world, "asr": _asr,
                                  "dnsmos": _dnsmos}


def _error(e: Exception) -> dict:
  if isinstance(e, ImportError):
    raise e  # a judge is not installed: a setup problem, not a bad clip
  if isinstance(e, (ValueError, FileNotFoundError)):
    return {"error": str(e), "type": type(e).__name__}
  return {"error": f"{type(e).__name__}: {e}", "type": "ValueError",
          "uncached": True}


def measure(req: Request) -> dict:
  """Measures the missing parts of one audio source.

  Args:
    req: What to read and which parts to compute.

  Returns:
    ``{"load": None, part: value, ...}`` for each computed part, stopping at
    the first failing one, whose value is ``{"error": message, "type":
    exception name}``; a source that cannot be read (or resynthesized) gives
    ``{"load": {"error": ...}}``.
  """
  try:
    wav, _ = load_wav(req.wav, EVAL_SAMPLE_RATE)
    if req.griffin_lim:
      from metatts.evaluation.vocoding import vocode_real  # pylint: disable=g-import-not-at-top
      wav = vocode_real(wav, EVAL_SAMPLE_RATE, n_iter=GRIFFIN_LIM_ITERS,
                        seed=GRIFFIN_LIM_SEED)
  except Exception as e:  # pylint: disable=broad-except
    return {"load": _error(e)}
  out: dict = {"load": None}  # read fine
  for part in req.parts:
    try:
      out[part] = _PART_FNS[part](wav, req)
    except Exception as e:  # pylint: disable=broad-except
      out[part] = _error(e)
      break
  return out


def _measure_chunk(reqs: Sequence[Request]) -> List[dict]:
  return [measure(r) for r in reqs]


def first_error(measured: dict) -> Optional[dict]:
  """The error of a source's measurement (``"load"`` first, then PARTS)."""
  for part in ("load",) + PARTS:
    v = measured.get(part)
    if isinstance(v, dict) and "error" in v:
      return v
  return None


def raise_error(err: dict):
  """Re-raises a measured error with its exception type."""
  cls = FileNotFoundError if err.get("type") == "FileNotFoundError" else (
      ValueError)
  raise cls(err["error"])


# ------------------------------------------------------------------- cache
def _encode(v):
  if isinstance(v, np.ndarray):
    return {"__nd__": str(v.dtype), "shape": list(v.shape),
            "b64": base64.b64encode(np.ascontiguousarray(v).tobytes()
                                    ).decode("ascii")}
  if isinstance(v, tuple) and hasattr(v, "_fields"):  # WorldFeatures
    return {"__world__": {k: _encode(x) for k, x in v._asdict().items()}}
  if isinstance(v, dict):
    return {k: _encode(x) for k, x in v.items()}
  if isinstance(v, (np.floating, np.integer)):
    return v.item()
  return v


def _decode(v):
  if isinstance(v, dict):
    if "__nd__" in v:
      return np.frombuffer(base64.b64decode(v["b64"]), dtype=np.dtype(
          v["__nd__"])).reshape(v["shape"]).copy()
    if "__world__" in v:
      from metatts.evaluation.world import WorldFeatures  # pylint: disable=g-import-not-at-top
      return WorldFeatures(**{k: _decode(x) for k, x in v["__world__"].items()})
    return {k: _decode(x) for k, x in v.items()}
  return v


_CODE_FILES = (("evaluation", "audio_io.py"), ("evaluation", "secs.py"),
               ("evaluation", "world.py"), ("evaluation", "dtw.py"),
               ("evaluation", "mcd.py"), ("evaluation", "f0.py"),
               ("evaluation", "wer.py"), ("evaluation", "vocoding.py"),
               ("evaluation", "naturalness.py"), ("evaluation", "measure.py"),
               ("audio", "features.py"), ("audio", "io.py"))
_PACKAGES = ("numpy", "scipy", "soundfile", "torch", "resemblyzer",
             "pocketsphinx", "pyworld", "pysptk", "librosa", "jax", "jaxlib",
             "speechmos", "onnxruntime")


def fingerprint() -> str:
  """Hash of everything a measurement depends on besides its inputs."""
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  from metatts.evaluation import world  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  settings = {"version": CACHE_VERSION, "sample_rate": EVAL_SAMPLE_RATE,
              "mcep_order": world.MCEP_ORDER,
              "frame_period_ms": world.FRAME_PERIOD_MS,
              "griffin_lim": [GRIFFIN_LIM_ITERS, GRIFFIN_LIM_SEED]}
  for p in _PACKAGES:
    try:
      settings[p] = metadata.version(p)
    except metadata.PackageNotFoundError:
      settings[p] = None
  h.update(json.dumps(settings, sort_keys=True).encode())
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for parts in _CODE_FILES:
    with open(os.path.join(root, *parts), "rb") as f:
      h.update(f.read())
  return h.hexdigest()[:16]


def file_sha256(path: str) -> Optional[str]:
  """SHA-256 of a file's bytes, or None if it cannot be read."""
  try:
    with open(path, "rb") as f:
      return hashlib.sha256(f.read()).hexdigest()
  except OSError:
    return None


_WAV_MARK = "<wav>"


class Cache:
  """Measured parts on disk, one JSON file per audio source.

  Args:
    folder: Cache folder (e.g. ``WORKDIR/report/.judged``); ``None`` disables
      the cache (nothing read or written).
  """

  def __init__(self, folder: Optional[str]):
    self.folder = (os.path.join(folder, fingerprint()) if folder else None)

  @staticmethod
  def key(kind: str, relpath: str, sha: Optional[str]) -> Optional[str]:
    """Entry id of a source (``kind`` is ``"file"`` or ``"griffin_lim"``)."""
    if sha is None:
      return None
    return hashlib.sha256(f"{kind}\0{relpath}\0{sha}".encode()
                          ).hexdigest()[:32]

  def _path(self, key: str) -> str:
    return os.path.join(self.folder, key + ".json")

  def get(self, key: Optional[str], wav: str) -> dict:
    """Cached parts of an entry (``{}`` if none or unreadable)."""
    if not self.folder or key is None:
      return {}
    try:
      with open(self._path(key), encoding="utf-8") as f:
        text = f.read()
      parts = json.loads(text.replace(json.dumps(_WAV_MARK)[1:-1],
                                      json.dumps(wav)[1:-1]))["parts"]
    except (OSError, ValueError, KeyError, TypeError):
      return {}
    return {k: _decode(v) for k, v in parts.items()}

  def put(self, key: Optional[str], wav: str, parts: dict) -> None:
    """Merges ``parts`` into an entry (atomically; errors not to cache are
    skipped)."""
    if not self.folder or key is None:
      return
    keep = {k: v for k, v in parts.items()
            if not (isinstance(v, dict) and v.get("uncached"))}
    if not keep:
      return
    merged = {k: _encode(v) for k, v in keep.items()}
    old_path = self._path(key)
    if os.path.exists(old_path):
      try:
        with open(old_path, encoding="utf-8") as f:
          merged = dict(json.load(f)["parts"], **merged)
      except (OSError, ValueError, KeyError, TypeError):
        pass
    text = json.dumps({"parts": merged}, sort_keys=True)
    # The clip's path is stored as a marker, so a moved folder still matches.
    text = text.replace(json.dumps(wav)[1:-1], json.dumps(_WAV_MARK)[1:-1])
    os.makedirs(self.folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-")
    try:
      with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
      os.replace(tmp, old_path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise


# ------------------------------------------------------------------ runner
def estimate_seconds(parts: Sequence[str], griffin_lim: bool) -> float:
  """Rough serial CPU-seconds to measure ``parts`` of one source."""
  return (PART_SECONDS["load"] + sum(PART_SECONDS[p] for p in parts)
          + (PART_SECONDS["griffin_lim"] if griffin_lim else 0.0))


def resolve_workers(workers: Optional[int], work_seconds: float) -> int:
  """Worker count: ``None``/``0`` is auto, ``1`` serial, ``N`` a pool of N.

  Auto uses the usable CPUs, at most :data:`MAX_AUTO_WORKERS`, and no pool
  when the estimated serial work (:func:`estimate_seconds`) is under
  :data:`MIN_PARALLEL_SECONDS`.
  """
  if workers is None or workers == 0:
    try:
      cpus = len(os.sched_getaffinity(0))
    except AttributeError:
      cpus = os.cpu_count() or 1
    if work_seconds < MIN_PARALLEL_SECONDS:
      return 1
    return max(1, min(cpus, MAX_AUTO_WORKERS))
  if not isinstance(workers, (int, np.integer)) or workers < 0:
    raise ValueError(f"workers={workers!r}: use a positive number of judging "
                     "processes, 1 for serial, or 0 (auto).")
  return int(workers)


class Runner:
  """Measures requests serially or in a spawn pool (created on first use).

  Args:
    workers: Number of processes; 1 measures in the calling process.
  """

  def __init__(self, workers: int):
    self.workers = int(workers)
    self._pool: Optional[cf.ProcessPoolExecutor] = None

  def run(self, requests: Sequence[Request],
          done: Callable[[int, dict], None]) -> None:
    """Measures every request; calls ``done(index, result)`` as each ends.

    In a pool ``done`` is called in completion order; each result is that of
    ``requests[index]``.
    """
    if not requests:
      return
    if self.workers <= 1:
      for i, r in enumerate(requests):
        done(i, measure(r))
      return
    if self._pool is None:
      self._pool = cf.ProcessPoolExecutor(
          max_workers=self.workers,
          mp_context=multiprocessing.get_context("spawn"))
    chunk = max(1, min(MAX_CHUNK, len(requests) // (self.workers * 4)))
    starts = range(0, len(requests), chunk)
    futures = {self._pool.submit(_measure_chunk, requests[s:s + chunk]): s
               for s in starts}
    try:
      for fut in cf.as_completed(futures):
        try:
          results = fut.result()
        except cf.process.BrokenProcessPool as e:
          raise RuntimeError(
              f"a judging worker process died ({e}); the clips judged so far "
              f"are cached.{_main_hint()} Otherwise rerun with workers=1 "
              "(--workers 1) to find the clip that crashes a judge.") from e
        for j, res in enumerate(results):
          done(futures[fut] + j, res)
    finally:
      for fut in futures:
        fut.cancel()

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=True, cancel_futures=True)
      self._pool = None

