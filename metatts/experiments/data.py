"""The tts experiment's data: the corpus, its features and the task stream.

:func:`prepare_data` builds (or finds) the corpus - the embedded synthetic
corpus (``metatts.data.synth``) or a real layout (VCTK, LibriTTS, generic) -
and its feature cache, and splits the speakers into training and held-out
ones; :func:`task_factory` is the deterministic stream of speaker tasks every
method trains on.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, NamedTuple, Optional

import numpy as np

from metatts.experiments.config import CORPORA
from metatts.types import Task


def _say(msg: str) -> None:
  print(msg, flush=True)


class Data(NamedTuple):
  """Features of one corpus, split for training and evaluation."""

  corpus_dir: str
  feature_config: Any  # metatts.data.features.FeatureConfig
  train: Dict[str, list]  # speaker -> [Example]
  heldout: Dict[str, Dict[str, list]]  # split -> speaker -> [Example]
  speakers: List[str]  # training speakers, table order
  buckets: Any  # metatts.data.sampler.Buckets
  skipped: Dict[str, int]


def prepare_data(config, progress: bool = True) -> Data:
  """Builds/loads the corpus and its feature cache; splits the speakers.

  Args:
    config: the experiment config (uses ``config.data``).
    progress: progress bars.

  Returns:
    A ``Data``.

  Raises:
    ValueError / FileNotFoundError: unknown corpus kind, missing folder, a
      held-out speaker that is not in the corpus, too few speakers.
  """
  from metatts.data import corpora, features, sampler, synth  # pylint: disable=g-import-not-at-top
  d = config.data
  if d.corpus not in CORPORA:
    raise ValueError(f"config.data.corpus={d.corpus!r}; use one of "
                     f"{list(CORPORA)}.")
  root = os.path.abspath(os.path.expanduser(d.root))
  if d.corpus == "synth":
    import dataclasses  # pylint: disable=g-import-not-at-top
    preset = d.synth_preset
    overrides = d.synth_overrides.to_dict() if d.get("synth_overrides") else {}
    if overrides:
      preset = dict(dataclasses.asdict(synth.get_config(preset)), **overrides)
    _say(f"Corpus: synthetic preset {d.synth_preset}"
         f"{' with ' + str(sorted(overrides)) if overrides else ''} in {root}"
         " (built if missing or out of date).")
    synth.build_corpus(preset, root, seed=int(d.synth_seed),
                       progress=progress)
    corpus = corpora.load_generic(root)
  else:
    corpus = corpora.load_corpus(d.corpus, root)
  meta_overrides = {}
  for split in ("heldout_seen", "heldout_unseen"):
    for spk in list(d.get(split, ()) or ()):
      if spk not in corpus.speakers:
        raise ValueError(
            f"config.data.{split} names speaker {spk!r}, which {root} does "
            f"not have; pick from {sorted(corpus.speakers)[:10]}...")
      meta_overrides[spk] = split
  if meta_overrides:
    speakers = {s: dict(m, split=meta_overrides.get(s, m.get("split",
                                                               "train")))
                for s, m in corpus.speakers.items()}
    corpus = corpus._replace(speakers=speakers)
  fc = features.FeatureConfig.from_config(d.features)
  store = features.build_features(corpus, fc, os.path.expanduser(d.cache_dir),
                                  progress=progress)
  by = store.by_speaker()
  train: Dict[str, list] = {}
  heldout: Dict[str, Dict[str, list]] = {"heldout_seen": {},
                                         "heldout_unseen": {}}
  for spk, exs in by.items():
    split = corpus.speakers.get(spk, {}).get("split", "train")
    if split == "train":
      train[spk] = exs
    else:
      heldout[split][spk] = exs
  if int(d.max_train_speakers) and len(train) > int(d.max_train_speakers):
    keep = sorted(train)[:int(d.max_train_speakers)]
    train = {s: train[s] for s in keep}
  if len(train) < int(config.train.num_tasks):
    raise ValueError(
        f"{root} has {len(train)} training speakers with features, fewer "
        f"than config.train.num_tasks={config.train.num_tasks}; lower it or "
        "use a larger corpus.")
  all_train = [e for v in train.values() for e in v]
  buckets = sampler.make_buckets(all_train, int(d.num_buckets),
                                 int(d.max_tokens), int(d.max_frames),
                                 frame_multiple=16)
  _say(f"Features: {len(store)} clips ({dict(store.skipped) or 'none'} "
       f"skipped); {len(train)} training speakers, "
       f"{len(heldout['heldout_seen'])} heldout_seen, "
       f"{len(heldout['heldout_unseen'])} heldout_unseen; buckets "
       f"{tuple(zip(*buckets))}.")
  return Data(root, fc, train, heldout, sorted(train), buckets,
              dict(store.skipped))


def task_factory(data: Data, config, slot: Optional[int]):
  """``(data_key, start_step) -> iterator of Task`` for ``loop.train``.

  The tasks of step ``s`` depend only on ``(config.seed, s)``, so a resumed
  run sees exactly the tasks an uninterrupted one would, and every method
  sees the same stream.

  Args:
    data: from ``prepare_data``.
    config: the experiment config.
    slot: if not None, every clip's speaker id becomes this row (meta
      methods; see the module docstring).
  """
  from metatts.data import sampler as sampler_lib  # pylint: disable=g-import-not-at-top
  t = config.train
  table = {s: i for i, s in enumerate(data.speakers)}
  sampler = sampler_lib.EpisodeSampler(
      data.train, num_tasks=int(t.num_tasks), num_support=int(t.num_support),
      num_query=int(t.num_query), buckets=data.buckets, speaker_ids=table,
      seed=int(config.seed))

  def factory(data_key, start_step):
    key = [int(x) for x in np.asarray(data_key).reshape(-1)]
    step = int(start_step)
    while True:
      task = sampler.sample(np.random.default_rng(key + [step]))
      if slot is not None:
        task = Task(
            task.support._replace(speaker_ids=np.full_like(
                task.support.speaker_ids, slot)),
            task.query._replace(speaker_ids=np.full_like(
                task.query.speaker_ids, slot)))
      step += 1
      yield task

  return factory


__all__ = ["Data", "prepare_data", "task_factory"]
