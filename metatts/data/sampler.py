"""Few-shot episode sampler and plain batch iterator with bucketed shapes.

A *task* is a speaker: ``K`` support clips to adapt on and ``Q`` query clips
of the same speaker, with no text shared between the two sets. A meta-batch
holds ``N`` tasks of distinct speakers and is returned as
``metatts.types.Task(support=TTSBatch[N, K, ...], query=TTSBatch[N, Q, ...])``
of numpy arrays.

Shapes are fixed by a small set of *length buckets*: bucket ``b`` is a pair
(``tokens[b]``, ``frames[b]``) of increasing maxima. A clip belongs to the
smallest bucket that holds both its token and its frame count, and every leaf
of one meta-batch (support and query alike) is padded to the largest bucket
among its clips. So a jitted meta-step sees at most ``len(buckets)``
distinct input shapes and compiles at most that many times. Padding is zero
and the true lengths travel as ``token_lengths`` / ``mel_lengths`` (masks).

The sampler accepts ``dict[str, list[Example]]`` as produced by
``metatts.data.features.FeatureStore.by_speaker()``, or any mapping of
speaker -> sequence of objects with ``.tokens`` (int32 [L], 0 = padding),
``.mel`` (float32 [T, M]) and ``.text``.

Everything is deterministic by seed. ``Prefetcher`` runs any of the iterators
in a background thread with a bounded queue so that host-side batching
overlaps with accelerator work.

References:
  C. Finn, P. Abbeel, S. Levine. "Model-Agnostic Meta-Learning for Fast
  Adaptation of Deep Networks." ICML 2017 (N-task meta-batches of K-shot
  support and query sets).
  O. Vinyals et al. "Matching Networks for One Shot Learning." NeurIPS 2016
  (episodic training).
  S. Arik et al. "Neural Voice Cloning with a Few Samples." NeurIPS 2018
  (speaker adaptation from few clips).
"""

from __future__ import annotations

import collections
import logging
import math
import queue
import threading
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping,
                    NamedTuple, Optional, Sequence, Tuple)

import numpy as np

from metatts.types import Task, TTSBatch

logger = logging.getLogger(__name__)

MAX_SUPPORT = 20


class Buckets(NamedTuple):
  """Joint length buckets: bucket ``b`` holds clips with at most
  ``tokens[b]`` symbols and ``frames[b]`` mel frames. Both tuples increase;
  the last bucket is the length limit."""

  tokens: Tuple[int, ...]
  frames: Tuple[int, ...]

  def __len__(self) -> int:  # pylint: disable=invalid-length-returned
    return len(self.tokens)

  def index(self, num_tokens: int, num_frames: int) -> int:
    """Smallest bucket holding the clip, or -1 if it exceeds the last."""
    for b, (t, f) in enumerate(zip(self.tokens, self.frames)):
      if num_tokens <= t and num_frames <= f:
        return b
    return -1


def _round_up(x: float, multiple: int) -> int:
  return int(math.ceil(x / multiple) * multiple)


def validate_buckets(buckets: Buckets) -> Buckets:
  """Checks that both tuples are equally long, positive and increasing."""
  t, f = tuple(int(x) for x in buckets.tokens), tuple(
      int(x) for x in buckets.frames)
  if not t or len(t) != len(f):
    raise ValueError(
        f"Buckets need equally long, non-empty token and frame tuples; got "
        f"tokens={t}, frames={f}.")
  if any(x <= 0 for x in t + f) or any(
      a >= b for s in (t, f) for a, b in zip(s, s[1:])):
    raise ValueError(
        f"Bucket boundaries must be positive and strictly increasing; got "
        f"tokens={t}, frames={f}. Sort them or use make_buckets().")
  return Buckets(t, f)


def make_buckets(examples: Iterable[Any], num_buckets: int = 4,
                 max_tokens: int = 200, max_frames: int = 1000,
                 token_multiple: int = 8, frame_multiple: int = 16) -> Buckets:
  """Buckets at length quantiles of ``examples``, capped at the limits.

  Bucket ``b`` of ``num_buckets`` is the ``(b + 1) / num_buckets`` quantile of
  the token counts and of the frame counts, rounded up to
  ``token_multiple`` / ``frame_multiple`` (so reduction factors that divide
  ``frame_multiple`` tile the frames). Clips over ``max_tokens`` or
  ``max_frames`` are ignored here and skipped by the samplers.

  Args:
    examples: objects with ``.tokens`` and ``.mel``.
    num_buckets: at most this many buckets (duplicates merge).
    max_tokens: length limit in symbols.
    max_frames: length limit in frames.
    token_multiple: token boundaries are multiples of this (or the limit).
    frame_multiple: frame boundaries are multiples of this (or the limit).

  Returns:
    ``Buckets`` with between 1 and ``num_buckets`` entries.
  """
  if num_buckets < 1:
    raise ValueError(f"num_buckets={num_buckets} must be >= 1.")
  lens = [(len(e.tokens), e.mel.shape[0]) for e in examples]
  lens = [(t, f) for t, f in lens if t <= max_tokens and f <= max_frames]
  if not lens:
    raise ValueError(
        f"No clip fits max_tokens={max_tokens}, max_frames={max_frames}; "
        "raise the limits or check the features.")
  arr = np.asarray(lens, np.float64)  # [E, 2]
  toks, frames = [], []
  for b in range(num_buckets):
    q = (b + 1) / num_buckets
    t = min(_round_up(np.quantile(arr[:, 0], q), token_multiple), max_tokens)
    f = min(_round_up(np.quantile(arr[:, 1], q), frame_multiple), max_frames)
    if toks and (t <= toks[-1] or f <= frames[-1]):
      # Merge with the previous bucket: keep the larger of both.
      toks[-1], frames[-1] = max(toks[-1], t), max(frames[-1], f)
    else:
      toks.append(t)
      frames.append(f)
  return validate_buckets(Buckets(tuple(toks), tuple(frames)))


def speaker_table(speakers: Iterable[str]) -> Dict[str, int]:
  """Stable speaker id -> index mapping (sorted speaker ids)."""
  return {s: i for i, s in enumerate(sorted(set(speakers)))}


class _Clip(NamedTuple):
  tokens: np.ndarray  # int32 [L]
  mel: np.ndarray  # float32 [T, M]
  text: str
  speaker: str
  bucket: int


def _index_clips(speakers: Mapping[str, Sequence[Any]], buckets: Buckets,
                 skipped: collections.Counter) -> Tuple[Dict[str, List[_Clip]],
                                                        int]:
  """Assigns clips to buckets; counts clips over the limit or empty."""
  if not speakers:
    raise ValueError("No speakers given to the sampler; build features "
                     "first (metatts.data.features.build_features).")
  n_mels = None
  out = {}
  for spk in sorted(speakers):
    clips = []
    for e in speakers[spk]:
      mel = e.mel
      if mel.ndim != 2:
        raise ValueError(f"Clip of speaker {spk!r} ({e.text!r}) has mel "
                         f"shape {mel.shape}; expected [T, n_mels].")
      if n_mels is None:
        n_mels = mel.shape[1]
      elif mel.shape[1] != n_mels:
        raise ValueError(
            f"Clip of speaker {spk!r} ({e.text!r}) has {mel.shape[1]} mel "
            f"bins, others {n_mels}; rebuild features with one FeatureConfig.")
      nt, nf = len(e.tokens), mel.shape[0]
      if nt == 0 or nf == 0:
        skipped["empty"] += 1
        continue
      b = buckets.index(nt, nf)
      if b < 0:
        skipped["too_long"] += 1
        continue
      clips.append(_Clip(np.asarray(e.tokens, np.int32), mel, e.text,
                         str(getattr(e, "speaker", spk)), b))
    out[spk] = clips
  if skipped["too_long"]:
    logger.warning(
        "Skipped %d clips longer than the last bucket (%d tokens, %d "
        "frames).", skipped["too_long"], buckets.tokens[-1],
        buckets.frames[-1])
  return out, n_mels


def _pad_batch(clips: Sequence[_Clip], bucket: int, buckets: Buckets,
               n_mels: int, speaker_ids: Sequence[int],
               seeds: np.ndarray) -> TTSBatch:
  """Stacks clips into a TTSBatch padded to ``bucket``."""
  b = len(clips)
  lt, lf = buckets.tokens[bucket], buckets.frames[bucket]
  tokens = np.zeros((b, lt), np.int32)
  mels = np.zeros((b, lf, n_mels), np.float32)
  tl = np.zeros((b,), np.int32)
  ml = np.zeros((b,), np.int32)
  for i, c in enumerate(clips):
    nt, nf = len(c.tokens), c.mel.shape[0]
    tokens[i, :nt] = c.tokens
    mels[i, :nf] = c.mel
    tl[i], ml[i] = nt, nf
  return TTSBatch(tokens=tokens, token_lengths=tl, mels=mels,
                  mel_lengths=ml,
                  speaker_ids=np.asarray(speaker_ids, np.int32),
                  seeds=np.asarray(seeds, np.uint32))


def _reshape(batch: TTSBatch, n: int, k: int) -> TTSBatch:
  """[n * k, ...] -> [n, k, ...] for every leaf."""
  return TTSBatch(*(x.reshape((n, k) + x.shape[1:]) for x in batch))


def _index_speakers(speakers, buckets, skipped, speaker_ids):
  """Indexes the clips and resolves the speaker table, checking it covers all."""
  clips, n_mels = _index_clips(speakers, buckets, skipped)
  table = dict(speaker_ids) if speaker_ids is not None else speaker_table(speakers)
  missing = sorted(set(speakers) - set(table))
  if missing:
    raise ValueError(f"Speakers {missing[:5]} are not in speaker_ids; pass "
                     "a table that covers every speaker.")
  return clips, n_mels, table


class EpisodeSampler:
  """Meta-batches of few-shot speaker tasks with bucketed fixed shapes.

  Example::

    store = features.build_features(corpus.split("train"), cfg, cache)
    sampler = EpisodeSampler(store.by_speaker(), num_tasks=8, num_support=5,
                             num_query=5, seed=0)
    with Prefetcher(iter(sampler), size=4) as episodes:
      for task in itertools.islice(episodes, steps):
        state, metrics = meta_step(state, task)  # Task[N=8, K=5 / Q=5]

  Attributes:
    buckets: the ``Buckets`` in use.
    speaker_ids: speaker -> int table used for ``speaker_ids``.
    speakers: the speakers tasks are drawn from (enough distinct texts).
    skipped: reason -> count ("too_long" and "empty" clips,
      "speaker_too_few_clips" speakers).
    skipped_speakers: speakers left out for having fewer than K + Q clips
      with distinct texts.
    n_mels: mel bins of the clips.
  """

  def __init__(self, speakers: Mapping[str, Sequence[Any]], *,
               num_tasks: int, num_support: int, num_query: int,
               buckets: Optional[Buckets] = None, num_buckets: int = 4,
               max_tokens: int = 200, max_frames: int = 1000,
               speaker_ids: Optional[Mapping[str, int]] = None,
               seed: int = 0):
    """Indexes the clips.

    Args:
      speakers: speaker id -> clips (objects with ``.tokens``, ``.mel``,
        ``.text``).
      num_tasks: ``N``, tasks (distinct speakers) per meta-batch.
      num_support: ``K`` in 1..20, support clips per task.
      num_query: ``Q`` >= 1, query clips per task.
      buckets: length buckets; default ``make_buckets`` over all clips with
        ``num_buckets``, ``max_tokens`` and ``max_frames``.
      num_buckets: see ``buckets``.
      max_tokens: clips with more symbols are skipped (when ``buckets`` is
        None; otherwise the last bucket is the limit).
      max_frames: clips with more frames are skipped (likewise).
      speaker_ids: speaker -> int table; default ``speaker_table`` of
        ``speakers``. Pass one table shared by all splits and models.
      seed: seeds the sampling stream.

    Raises:
      ValueError: K or Q or N out of range, or no speaker (or fewer than N)
        with at least K + Q clips of distinct texts.
    """
    if not 1 <= num_support <= MAX_SUPPORT:
      raise ValueError(
          f"num_support (K) = {num_support} is out of range; use 1 to "
          f"{MAX_SUPPORT} support clips per speaker.")
    if num_query < 1:
      raise ValueError(f"num_query (Q) = {num_query}; use at least 1 query "
                       "clip per speaker.")
    if num_tasks < 1:
      raise ValueError(f"num_tasks (N) = {num_tasks}; use at least 1 task "
                       "per meta-batch.")
    self.num_tasks, self.num_support, self.num_query = (num_tasks,
                                                        num_support,
                                                        num_query)
    self.seed = seed
    if buckets is None:
      buckets = make_buckets([e for v in speakers.values() for e in v],
                             num_buckets, max_tokens, max_frames)
    self.buckets = validate_buckets(buckets)
    self.skipped = collections.Counter()
    clips, self.n_mels, self.speaker_ids = _index_speakers(
        speakers, self.buckets, self.skipped, speaker_ids)
    need = num_support + num_query
    # Per speaker: distinct texts -> clips reading them.
    self._by_text: Dict[str, List[List[_Clip]]] = {}
    self.skipped_speakers = []
    for spk, cs in clips.items():
      groups = collections.defaultdict(list)
      for c in cs:
        groups[c.text].append(c)
      if len(groups) < need:
        self.skipped_speakers.append((spk, len(groups)))
        continue
      self._by_text[spk] = [groups[t] for t in sorted(groups)]
    if self.skipped_speakers:
      self.skipped["speaker_too_few_clips"] = len(self.skipped_speakers)
      logger.warning(
          "Skipped %d speakers with fewer than K+Q=%d clips of distinct "
          "texts: %s", len(self.skipped_speakers), need,
          ", ".join(f"{s} ({n})" for s, n in self.skipped_speakers[:10]))
    self.speakers = sorted(self._by_text)
    if len(self.speakers) < num_tasks:
      worst = ", ".join(f"{s} has {n}" for s, n in self.skipped_speakers[:5])
      raise ValueError(
          f"Only {len(self.speakers)} speakers have at least K+Q="
          f"{num_support}+{num_query}={need} clips with distinct texts, but a "
          f"meta-batch needs N={num_tasks} ({worst}). Lower num_support / "
          "num_query / num_tasks, or add clips to these speakers.")

  def __repr__(self) -> str:
    return (f"EpisodeSampler(N={self.num_tasks}, K={self.num_support}, "
            f"Q={self.num_query}, speakers={len(self.speakers)}, "
            f"buckets={tuple(zip(*self.buckets))}, skipped={dict(self.skipped)})")

  def sample(self, rng: np.random.Generator) -> Task:
    """One meta-batch drawn with ``rng``.

    Returns:
      ``Task(support=TTSBatch[N, K, ...], query=TTSBatch[N, Q, ...])``;
      tokens int32 [N, K, Lb], mels float32 [N, K, Tb, M] with
      (Lb, Tb) the largest bucket among the meta-batch's clips.
    """
    n, k, q = self.num_tasks, self.num_support, self.num_query
    chosen = rng.choice(len(self.speakers), n, replace=False)
    support, query, ids = [], [], []
    for si in chosen:
      spk = self.speakers[int(si)]
      groups = self._by_text[spk]
      texts = rng.choice(len(groups), k + q, replace=False)
      picked = []
      for ti in texts:
        g = groups[int(ti)]
        picked.append(g[int(rng.integers(len(g)))] if len(g) > 1 else g[0])
      support.extend(picked[:k])
      query.extend(picked[k:])
      ids.append(self.speaker_ids[spk])
    bucket = max(c.bucket for c in support + query)
    seeds = rng.integers(0, 2**32, size=n * (k + q), dtype=np.uint32)
    sup = _pad_batch(support, bucket, self.buckets, self.n_mels,
                     np.repeat(ids, k), seeds[:n * k])
    qry = _pad_batch(query, bucket, self.buckets, self.n_mels,
                     np.repeat(ids, q), seeds[n * k:])
    return Task(support=_reshape(sup, n, k), query=_reshape(qry, n, q))

  def __iter__(self) -> Iterator[Task]:
    """Endless meta-batches; the same seed gives the same sequence."""
    rng = np.random.default_rng(self.seed)
    while True:
      yield self.sample(rng)

  def episodes(self, num: int) -> Iterator[Task]:
    """The first ``num`` meta-batches of ``iter(self)``."""
    it = iter(self)
    for _ in range(num):
      yield next(it)


class BatchIterator:
  """Plain (non-episodic) batches for multi-speaker pre-training.

  Each epoch shuffles all clips; with ``group_by_bucket`` batches are formed
  inside each length bucket (less padding), otherwise across buckets and
  padded to the largest bucket among the batch. Incomplete batches at the end
  of an epoch's bucket are dropped (their clips come back, reshuffled, in
  the next epoch), so every batch has exactly ``batch_size`` clips and shapes
  come from the bucket set.

  Attributes:
    buckets, speaker_ids, skipped, n_mels: as in ``EpisodeSampler``.
    num_clips: usable clips.
  """

  def __init__(self, speakers: Mapping[str, Sequence[Any]], *,
               batch_size: int, buckets: Optional[Buckets] = None,
               num_buckets: int = 4, max_tokens: int = 200,
               max_frames: int = 1000,
               speaker_ids: Optional[Mapping[str, int]] = None,
               group_by_bucket: bool = True, seed: int = 0):
    """Indexes the clips.

    Args:
      speakers: speaker id -> clips.
      batch_size: ``B``.
      buckets, num_buckets, max_tokens, max_frames, speaker_ids, seed: as in
        ``EpisodeSampler``.
      group_by_bucket: batch clips of the same bucket together.

    Raises:
      ValueError: ``batch_size`` < 1 or larger than the usable clips.
    """
    if batch_size < 1:
      raise ValueError(f"batch_size={batch_size}; use at least 1.")
    if buckets is None:
      buckets = make_buckets([e for v in speakers.values() for e in v],
                             num_buckets, max_tokens, max_frames)
    self.buckets = validate_buckets(buckets)
    self.batch_size, self.group_by_bucket, self.seed = (batch_size,
                                                        group_by_bucket, seed)
    self.skipped = collections.Counter()
    clips, self.n_mels, self.speaker_ids = _index_speakers(
        speakers, self.buckets, self.skipped, speaker_ids)
    self._clips = [(c, self.speaker_ids[s]) for s in sorted(clips)
                   for c in clips[s]]
    self.num_clips = len(self._clips)
    per_bucket = collections.Counter(c.bucket for c, _ in self._clips)
    usable = (sum(n // batch_size for n in per_bucket.values())
              if group_by_bucket else self.num_clips // batch_size)
    if usable == 0:
      raise ValueError(
          f"batch_size={batch_size} exceeds the usable clips per "
          f"{'bucket' if group_by_bucket else 'epoch'} "
          f"({dict(per_bucket) if group_by_bucket else self.num_clips}); "
          "lower batch_size, set group_by_bucket=False, or add clips.")

  def epoch(self, rng: np.random.Generator) -> List[TTSBatch]:
    """All full batches of one shuffled pass, in random order."""
    order = rng.permutation(self.num_clips)
    b = self.batch_size
    if self.group_by_bucket:
      by_bucket = collections.defaultdict(list)
      for i in order:
        by_bucket[self._clips[i][0].bucket].append(int(i))
      groups = [idx[j:j + b] for bk in sorted(by_bucket)
                for idx in (by_bucket[bk],)
                for j in range(0, len(idx) - b + 1, b)]
    else:
      groups = [order[j:j + b] for j in range(0, self.num_clips - b + 1, b)]
    batches = []
    for gi in rng.permutation(len(groups)):
      idx = groups[int(gi)]
      cs = [self._clips[int(i)][0] for i in idx]
      ids = [self._clips[int(i)][1] for i in idx]
      seeds = rng.integers(0, 2**32, size=b, dtype=np.uint32)
      batches.append(_pad_batch(cs, max(c.bucket for c in cs), self.buckets,
                                self.n_mels, ids, seeds))
    return batches

  def __iter__(self) -> Iterator[TTSBatch]:
    """Endless batches, epoch after epoch; deterministic by seed."""
    rng = np.random.default_rng(self.seed)
    while True:
      yield from self.epoch(rng)


_END = object()


class Prefetcher:
  """Runs an iterator in a background thread with a bounded queue.

  The thread stays at most ``size`` items ahead; ``close()`` (or leaving the
  ``with`` block) stops it and joins the thread. An exception raised by the
  source is re-raised by ``next()`` in the consumer. Order is preserved, so a
  deterministic source stays deterministic.

  Args:
    source: the iterator (for instance ``iter(sampler)``).
    size: queue capacity (items prepared ahead).
    transform: optional function applied in the thread (for instance
      ``jax.device_put``) so transfers overlap too.
  """

  def __init__(self, source: Iterator[Any], size: int = 2,
               transform: Optional[Callable[[Any], Any]] = None):
    if size < 1:
      raise ValueError(f"Prefetcher size={size}; use at least 1.")
    self._source = source
    self._transform = transform
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._closed = False
    self._thread = threading.Thread(target=self._run, daemon=True,
                                    name="metatts-prefetch")
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._queue.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _run(self) -> None:
    try:
      for item in self._source:
        if self._transform is not None:
          item = self._transform(item)
        if not self._put(item):
          return
      self._put(_END)
    except BaseException as e:  # pylint: disable=broad-except
      self._put(e)

  def __iter__(self) -> "Prefetcher":
    return self

  def __next__(self):
    if self._closed:
      raise StopIteration
    item = self._queue.get()
    if item is _END:
      self._closed = True
      raise StopIteration
    if isinstance(item, BaseException):
      self.close()
      raise item
    return item

  def close(self, timeout: float = 5.0) -> None:
    """Stops the thread and waits for it (idempotent)."""
    self._stop.set()
    self._closed = True
    while True:  # unblock a producer waiting on a full queue
      try:
        self._queue.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout)

  @property
  def alive(self) -> bool:
    return self._thread.is_alive()

  def __enter__(self) -> "Prefetcher":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def __del__(self):
    try:
      self.close(timeout=0.0)
    except Exception:  # pylint: disable=broad-except
      pass
