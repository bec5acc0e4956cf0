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
* Traces (``python -m metatts`` only): XLA's cache does not skip tracing
  the Python functions to jaxprs and lowering them to StableHLO, 2-4 s of
  a warm ``adapt`` or ``say`` on the busy 2-core CPU. Inside
  :func:`storing_traces` (the CLI's commands) the adaptation, Tacotron
  inference and Griffin-Lim (:func:`stored_jit`) keep their ``jax.export``
  serialization in ``<folder>/traces``, keyed by the function's closure,
  the argument shapes, the library versions and the source of metatts; a
  warm run deserializes it instead of tracing. The compiled program is the
  same, so the numbers are too (bit for bit: tests/test_cli_speed.py).
  Library calls (``metatts.load``, the evaluation) trace as plain
  ``jax.jit``.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import itertools
import json
import os
import platform
import re
import sys
from typing import Any, Callable, Iterator, Optional, Sequence

ENV = "METATTS_COMPILE_CACHE"
DEFAULT_DIR = os.path.join("~", ".cache", "metatts", "xla")
MIN_COMPILE_SECONDS = 0.0  # cache every program (jax's default: >= 1 s)
_OFF = ("off", "0", "false", "no", "none")
TRACE_DIR = "traces"  # stored jax.export traces, inside the cache folder
UNROLL_ENV = "METATTS_CPU_UNROLL"  # = metatts.meta.inner.UNROLL_ENV
# The cache folder enable() settled on; whether traces are stored there.
_STATE = {"dir": None, "traces": False}


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
    _STATE["dir"] = current
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
  _STATE["dir"] = path
  return path


@contextlib.contextmanager
def storing_traces() -> Iterator[None]:
  """Within the block, :func:`stored_jit` functions keep their traces.

  ``python -m metatts adapt`` / ``say`` run in it; library calls outside it
  (the API, the evaluation) trace with plain ``jax.jit`` as before. The
  traces go to ``<cache>/traces`` of the folder :func:`enable` settled on
  (none when the cache is off).
  """
  previous = _STATE["traces"]
  _STATE["traces"] = True
  try:
    yield
  finally:
    _STATE["traces"] = previous


def trace_dir() -> Optional[str]:
  """The folder of stored traces (``<cache>/traces``), or None when off.

  On inside :func:`storing_traces` once :func:`enable` returned a folder
  in this process (and ``METATTS_COMPILE_CACHE`` is not ``off``).
  """
  if _STATE["dir"] is None or not _STATE["traces"] or \
      os.environ.get(ENV, "").strip().lower() in _OFF:
    return None
  return os.path.join(_STATE["dir"], TRACE_DIR)


# ----------------------------------------------------------------------------
# Stored traces: jax.jit whose traced and lowered program is kept on disk.


def _strip_addresses(text: str) -> str:
  """``repr`` text without ``at 0x...`` addresses (they change per process)."""
  return re.sub(r" at 0x[0-9a-fA-F]+", "", text)


@functools.lru_cache(maxsize=1)
def _environment_key() -> str:
  """What a stored trace depends on besides its function and arguments.

  The versions of Python, jax, jaxlib, flax, optax, numpy and ml_dtypes
  (:func:`_version`: no import of flax or optax for it), the backend, jax's tracing-relevant configuration (x64, matmul precision,
  dtype promotion, PRNG implementation, ...), and the bytes of every
  ``.py`` file of the metatts package: any edit of metatts' code makes
  every stored trace a miss.
  """
  import jax  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  parts = [sys.version, platform.machine(), jax.default_backend()]
  for name in ("jax", "jaxlib", "flax", "optax", "numpy", "ml_dtypes"):
    parts.append(f"{name}={_version(name)}")
  for flag in ("jax_enable_x64", "jax_default_matmul_precision",
               "jax_numpy_rank_promotion", "jax_numpy_dtype_promotion",
               "jax_default_prng_impl", "jax_threefry_partitionable",
               "jax_dynamic_shapes", "jax_enable_checks"):
    parts.append(f"{flag}={getattr(jax.config, flag, None)!r}")
  try:  # every flag that jax's own jit cache keys on
    from jax._src import config as jax_config  # pylint: disable=g-import-not-at-top
    parts.append(_strip_addresses(repr(jax_config.trace_context())))
  except Exception:  # pylint: disable=broad-except
    parts.append("no trace_context")
  # Which inner loops are unrolled is read from this variable at trace time
  # (``metatts.meta.inner.UNROLL_ENV``; read here as text, so that the key
  # needs neither metatts.meta nor optax: ``say`` from a voice's cache).
  parts.append(f"cpu_unroll={os.environ.get(UNROLL_ENV, '').strip()}")
  h.update("\n".join(parts).encode())
  package = os.path.dirname(os.path.abspath(__file__))
  for root, dirs, files in os.walk(package):
    dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
    for name in sorted(files):
      if name.endswith(".py"):
        path = os.path.join(root, name)
        h.update(os.path.relpath(path, package).encode() + b"\0")
        with open(path, "rb") as f:
          h.update(f.read())
  return h.hexdigest()


def _version(name: str) -> str:
  """A package's version: its ``__version__`` once imported (the models and
  the meta-learners import flax and optax), else its installed metadata (a
  cached ``say`` imports neither; the two agree, tests/test_cli_speed.py)."""
  module = sys.modules.get(name)
  if module is not None and getattr(module, "__version__", None):
    return str(module.__version__)
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  try:
    return metadata.version(name)
  except metadata.PackageNotFoundError:
    return "none"


def _encode_tree(treedef) -> Any:
  """A PyTreeDef as JSON data (leaves, None, tuples, lists, dicts with str
  or int keys, NamedTuples); TypeError for anything else."""
  node = treedef.node_data()
  if node is None:
    return "*"
  kind, aux = node
  children = [_encode_tree(c) for c in treedef.children()]
  if kind is type(None):
    return None
  if kind is tuple:
    return {"tuple": children}
  if kind is list:
    return {"list": children}
  if kind is dict:
    keys = list(aux)
    if not all(isinstance(k, (str, int)) and not isinstance(k, bool)
               for k in keys):
      raise TypeError(f"dict keys {keys!r} are not all str or int")
    return {"dict": [[k, c] for k, c in zip(keys, children)]}
  if isinstance(kind, type) and issubclass(kind, tuple) and \
      hasattr(kind, "_fields"):
    return {"namedtuple": f"{kind.__module__}:{kind.__qualname__}",
            "names": list(kind._fields), "fields": children}
  raise TypeError(f"cannot store a tree with a {kind!r} node")


def _stored_class(data: Any) -> type:
  """The NamedTuple class an encoded node names, from an imported module."""
  module, qualname = data["namedtuple"].split(":")
  # Only a class this process has already imported: a cache file never
  # makes us import anything.
  cls = sys.modules[module]
  for part in qualname.split("."):
    cls = getattr(cls, part)
  if not (isinstance(cls, type) and issubclass(cls, tuple) and
          len(getattr(cls, "_fields", ())) == len(data["fields"])):
    raise TypeError(f"{data['namedtuple']} is not the stored NamedTuple")
  return cls


def _rebuild(data: Any, leaves: Iterator[Any], classes: bool = False) -> Any:
  """The encoded tree filled with ``leaves``.

  With ``classes`` its NamedTuples are the stored classes (which must be
  imported already); without, ``collections.namedtuple``s of the stored
  field names (:class:`StoredCall`, which may run before the class's
  module is imported).
  """
  if data == "*":
    return next(leaves)
  if data is None:
    return None
  if "tuple" in data:
    return tuple(_rebuild(c, leaves, classes) for c in data["tuple"])
  if "list" in data:
    return [_rebuild(c, leaves, classes) for c in data["list"]]
  if "dict" in data:
    return {k: _rebuild(c, leaves, classes) for k, c in data["dict"]}
  cls = _stored_class(data) if classes else collections.namedtuple(
      data["namedtuple"].split(":")[1].split(".")[-1], data["names"])
  return cls(*[_rebuild(c, leaves, classes) for c in data["fields"]])


def _decode_example(data: Any) -> Any:
  """An object whose tree structure is the encoded one (leaves are 0)."""
  return _rebuild(data, itertools.repeat(0), classes=True)


def _device():
  """jax's default device (``jax_default_device`` or the first one)."""
  import jax  # pylint: disable=g-import-not-at-top
  device = jax.config.jax_default_device
  return device if isinstance(device, jax.Device) else jax.devices()[0]


def _uses_lapack(serialized: bytes) -> bool:
  """Whether an exported program calls LAPACK (its custom-call targets are
  named ``lapack_*``; the bytecode keeps them as plain strings)."""
  return b"lapack" in bytes(serialized)


@contextlib.contextmanager
def _lapack_setup_skipped(skip: bool):
  """Skips jax's LAPACK set-up while lowering an exported CPU program.

  ``Exported.call`` on CPU first runs ``initialize_lapack()``, which imports
  scipy.linalg for LAPACK's function pointers (0.35-0.7 s of a warm
  ``say``, measured with cProfile) even for a program without a single
  LAPACK call; ``jax.jit`` of the same function does not. With ``skip``
  (the program has no ``lapack_*`` custom call) that set-up is a no-op for
  the duration of the call; a jax without this internal hook is left alone.
  """
  try:
    from jax._src.export import _export as internals  # pylint: disable=g-import-not-at-top
  except ImportError:
    internals = None
  original = getattr(internals, "_ensure_backends_initialized", None)
  if not skip or original is None:
    yield
    return
  internals._ensure_backends_initialized = lambda platforms: None  # pylint: disable=protected-access
  try:
    yield
  finally:
    internals._ensure_backends_initialized = original  # pylint: disable=protected-access


def tree_text(treedef) -> str:
  """A call's argument tree as the text hashed into its trace's file name."""
  return _strip_addresses(str(treedef))


def _trace_file(directory: str, name: str, key_text: str, in_tree_text: str,
                avals, statics) -> str:
  """Where the trace of one call signature of a stored function lives."""
  h = hashlib.sha256()
  for part in (name, key_text, in_tree_text, repr(avals), repr(statics)):
    h.update(part.encode() + b"\0")
  # NAME-ENVIRONMENT-CALL: traces of older metatts/jax versions are found
  # by their ENVIRONMENT part and removed when a new one is written.
  return os.path.join(directory, f"{name}-{_environment_key()[:16]}-"
                      f"{h.hexdigest()[:32]}")


def _read_trace(path: str, num_args: int):
  """``(Exported, output tree as JSON data, LAPACK flag)`` of a stored trace.

  Raises:
    OSError, ValueError and whatever ``jax.export`` raises on a file that
    is absent, damaged or not made for ``num_args`` flat arguments.
  """
  from jax import export  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    data = f.read()
  if not data.startswith(_MAGIC):
    raise ValueError("not a stored trace")
  head, body = data[len(_MAGIC):].split(b"\n", 1)
  exported = export.deserialize(bytearray(body))
  if len(exported.in_avals) != num_args:
    raise ValueError("stored trace does not fit")
  return exported, json.loads(head), _uses_lapack(body)


def _call_exported(exported, leaves, lapack):
  """Runs an exported program on flat arguments; its flat outputs.

  ``lapack`` is None once this process has called it (nothing to set up),
  else whether the program calls LAPACK (:func:`_lapack_setup_skipped`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  # Arguments placed on the device first: Exported.call returns arrays
  # committed to it, and a call with those after one with host arrays
  # (the restored parameters) would lower and load a second XLA program
  # (2-3 s of a warm adapt, measured); committed, every call is the same.
  leaves = jax.device_put(list(leaves), _device())
  if lapack is None:  # compiled: the lowering below runs no more
    return exported.call(*leaves)
  with _lapack_setup_skipped(not lapack):
    return exported.call(*leaves)


class TraceMissing(LookupError):
  """No stored trace for this call (:class:`StoredCall`)."""


class StoredCall:
  """A stored trace of a :func:`stored_jit` function, called without it.

  Found by the function's ``name``, its :attr:`StoredJit.key_text` and the
  text of its argument tree (:func:`tree_text`), all recorded by an earlier
  process that had the function; the call takes the flat argument leaves
  in tree order and returns the flat outputs. Nothing is traced and neither
  the function nor its model is needed (``python -m metatts say`` from a
  voice's cache: :mod:`metatts.say_cache`). The program is the one the
  function compiles, so the numbers are the same bit for bit.
  """

  def __init__(self, name: str, key_text: str, in_tree_text: str):
    self.name = re.sub(r"[^A-Za-z0-9_]", "_", name)
    self.key_text = key_text
    self.in_tree_text = in_tree_text
    self._entries = {}  # (avals, statics) -> [Exported, LAPACK flag]

  def __call__(self, leaves: Sequence[Any], **statics) -> Any:
    """The outputs for flat ``leaves``; ``statics`` as the function's.

    Raises:
      TraceMissing: traces are off, or none was stored for these shapes,
        dtypes and static values (the caller falls back to the function).
    """
    directory = trace_dir()
    if directory is None:
      raise TraceMissing(f"{self.name}: stored traces are off")
    avals = tuple((tuple(x.shape), str(x.dtype),
                   bool(getattr(x, "weak_type", False))) for x in leaves)
    signature = (avals, tuple(sorted((k, repr(v))
                                     for k, v in statics.items())))
    entry = self._entries.get(signature)
    if entry is None:
      path = _trace_file(directory, self.name, self.key_text,
                         self.in_tree_text, *signature)
      try:
        exported, head, lapack = _read_trace(path, len(leaves))
        _rebuild(head, iter(exported.out_avals))  # the tree fits
      except Exception as e:  # pylint: disable=broad-except
        raise TraceMissing(f"{self.name}: no stored trace for this call "
                           f"({type(e).__name__})") from None
      entry = self._entries[signature] = [exported, lapack, head]
    out = _call_exported(entry[0], leaves, entry[1])
    entry[1] = None
    return _rebuild(entry[2], iter(out))


_MAGIC = b"metatts-trace 1\n"
_MISS = object()


class StoredJit:
  """``jax.jit(fun)`` whose trace is kept on disk (:func:`stored_jit`)."""

  def __init__(self, fun: Callable[..., Any], name: str, key: Any,
               static_argnames: Sequence[str] = ()):
    import jax  # pylint: disable=g-import-not-at-top
    self.jitted = jax.jit(fun, static_argnames=tuple(static_argnames))
    self.name = re.sub(r"[^A-Za-z0-9_]", "_", name)
    self.static_argnames = frozenset(static_argnames)
    self._key = key
    self._key_text = None
    # call signature -> (Exported, out_tree, LAPACK flag or None) or _MISS
    self._entries = {}
    self.loaded = 0  # traces read from disk in this process
    self.stored = 0  # traces written

  @property
  def key_text(self) -> str:
    """The ``repr`` of ``key`` without object addresses (part of the file
    name's hash; :class:`StoredCall` finds the traces by it)."""
    if self._key_text is None:
      self._key_text = _strip_addresses(repr(self._key))
    return self._key_text

  def __getattr__(self, attr):  # lower, trace, eval_shape, ...
    return getattr(self.jitted, attr)

  def _cache_size(self) -> int:
    """Programs compiled for this function in this process."""
    return self.jitted._cache_size() + sum(  # pylint: disable=protected-access
        e is not _MISS for e in self._entries.values())

  def __call__(self, *args, **kwargs):
    directory = trace_dir()
    if directory is None or not set(kwargs) <= self.static_argnames:
      return self.jitted(*args, **kwargs)
    import jax  # pylint: disable=g-import-not-at-top
    leaves, in_tree = jax.tree_util.tree_flatten(args)
    try:
      avals = tuple((tuple(x.shape), str(x.dtype),
                     bool(getattr(x, "weak_type", False))) for x in leaves)
    except AttributeError:  # a Python scalar among the arguments
      return self.jitted(*args, **kwargs)
    statics = tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
    signature = (in_tree, avals, statics)
    entry = self._entries.get(signature)
    if entry is None:
      entry = self._entry(directory, signature, leaves, in_tree, kwargs)
      self._entries[signature] = entry
    if entry is _MISS:
      return self.jitted(*args, **kwargs)
    exported, out_tree, lapack = entry
    out = _call_exported(exported, leaves, lapack)
    if lapack is not None:
      self._entries[signature] = (exported, out_tree, None)
    return jax.tree_util.tree_unflatten(out_tree, out)

  def _path(self, directory, signature) -> str:
    in_tree, avals, statics = signature
    return _trace_file(directory, self.name, self.key_text, tree_text(in_tree),
                       avals, statics)

  def _entry(self, directory, signature, leaves, in_tree, kwargs):
    """The stored trace of a new call signature: read, or made and written."""
    import jax  # pylint: disable=g-import-not-at-top
    from jax import export  # pylint: disable=g-import-not-at-top
    path = self._path(directory, signature)
    try:
      exported, head, lapack = _read_trace(path, len(leaves))
      out_tree = jax.tree_util.tree_structure(_decode_example(head))
      if out_tree.num_leaves != len(exported.out_avals):
        raise ValueError("stored trace does not fit")
      self.loaded += 1
      return exported, out_tree, lapack
    except Exception:  # pylint: disable=broad-except
      pass  # absent or unreadable: trace it again (and overwrite)
    box = []

    def flat(*flat_args):
      out = self.jitted(*jax.tree_util.tree_unflatten(in_tree, flat_args),
                        **kwargs)
      out_leaves, out_tree = jax.tree_util.tree_flatten(out)
      box.append(out_tree)
      return out_leaves

    try:
      body = export.export(jax.jit(flat))(*leaves).serialize()
      # Run what a later process will read: the deserialized program lowers
      # to the same module, so the XLA program compiled now is the one
      # found in the persistent cache then.
      exported = export.deserialize(body)
      out_tree = box[-1]
      head = json.dumps(_encode_tree(out_tree)).encode()
      if jax.tree_util.tree_structure(
          _decode_example(json.loads(head))) != out_tree:
        raise TypeError("the output tree does not round-trip")
    except Exception:  # pylint: disable=broad-except
      # Not exportable (host callbacks, custom pytree outputs, ...): the
      # function runs as a plain jax.jit, as it would without the store.
      return _MISS
    tmp = f"{path}.tmp{os.getpid()}"
    try:
      os.makedirs(directory, exist_ok=True)
      with open(tmp, "wb") as f:
        f.write(_MAGIC + head + b"\n" + bytes(body))
      os.replace(tmp, path)  # readers never see a partial file
      self.stored += 1
      _remove_stale(directory, self.name)
    except OSError:  # a read-only or full disk: used in this process only
      with contextlib.suppress(OSError):
        os.remove(tmp)
    return exported, out_tree, _uses_lapack(body)


def _remove_stale(directory: str, name: str) -> None:
  """Deletes ``name``'s traces made under another environment key (another
  metatts source or jax version: never read again by this one)."""
  current = f"{name}-{_environment_key()[:16]}-"
  try:
    for entry in os.listdir(directory):
      if entry.startswith(f"{name}-") and not entry.startswith(current) and \
          entry.count("-") == name.count("-") + 2:
        os.remove(os.path.join(directory, entry))
  except OSError:
    pass  # another process removed it first, or a read-only folder


def stored_jit(fun: Callable[..., Any], *, name: str, key: Any,
               static_argnames: Sequence[str] = ()) -> StoredJit:
  """``jax.jit(fun, static_argnames=...)`` with its trace kept on disk.

  jax's persistent cache skips XLA's compilation in a new process, but not
  tracing the Python function to a jaxpr and lowering it to StableHLO,
  which took 2-4 s of a warm ``python -m metatts adapt`` or ``say`` on the
  2-core CPU. With the cache on (:func:`trace_dir`), the first call of each
  argument signature (tree structure, shapes, dtypes, static values) is
  exported with ``jax.export`` and written to ``<cache>/traces``; a later
  process deserializes it and calls it (``Exported.call``: no tracing of
  ``fun``, a short lowering, then XLA's compiled program from the
  persistent cache). The first process runs through the exported program
  too, so its compiled program is the one cached for the next.

  A stored trace is found only under the same key: ``name``, ``key``
  (everything ``fun`` closes over that shapes its program, e.g. the model's
  graph and the protocol, as its ``repr``), the argument signature and
  :func:`_environment_key` (library versions, jax's tracing flags and the
  source of metatts). Anything not exportable, or a call with non-static
  keyword arguments or Python scalars, runs as plain ``jax.jit``. The
  exported program computes the same XLA program: results are equal bit
  for bit (tests/test_cli_speed.py, docs/benchmarks.md).

  Args:
    fun: the function to jit.
    name: a short name for the files (``adapt_fn``, ``infer_fn``, ...).
    key: what ``fun`` closes over, by value (its ``repr`` is hashed, with
      object addresses removed).
    static_argnames: as for ``jax.jit``; pass them as keywords.

  Returns:
    A callable like the jitted function (``lower``, ``trace`` and other
    attributes are the plain jitted function's).
  """
  return StoredJit(fun, name, key, static_argnames)


__all__ = ["DEFAULT_DIR", "ENV", "MIN_COMPILE_SECONDS", "StoredCall",
           "StoredJit", "TRACE_DIR", "TraceMissing", "UNROLL_ENV", "enable",
           "stored_jit", "storing_traces", "trace_dir", "tree_text"]
