"""``python -m metatts say`` without building the model: a voice's cache.

A warm ``say`` spent most of its time before the first sentence: importing
flax, Orbax and optax, building the abstract model (``nnx.eval_shape``) and
restoring the parameters with Orbax (docs/benchmarks.md, "CLI `adapt` and
`say`"). None of that changes between two ``say`` runs of the same voice,
and the compiled Tacotron inference and Griffin-Lim programs are already
kept as stored traces (:mod:`metatts.compile_cache`). So after a ``say``
that loaded the voice the usual way, :func:`store` writes what synthesis
reads into ``<cache>/say/<entry>/``:

* the flat leaves of the voice's parameters and the model's other state
  (``leaves-<token>.npz``, in the order the inference trace takes them);
* ``entry.json``: the voice's fingerprint (every file's relative path, size
  and modification time, the ``--vocoder`` argument, and
  ``compile_cache._environment_key``: library versions, jax flags and the
  source of metatts), the synthesis settings (sample rate, mel config,
  symbol set, token and frame limits, speaker slot) and how to find the
  inference trace (:class:`metatts.compile_cache.StoredCall`).

:func:`load` gives back a :class:`CachedVoice` only while the fingerprint
still matches, so an edited, re-adapted or replaced voice, another metatts
or jax, or other jax flags load the voice the usual way again (which checks
``voice.json`` and the parameters, and writes a new entry). Its
:meth:`CachedVoice.synthesize` runs :func:`metatts.synthesis.synthesize`,
the function every caller speaks through, with the same compiled programs
and the same inputs, so the WAV is the same bit for bit
(tests/test_cli_speed.py). A sentence whose shapes were never traced raises
:class:`metatts.compile_cache.TraceMissing` and the CLI falls back.

Only Griffin-Lim voices are cached (a trained vocoder needs its model).
The cache lives beside the compilation cache and follows its switch
(``METATTS_COMPILE_CACHE``); deleting it is always safe.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import types
from typing import Any, Optional, Tuple

import numpy as np

from metatts import compile_cache

FORMAT = 1
SUBDIR = "say"
ENTRY_FILE = "entry.json"


def _entry_dir(voice_dir: str, vocoder: Optional[str]) -> Optional[str]:
  """``<cache>/say/<hash of the voice path and --vocoder>``, or None (off)."""
  traces = compile_cache.trace_dir()
  if traces is None:
    return None
  name = hashlib.sha256(
      f"{os.path.abspath(voice_dir)}\0{vocoder}".encode()).hexdigest()[:32]
  return os.path.join(os.path.dirname(traces), SUBDIR, name)


def fingerprint(voice_dir: str, vocoder: Optional[str]) -> str:
  """What a cached voice depends on: its files, ``--vocoder`` and the
  environment (versions, jax flags, metatts source).

  Every file of the folder (symlinked folders followed; an unreadable one
  raises) by relative path, size, modification and status-change time and
  inode: a replacement of the same size with its timestamps copied
  (``cp -p``, ``rsync -a``) still changes the inode or the ctime, which
  user programs cannot set.
  """
  h = hashlib.sha256(f"{FORMAT}\0{vocoder}\0".encode())
  h.update(compile_cache._environment_key().encode())  # pylint: disable=protected-access
  root = os.path.abspath(voice_dir)

  def fail(error):
    raise error

  for base, dirs, files in os.walk(root, onerror=fail, followlinks=True):
    dirs.sort()
    for name in sorted(files):
      path = os.path.join(base, name)
      st = os.stat(path)
      h.update(f"{os.path.relpath(path, root)}\0{st.st_size}\0"
               f"{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\0"
               .encode())
  return h.hexdigest()


def _to_numpy(leaf) -> Tuple[np.ndarray, Any]:
  """A leaf as numpy, with what rebuilds it (a PRNG key's implementation)."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
    impl = str(jax.random.key_impl(leaf))
    return np.asarray(jax.random.key_data(leaf)), impl
  return np.asarray(leaf), None


def _from_numpy(array: np.ndarray, key_impl: Optional[str], weak: bool):
  import jax  # pylint: disable=g-import-not-at-top
  if key_impl is not None:
    return jax.random.wrap_key_data(array, impl=key_impl)
  if weak:  # a weakly typed scalar stays one, as in the traced call
    return jax.numpy.asarray(array.item() if array.ndim == 0 else array)
  return array


def store(voice: Any, voice_dir: str, vocoder: Optional[str],
          seen: Optional[str] = None) -> bool:
  """Writes the cache entry of a voice just loaded or saved (CLI).

  Args:
    voice: the :class:`metatts.api.Voice` loaded from (or saved to)
      ``voice_dir``.
    voice_dir: its folder, as given to ``say --voice``.
    vocoder: the ``--vocoder`` argument.
    seen: the folder's :func:`fingerprint` taken *before* the voice was
      loaded (or right after it was saved); the entry is written only if
      the folder still has it, so a voice replaced meanwhile (another
      ``adapt --out``) is never cached under the new files' fingerprint.
      None: taken now.

  Returns:
    Whether an entry was written. Nothing is written (False) when traces
    are off, the folder changed, or the vocoder is not Griffin-Lim chosen
    explicitly (``--vocoder griffin-lim``, or ``voice.json`` saying
    ``"vocoder": "griffin-lim"``: any other choice depends on files
    outside the voice folder); an unwritable cache is skipped silently.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from metatts import vocoders  # pylint: disable=g-import-not-at-top
  tts = voice.tts
  infer = getattr(tts, "_infer_jit", None)
  folder = _entry_dir(voice_dir, vocoder)
  voc = voice.vocoder
  if (folder is None or not isinstance(voc, vocoders.GriffinLimVocoder) or
      not isinstance(infer, compile_cache.StoredJit) or
      not _griffin_lim_chosen(voice_dir, vocoder)):
    return False
  if seen is None:
    seen = fingerprint(voice_dir, vocoder)
  params = jax.tree_util.tree_leaves(voice.params)
  rest = jax.tree_util.tree_leaves(tts.rest)
  # The inference's argument tree (params, rest, then five arrays: tokens,
  # token lengths, speaker ids, seeds, minimum frames; see
  # metatts.voice.infer_function); its traces are shared by every voice of
  # the model, so a new voice speaks from the cache at once.
  in_tree = jax.tree_util.tree_structure(
      (voice.params, tts.rest, 0, 0, 0, 0, 0))
  arrays, leaf_info = {}, []
  for i, leaf in enumerate(params + rest):
    arrays[f"a{i}"], impl = _to_numpy(leaf)
    leaf_info.append([impl, bool(getattr(leaf, "weak_type", False))])
  config = tts.config
  entry = {
      "format": FORMAT,
      "fingerprint": seen,
      "sample_rate": int(tts.feature_config.sample_rate),
      "mel_config": dict(tts.mel_config._asdict()),
      "vocoder_mel_config": dict(voc.mel_config._asdict()),
      "griffin_lim_iters": int(voc.n_iter),
      "symbols": tts.symbols.name,
      "max_tokens": int(tts.max_tokens),
      "config": {"max_tokens": int(config.max_tokens),
                 "max_frames": int(config.max_frames),
                 "reduction_factor": int(getattr(config, "reduction_factor",
                                                 1))},
      "speaker_slot": int(voice.speaker_slot),
      "num_params": len(params),
      "leaves": leaf_info,
      "infer": {"name": infer.name, "key": infer.key_text,
                "tree": compile_cache.tree_text(in_tree)},
  }
  leaves_file = f"leaves-{secrets.token_hex(6)}.npz"
  entry["leaves_file"] = leaves_file
  try:
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{leaves_file}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
    os.replace(tmp, os.path.join(folder, leaves_file))
    if fingerprint(voice_dir, vocoder) != seen:  # replaced while we worked
      os.remove(os.path.join(folder, leaves_file))
      return False
    tmp = os.path.join(folder, f".{ENTRY_FILE}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
      json.dump(entry, f)
    os.replace(tmp, os.path.join(folder, ENTRY_FILE))  # readers see old or new
    for name in os.listdir(folder):  # leaves of older entries
      if name.startswith("leaves-") and name != leaves_file:
        os.remove(os.path.join(folder, name))
  except OSError:
    return False
  return True


def _griffin_lim_chosen(voice_dir: str, vocoder: Optional[str]) -> bool:
  """Whether ``say --voice voice_dir [--vocoder vocoder]`` is Griffin-Lim
  by the argument or by the voice's own ``voice.json``."""
  if vocoder is not None:
    return vocoder == "griffin-lim"
  try:
    with open(os.path.join(voice_dir, "voice.json"), encoding="utf-8") as f:
      return json.load(f).get("vocoder") == "griffin-lim"
  except (OSError, ValueError, AttributeError):
    return False


class CachedVoice:
  """A voice restored from its cache entry: speaks like the loaded voice.

  Carries the attributes :func:`metatts.synthesis.synthesize` reads from a
  model (``feature_config``, ``mel_config``, ``symbols``, ``max_tokens``,
  ``config``, ``rest``, ``vocoder``, ``_infer_jit``).
  """

  def __init__(self, entry: dict, leaves: list):
    from metatts import vocoders  # pylint: disable=g-import-not-at-top
    from metatts.audio import features as afeat  # pylint: disable=g-import-not-at-top
    from metatts.audio import text as atext  # pylint: disable=g-import-not-at-top
    n = int(entry["num_params"])
    self.params, self.rest = leaves[:n], leaves[n:]
    self.speaker_slot = int(entry["speaker_slot"])
    self.feature_config = types.SimpleNamespace(
        sample_rate=int(entry["sample_rate"]))
    self.mel_config = afeat.MelConfig(**entry["mel_config"])
    self.symbols = atext.symbol_set(entry["symbols"])
    self.max_tokens = int(entry["max_tokens"])
    self.config = types.SimpleNamespace(**entry["config"])
    self.vocoder = vocoders.GriffinLimVocoder(
        afeat.MelConfig(**entry["vocoder_mel_config"]),
        entry["griffin_lim_iters"])
    infer = entry["infer"]
    call = compile_cache.StoredCall(infer["name"], infer["key"],
                                    infer["tree"])

    def infer_jit(params, rest, *arrays, **statics):
      return call(list(params) + list(rest) + list(arrays), **statics)

    self._infer_jit = infer_jit

  def synthesize(self, text: str, seed: int = 0):
    """``(audio, sample_rate)`` as ``Voice.synthesize`` gives them.

    Raises:
      metatts.compile_cache.TraceMissing: a sentence of shapes never
        traced (load the voice the usual way).
      ValueError: text with nothing speakable (the same message).
    """
    from metatts import synthesis  # pylint: disable=g-import-not-at-top
    speech = synthesis.synthesize(self, self.params, self.speaker_slot, text,
                                  seed)
    return speech.audio, speech.sample_rate


def load(voice_dir: str, vocoder: Optional[str]) -> Optional[CachedVoice]:
  """The cached voice of ``say --voice voice_dir``, or None.

  None when the cache is off, there is no entry, or the entry's
  fingerprint no longer matches the voice folder, ``--vocoder`` or the
  environment; also for an unreadable entry (it is rewritten by the next
  ``say`` that loads the voice).
  """
  folder = _entry_dir(voice_dir, vocoder)
  if folder is None or not os.path.isdir(voice_dir):
    return None
  try:
    with open(os.path.join(folder, ENTRY_FILE)) as f:
      entry = json.load(f)
    if entry.get("format") != FORMAT or \
        entry.get("fingerprint") != fingerprint(voice_dir, vocoder):
      return None
    with np.load(os.path.join(folder, entry["leaves_file"])) as data:
      arrays = [data[f"a{i}"] for i in range(len(entry["leaves"]))]
    leaves = [_from_numpy(a, impl, weak)
              for a, (impl, weak) in zip(arrays, entry["leaves"])]
    return CachedVoice(entry, leaves)
  except Exception:  # pylint: disable=broad-except
    return None  # absent or damaged: the usual path, which writes it anew


__all__ = ["CachedVoice", "ENTRY_FILE", "FORMAT", "fingerprint", "load",
           "store"]
