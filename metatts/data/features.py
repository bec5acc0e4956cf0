"""Feature cache: precomputed log-mels and token ids, memory-mapped.

``build_features(corpus, config, cache_dir)`` processes every utterance once
(load -> resample -> trim silence -> loudness-normalize -> log-mel; text ->
ids) and stores:

```
cache_dir/<config hash>/
  config.json             # the FeatureConfig the hash was computed from
  index.json              # audio path -> {fingerprint, status, tokens, ...}
  mels/<sha1(path)>.npy   # float32 [T, n_mels], opened with mmap_mode="r"
```

The hash covers every field of ``FeatureConfig`` (and a format version), so
changing any feature parameter gives a fresh folder and never mixes features.
Inside a folder, an utterance is recomputed only when its fingerprint (audio
path, file mtime, file size, transcript) changed; bad clips are recorded with
their reason so a rebuild does not retry them either, and are counted in
``FeatureStore.skipped``. The index is saved every few hundred utterances, so
an interrupted build resumes where it stopped. Concurrent builds into the same
folder are not supported.

References:
  Shen et al., "Natural TTS Synthesis by Conditioning WaveNet on Mel
  Spectrogram Predictions" (Tacotron 2), ICASSP 2018 (feature parameters).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import math
import os
import tempfile
import warnings
from typing import Dict, Iterator, List, NamedTuple, Optional

from absl import logging
import jax
import numpy as np
import tqdm

from metatts.audio import features as afeat
from metatts.audio import io as aio
from metatts.audio import text as atext
from metatts.data.corpora import Corpus, Timings

FORMAT_VERSION = 1
_SAVE_EVERY = 200
_BUCKET_FRAMES = 128  # mel jit is compiled once per 128-frame length bucket


class FeatureConfig(NamedTuple):
  """Feature extraction parameters (defaults: Tacotron 2 scaled to 16 kHz).

  Attributes:
    sample_rate: audio is resampled to this rate.
    n_fft, win_length, hop_length: STFT (12.5 ms hop, 50 ms window).
    n_mels, fmin, fmax: Slaney mel filterbank.
    log_floor: log-mel is ``log(max(mel, log_floor))`` (natural log).
    symbols: "characters" or "phonemes" (espeak-ng).
    max_frames: clips longer than this many frames (after trimming) are
      skipped as "too_long" (1000 frames = 12.5 s).
    max_tokens: transcripts encoding to more ids (EOS included) are skipped
      as "too_many_tokens".
    min_seconds: shorter clips (after trimming) are skipped as "too_short".
    trim_top_db: silence trimming threshold below the peak (None: no trim).
    target_dbfs: RMS loudness target (None: no normalization).
  """

  sample_rate: int = 16000
  n_fft: int = 1024
  win_length: int = 800
  hop_length: int = 200
  n_mels: int = 80
  fmin: float = 55.0
  fmax: Optional[float] = 7600.0
  log_floor: float = 1e-5
  symbols: str = "characters"
  max_frames: int = 1000
  max_tokens: int = 200
  min_seconds: float = 0.3
  trim_top_db: Optional[float] = 40.0
  target_dbfs: Optional[float] = -20.0

  @classmethod
  def from_config(cls, config) -> "FeatureConfig":
    """Builds from a dict or ``ml_collections.ConfigDict`` of fields.

    Unknown keys raise ValueError listing the valid ones.
    """
    if isinstance(config, FeatureConfig):
      return config
    items = dict(config.items()) if hasattr(config, "items") else dict(config)
    unknown = sorted(set(items) - set(cls._fields))
    if unknown:
      raise ValueError(f"Unknown FeatureConfig keys {unknown}; valid keys are "
                       f"{list(cls._fields)}.")
    return cls(**items).validate()

  def validate(self) -> "FeatureConfig":
    self.mel_config().validate()
    atext.symbol_set(self.symbols)
    if self.max_frames <= 0 or self.max_tokens <= 0:
      raise ValueError(f"FeatureConfig max_frames={self.max_frames} and "
                       f"max_tokens={self.max_tokens} must be positive.")
    return self

  def mel_config(self) -> afeat.MelConfig:
    return afeat.MelConfig(self.sample_rate, self.n_fft, self.win_length,
                           self.hop_length, self.n_mels, self.fmin,
                           self.fmax, self.log_floor)

  @property
  def num_symbols(self) -> int:
    """Embedding table size for the configured symbol set."""
    return atext.symbol_set(self.symbols).num_symbols

  @property
  def max_seconds(self) -> float:
    return (self.max_frames - 1) * self.hop_length / self.sample_rate

  def hash(self) -> str:
    """Stable hex digest of all fields (and the cache format version)."""
    blob = json.dumps({"format": FORMAT_VERSION, **self._asdict()},
                      sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class Example(NamedTuple):
  speaker: str
  utt_id: str
  text: str
  tokens: np.ndarray  # int32 [L]   symbol ids, EOS last
  mel: np.ndarray  # float32 [T, n_mels]  log-mel (memory-mapped, read-only)
  audio_path: str
  # The synthesizer's word/phone end times (synthetic corpora, timed voices;
  # else None) in seconds from the first sample the mel was computed from,
  # i.e. after this cache's silence trimming: mel frame t is centered on
  # t * hop_length / sample_rate.
  timings: Optional[Timings] = None


@functools.lru_cache(maxsize=8)
def _mel_fn(mel_config: afeat.MelConfig):
  return jax.jit(functools.partial(afeat.log_mel_spectrogram,
                                   config=mel_config, center=False))


def compute_log_mel(audio: np.ndarray, mel_config: afeat.MelConfig
                   ) -> np.ndarray:
  """Host-side log-mel of one clip with bounded recompilation.

  Equals ``log_mel_spectrogram(audio, mel_config)`` (center=True) but pads the
  clip to a 128-frame bucket so the jitted function compiles once per bucket.

  Args:
    audio: float ``[S]`` with ``S > n_fft // 2``.
    mel_config: mel parameters.

  Returns:
    float32 ``[1 + S // hop, n_mels]``.
  """
  n_fft, hop = mel_config.n_fft, mel_config.hop_length
  pad = n_fft // 2
  audio = np.asarray(audio, np.float32)
  if audio.shape[0] <= pad:
    raise aio.AudioError("too_short", f"Clip of {audio.shape[0]} samples is "
                         f"shorter than n_fft/2={pad}; drop it.")
  frames = 1 + audio.shape[0] // hop
  x = np.pad(audio, (pad, pad), mode="reflect")[:n_fft + (frames - 1) * hop]
  bucket = _BUCKET_FRAMES * math.ceil(frames / _BUCKET_FRAMES)
  x = np.pad(x, (0, n_fft + (bucket - 1) * hop - x.shape[0]))
  return np.asarray(_mel_fn(mel_config)(x))[:frames]


def load_clip(clip, config: FeatureConfig, *, sample_rate: Optional[int] = None,
              min_seconds: Optional[float] = None,
              max_seconds: Optional[float] = None,
              name: Optional[str] = None) -> np.ndarray:
  """Loads one clip with the feature settings: the one clip loader.

  The feature cache, the library API's adaptation clips, the evaluation's
  reference clips and the vocoder's training audio all come from here, so a
  clip is resampled, checked, trimmed and loudness-normalized the same way
  wherever it is used.

  Args:
    clip: an audio file path, or a waveform array ``[S]`` (float in
      ``[-1, 1]`` or integer PCM; ``[S, C]`` / ``[C, S]`` with ``C <= 8`` is
      downmixed) at ``sample_rate``.
    config: the ``FeatureConfig`` (rate, trimming threshold, loudness).
    sample_rate: the rate of an array clip (required for arrays).
    min_seconds, max_seconds: allowed duration after trimming (default: the
      config's ``min_seconds`` / ``max_seconds``).
    name: how an array clip is named in errors.

  Returns:
    float32 ``[S']`` at ``config.sample_rate``.

  Raises:
    FileNotFoundError, aio.AudioError (a ValueError): naming the clip and the
      fix; ``AudioError.reason`` is the key a scan counts.
    ValueError: an array of the wrong type or shape, or without a rate.
  """
  fc = config
  min_s = fc.min_seconds if min_seconds is None else float(min_seconds)
  max_s = fc.max_seconds if max_seconds is None else float(max_seconds)
  trim = fc.trim_top_db is not None
  top_db = fc.trim_top_db if trim else 40.0
  normalize = fc.target_dbfs is not None
  target = fc.target_dbfs if normalize else -20.0
  if isinstance(clip, (str, os.PathLike)):
    return aio.load_clip(os.fspath(clip), fc.sample_rate, trim=trim,
                         top_db=top_db, normalize=normalize,
                         target_dbfs=target, min_seconds=min_s,
                         max_seconds=max_s)
  name = name or "array clip"
  audio = np.asarray(clip)
  if audio.dtype.kind not in "fiu":
    raise ValueError(
        f"{name} is a {type(clip).__name__} of dtype {audio.dtype}; pass a "
        "file path or a float waveform array in [-1, 1].")
  if audio.ndim == 2 and min(audio.shape) <= 8:  # [S, C] or [C, S]: downmix
    audio = audio.mean(axis=int(np.argmin(audio.shape)))
  if audio.ndim != 1:
    raise ValueError(
        f"{name} has shape {audio.shape}; pass a mono waveform [S].")
  if sample_rate is None:
    raise ValueError(
        f"{name} is an array but sample_rate is not given; call "
        "adapt(..., sample_rate=SR) with the arrays' sample rate.")
  if audio.dtype.kind in "iu":
    audio = audio.astype(np.float32) / float(np.iinfo(audio.dtype).max)
  audio = aio.resample(audio.astype(np.float32), int(sample_rate),
                       fc.sample_rate)
  if not np.all(np.isfinite(audio)):
    raise ValueError(f"{name} holds NaN or Inf samples; pass a clean "
                     "float waveform.")
  sr = fc.sample_rate
  reason = aio.check_clip(audio, sr, min_seconds=0.0,
                          max_seconds=float("inf"))
  if reason is None and trim:
    audio = aio.trim_silence(audio, sr, top_db=top_db)
  if reason is None:
    reason = aio.check_clip(audio, sr, min_seconds=min_s, max_seconds=max_s)
  if reason is not None:
    raise aio.AudioError(
        reason, f"unusable clip {name} ({reason}, "
        f"{audio.shape[0] / sr:.2f} s): {aio._FIXES[reason]}.")  # pylint: disable=protected-access
  if normalize:
    audio = aio.normalize_loudness(audio, target)
  return audio


def _trim_bounds(path: str, config: FeatureConfig) -> List[int]:
  """[start, end) samples (at ``config.sample_rate``) the trimming keeps.

  Stored per index entry so that a clip's timings can be moved onto its mel
  without changing the cache key.
  """
  audio, sr = aio.load_audio(path, config.sample_rate)
  if config.trim_top_db is None:
    return [0, int(audio.shape[0])]
  return list(aio.trim_bounds(audio, sr, top_db=config.trim_top_db))


def _atomic_write_json(path: str, obj) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
  with os.fdopen(fd, "w", encoding="utf-8") as f:
    json.dump(obj, f)
  os.replace(tmp, path)


def _atomic_save_npy(path: str, arr: np.ndarray) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".npy.tmp")
  with os.fdopen(fd, "wb") as f:
    np.save(f, arr)
  os.replace(tmp, path)


def _fingerprint(path: str, text: str) -> Optional[list]:
  try:
    st = os.stat(path)
  except OSError:
    return None
  return [path, st.st_mtime_ns, st.st_size,
          hashlib.sha1(text.encode()).hexdigest()[:12]]


@dataclasses.dataclass
class FeatureStore:
  """Precomputed features of one corpus under one FeatureConfig.

  Attributes:
    root: ``cache_dir/<config hash>``.
    config: the FeatureConfig.
    corpus_name: name of the corpus.
    speakers: speaker id -> metadata (from the corpus; speakers with at least
      one usable example).
    skipped: reason -> count of utterances without features (scan skips of the
      corpus included).
    stats: ``{"computed": n, "reused": m}`` for the last build.
  """

  root: str
  config: FeatureConfig
  corpus_name: str
  speakers: Dict[str, dict]
  skipped: Dict[str, int]
  stats: Dict[str, int]
  _entries: List[dict] = dataclasses.field(repr=False)
  _examples: Optional[List[Example]] = dataclasses.field(default=None,
                                                         repr=False)

  def __len__(self) -> int:
    return len(self._entries)

  def __iter__(self) -> Iterator[Example]:
    return iter(self.examples)

  @property
  def examples(self) -> List[Example]:
    """All usable examples, mels memory-mapped (opened on first access)."""
    if self._examples is None:
      self._examples = [
          Example(e["speaker"], e["utt_id"], e["text"],
                  np.asarray(e["tokens"], np.int32),
                  np.load(os.path.join(self.root, e["file"]), mmap_mode="r"),
                  e["audio_path"], e.get("timings")) for e in self._entries]
    return self._examples

  def by_speaker(self) -> Dict[str, List[Example]]:
    """Examples grouped by speaker (sorted by speaker id, then utterance)."""
    out = collections.defaultdict(list)
    for ex in self.examples:
      out[ex.speaker].append(ex)
    return dict(sorted(out.items()))


def _process(utt, config: FeatureConfig, mel_config) -> dict:
  """Computes one utterance; returns the index entry (status ok or reason)."""
  base = {"speaker": utt.speaker, "utt_id": utt.utt_id, "text": utt.text,
          "audio_path": utt.audio_path}
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      tokens = atext.text_to_ids(utt.text, config.symbols)
    dropped = [str(w.message) for w in caught
               if issubclass(w.category, UserWarning)]
  except ValueError as e:
    return {**base, "status": "empty_text", "error": str(e)}
  if tokens.shape[0] > config.max_tokens:
    return {**base, "status": "too_many_tokens",
            "error": f"{tokens.shape[0]} tokens > max_tokens="
                     f"{config.max_tokens}"}
  try:
    audio = load_clip(utt.audio_path, config)
  except FileNotFoundError as e:
    return {**base, "status": "missing_audio", "error": str(e)}
  except aio.AudioError as e:
    return {**base, "status": e.reason, "error": str(e)}
  mel = compute_log_mel(audio, mel_config)
  if mel.shape[0] > config.max_frames:
    return {**base, "status": "too_long",
            "error": f"{mel.shape[0]} frames > max_frames={config.max_frames}"}
  return {**base, "status": "ok", "tokens": tokens.tolist(),
          "frames": int(mel.shape[0]), "mel": mel, "dropped": dropped}


def build_features(corpus: Corpus, config: FeatureConfig = FeatureConfig(),
                   cache_dir: str = "~/.cache/metatts/features",
                   progress: bool = True) -> FeatureStore:
  """Computes (or reuses) features for every utterance of ``corpus``.

  Args:
    corpus: from ``metatts.data.corpora``.
    config: FeatureConfig (or a dict / ConfigDict of its fields).
    cache_dir: cache root; features go under ``cache_dir/<config.hash()>``.
    progress: show a tqdm progress bar.

  Returns:
    A FeatureStore; ``store.stats["computed"]`` counts utterances processed
    in this call, ``store.skipped`` the bad ones by reason.
  """
  config = FeatureConfig.from_config(config).validate()
  mel_config = config.mel_config()
  root = os.path.join(os.path.abspath(os.path.expanduser(cache_dir)),
                      config.hash())
  os.makedirs(os.path.join(root, "mels"), exist_ok=True)
  config_path = os.path.join(root, "config.json")
  if not os.path.isfile(config_path):
    _atomic_write_json(config_path, {"format": FORMAT_VERSION,
                                     **config._asdict()})
  index_path = os.path.join(root, "index.json")
  index = {}
  if os.path.isfile(index_path):
    try:
      with open(index_path, encoding="utf-8") as f:
        index = json.load(f)
    except (OSError, json.JSONDecodeError):
      logging.warning("Feature index %s unreadable; rebuilding it.",
                      index_path)
      index = {}

  computed = reused = trims_added = 0
  skipped = collections.Counter(corpus.skipped)
  examples_of_reason = {}
  dropped_msgs = []
  entries = []
  bar = tqdm.tqdm(corpus.utterances, desc=f"features {corpus.name}",
                  unit="utt", disable=not progress, leave=False)
  for n, utt in enumerate(bar):
    fp = _fingerprint(utt.audio_path, utt.text)
    old = index.get(utt.audio_path)
    if (old is not None and fp is not None and old.get("fingerprint") == fp
        and (old["status"] != "ok"
             or os.path.isfile(os.path.join(root, old["file"])))):
      entry = old
      reused += 1
    else:
      entry = _process(utt, config, mel_config)
      entry["fingerprint"] = fp
      if entry["status"] == "ok":
        fname = os.path.join(
            "mels", hashlib.sha1(utt.audio_path.encode()).hexdigest()[:20]
            + ".npy")
        _atomic_save_npy(os.path.join(root, fname),
                         entry.pop("mel").astype(np.float32))
        entry["file"] = fname
        dropped_msgs.extend(entry.pop("dropped"))
      index[utt.audio_path] = entry
      computed += 1
      if computed % _SAVE_EVERY == 0:
        _atomic_write_json(index_path, index)
    timings = getattr(utt, "timings", None)
    if timings is not None and entry["status"] == "ok":
      if "trim" not in entry:  # also for entries cached before timings
        entry["trim"] = _trim_bounds(utt.audio_path, config)
        index[utt.audio_path] = entry
        trims_added += 1
      start, end = entry["trim"]
      timings = timings.shifted(start / config.sample_rate,
                                (end - start) / config.sample_rate)
    # Speaker / text in the index follow the current corpus.
    entry = {**entry, "speaker": utt.speaker, "utt_id": utt.utt_id,
             "text": utt.text, "timings": timings}
    if entry["status"] == "ok":
      entries.append(entry)
    else:
      skipped[entry["status"]] += 1
      examples_of_reason.setdefault(entry["status"], entry.get("error", ""))
  bar.close()
  if computed or trims_added:
    _atomic_write_json(index_path, index)

  present = {e["speaker"] for e in entries}
  speakers = {s: m for s, m in corpus.speakers.items() if s in present}
  logging.info("Features for %s in %s: %d examples (%d computed, %d reused).",
               corpus.name, root, len(entries), computed, reused)
  if skipped:
    logging.warning("Features for %s: skipped %d utterances %s; first of "
                    "each: %s", corpus.name, sum(skipped.values()),
                    dict(skipped), examples_of_reason)
  if dropped_msgs:
    logging.warning("Features for %s: %d transcripts had unsupported symbols "
                    "(dropped), e.g. %s", corpus.name, len(dropped_msgs),
                    dropped_msgs[:3])
  return FeatureStore(root=root, config=config, corpus_name=corpus.name,
                      speakers=speakers, skipped=dict(skipped),
                      stats={"computed": computed, "reused": reused},
                      _entries=entries)
