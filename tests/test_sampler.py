"""Tests for metatts.data.sampler (episodes, plain batches, prefetch)."""

import collections
import threading
import time
from typing import NamedTuple

import numpy as np
import pytest

from metatts.data import sampler as smp
from metatts.types import Task, TTSBatch

M = 8  # mel bins of the fake clips


class FakeExample(NamedTuple):
  speaker: str
  text: str
  tokens: np.ndarray  # int32 [L]
  mel: np.ndarray  # float32 [T, M]


def _fake(speaker, text, rng, max_tokens=40, max_frames=120):
  nt = int(rng.integers(3, max_tokens + 1))
  nf = int(rng.integers(10, max_frames + 1))
  # Encode (speaker, text) in the content so tests can trace every row back.
  tokens = rng.integers(1, 30, nt).astype(np.int32)
  mel = rng.normal(size=(nf, M)).astype(np.float32) + 1.0
  return FakeExample(speaker, text, tokens, mel)


def make_speakers(num_speakers=10, clips=12, seed=0, **kw):
  rng = np.random.default_rng(seed)
  return {f"spk{s:02d}": [_fake(f"spk{s:02d}", f"sentence {s} {i}", rng, **kw)
                          for i in range(clips)]
          for s in range(num_speakers)}


def _lookup(speakers):
  """(speaker, tokens bytes) -> example, to trace padded rows back."""
  return {(s, e.tokens.tobytes()): e for s, es in speakers.items()
          for e in es}


@pytest.fixture(scope="module")
def speakers():
  return make_speakers()


@pytest.fixture(scope="module")
def sampler(speakers):
  return smp.EpisodeSampler(speakers, num_tasks=4, num_support=5, num_query=3,
                            num_buckets=3, seed=1)


def test_episode_shapes_dtypes_and_padding(sampler, speakers):
  task = sampler.sample(np.random.default_rng(0))
  assert isinstance(task, Task)
  assert isinstance(task.support, TTSBatch)
  s, q = task.support, task.query
  lt, lf = s.tokens.shape[2], s.mels.shape[2]
  assert (lt, lf) in set(zip(*sampler.buckets))
  assert s.tokens.shape == (4, 5, lt) and q.tokens.shape == (4, 3, lt)
  assert s.mels.shape == (4, 5, lf, M) and q.mels.shape == (4, 3, lf, M)
  for b in (s, q):
    assert b.tokens.dtype == np.int32 and b.mels.dtype == np.float32
    assert b.token_lengths.dtype == np.int32
    assert b.mel_lengths.dtype == np.int32
    assert b.speaker_ids.dtype == np.int32 and b.seeds.dtype == np.uint32
    assert b.seeds.shape == b.speaker_ids.shape == b.token_lengths.shape
  table = _lookup(speakers)
  inv_ids = {v: k for k, v in sampler.speaker_ids.items()}
  for b in (s, q):
    for n in range(b.tokens.shape[0]):
      for k in range(b.tokens.shape[1]):
        tl, ml = int(b.token_lengths[n, k]), int(b.mel_lengths[n, k])
        spk = inv_ids[int(b.speaker_ids[n, k])]
        ex = table[(spk, b.tokens[n, k, :tl].tobytes())]
        # Valid part equals the clip, padding is exactly zero.
        assert tl == len(ex.tokens) and ml == ex.mel.shape[0]
        np.testing.assert_array_equal(b.mels[n, k, :ml], ex.mel)
        assert not b.tokens[n, k, tl:].any()
        assert not b.mels[n, k, ml:].any()


def test_tasks_are_distinct_speakers_with_disjoint_texts(sampler, speakers):
  table = _lookup(speakers)
  inv_ids = {v: k for k, v in sampler.speaker_ids.items()}
  for task in sampler.episodes(20):
    sup, qry = task.support, task.query
    # Every row of a task belongs to the same speaker, N speakers distinct.
    assert (sup.speaker_ids == sup.speaker_ids[:, :1]).all()
    assert (qry.speaker_ids == sup.speaker_ids[:, :1]).all()
    assert len(set(sup.speaker_ids[:, 0].tolist())) == 4
    for n in range(4):
      spk = inv_ids[int(sup.speaker_ids[n, 0])]

      def texts(b, n=n, spk=spk):
        return [table[(spk, b.tokens[n, k, :b.token_lengths[n, k]].tobytes())
                      ].text for k in range(b.tokens.shape[1])]

      st, qt = texts(sup), texts(qry)
      assert len(set(st + qt)) == 5 + 3  # no text twice in a task


def test_disjoint_texts_with_repeated_readings():
  # Each text read three times: the sampler must still never put one text in
  # both support and query.
  rng = np.random.default_rng(3)
  speakers = {"a": [_fake("a", f"t{i % 4}", rng) for i in range(12)],
              "b": [_fake("b", f"t{i % 5}", rng) for i in range(15)]}
  s = smp.EpisodeSampler(speakers, num_tasks=1, num_support=2, num_query=2,
                         seed=0)
  table = _lookup(speakers)
  inv = {v: k for k, v in s.speaker_ids.items()}
  for task in s.episodes(30):
    spk = inv[int(task.support.speaker_ids[0, 0])]
    rows = [(b, k) for b in (task.support, task.query) for k in range(2)]
    texts = [table[(spk, b.tokens[0, k, :b.token_lengths[0, k]].tobytes())
                   ].text for b, k in rows]
    assert len(set(texts)) == 4


def test_deterministic_by_seed(speakers):
  def run(seed):
    s = smp.EpisodeSampler(speakers, num_tasks=3, num_support=2, num_query=2,
                           seed=seed)
    return list(s.episodes(5))

  a, b, c = run(7), run(7), run(8)
  for x, y in zip(a, b):
    for u, v in zip(x.support + x.query, y.support + y.query):
      np.testing.assert_array_equal(u, v)
  assert any(not np.array_equal(x.support.tokens, z.support.tokens)
             or not np.array_equal(x.support.seeds, z.support.seeds)
             for x, z in zip(a, c))


def test_seeds_are_per_example_and_vary(sampler):
  task = sampler.sample(np.random.default_rng(5))
  seeds = np.concatenate([task.support.seeds.ravel(),
                          task.query.seeds.ravel()])
  assert seeds.size == 4 * (5 + 3)
  assert len(set(seeds.tolist())) == seeds.size  # 32 draws of 2**32: unique


def test_shape_count_bounded_by_buckets(speakers):
  # Many short and a few long clips so that several buckets get used.
  s = smp.EpisodeSampler(speakers, num_tasks=2, num_support=1, num_query=1,
                         num_buckets=4, seed=0)
  shapes = collections.Counter()
  for task in s.episodes(200):
    shapes[(task.support.tokens.shape, task.support.mels.shape,
            task.query.tokens.shape, task.query.mels.shape)] += 1
  assert 1 < len(shapes) <= len(s.buckets)
  # Each shape is a bucket boundary pair.
  for (st, sm, _, _) in shapes:
    assert (st[-1], sm[-2]) in set(zip(*s.buckets))


def test_make_buckets_quantiles_and_limits(speakers):
  examples = [e for es in speakers.values() for e in es]
  b = smp.make_buckets(examples, num_buckets=2, max_tokens=200,
                       max_frames=1000, token_multiple=8, frame_multiple=16)
  toks = np.array([len(e.tokens) for e in examples])
  frames = np.array([e.mel.shape[0] for e in examples])
  # Independent check: ceil(quantile / multiple) * multiple by hand.
  assert b.tokens[-1] == int(np.ceil(toks.max() / 8) * 8)
  assert b.frames[-1] == int(np.ceil(frames.max() / 16) * 16)
  assert b.tokens[0] == int(np.ceil(np.quantile(toks, 0.5) / 8) * 8)
  assert b.frames[0] == int(np.ceil(np.quantile(frames, 0.5) / 16) * 16)
  capped = smp.make_buckets(examples, num_buckets=3, max_tokens=20,
                            max_frames=60)
  assert capped.tokens[-1] <= 20 and capped.frames[-1] <= 60
  assert capped.index(21, 10) == -1 and capped.index(5, 61) == -1
  assert capped.index(1, 1) == 0


def test_too_long_clips_skipped_and_counted(speakers):
  buckets = smp.Buckets(tokens=(16, 40), frames=(64, 100))
  n_long = sum(1 for es in speakers.values() for e in es
               if len(e.tokens) > 40 or e.mel.shape[0] > 100)
  assert n_long > 0
  s = smp.EpisodeSampler(speakers, num_tasks=2, num_support=2, num_query=2,
                         buckets=buckets, seed=0)
  assert s.skipped["too_long"] == n_long
  for task in s.episodes(20):
    assert task.support.tokens.shape[-1] <= 40
    assert task.support.mels.shape[-2] <= 100


def test_speaker_with_too_few_clips_is_skipped_and_counted():
  speakers = make_speakers(num_speakers=4, clips=8)
  speakers["tiny_speaker"] = speakers["spk00"][:3]
  s = smp.EpisodeSampler(speakers, num_tasks=2, num_support=3, num_query=2)
  assert "tiny_speaker" not in s.speakers and len(s.speakers) == 4
  assert s.skipped["speaker_too_few_clips"] == 1
  assert s.skipped_speakers == [("tiny_speaker", 3)]


def test_no_speaker_with_enough_clips_names_speaker_and_fix():
  speakers = make_speakers(num_speakers=2, clips=4)
  with pytest.raises(ValueError, match=r"spk00 has 4.*Lower num_support"):
    smp.EpisodeSampler(speakers, num_tasks=1, num_support=3, num_query=2)
  with pytest.raises(ValueError, match=r"N=3"):
    smp.EpisodeSampler(speakers, num_tasks=3, num_support=1, num_query=1)


@pytest.mark.parametrize("k,q", [(0, 1), (21, 1), (5, 0)])
def test_k_and_q_out_of_range(speakers, k, q):
  with pytest.raises(ValueError, match="num_support|num_query"):
    smp.EpisodeSampler(speakers, num_tasks=1, num_support=k, num_query=q)


def test_bad_buckets_and_mismatched_mels(speakers):
  with pytest.raises(ValueError, match="increasing"):
    smp.EpisodeSampler(speakers, num_tasks=1, num_support=1, num_query=1,
                       buckets=smp.Buckets((40, 20), (50, 100)))
  bad = dict(speakers)
  e = bad["spk01"][0]
  bad["spk01"] = [e._replace(mel=np.zeros((5, M + 1), np.float32))] + list(
      bad["spk01"][1:])
  with pytest.raises(ValueError, match="mel bins"):
    smp.EpisodeSampler(bad, num_tasks=1, num_support=1, num_query=1)
  with pytest.raises(ValueError, match="No speakers"):
    smp.EpisodeSampler({}, num_tasks=1, num_support=1, num_query=1,
                       buckets=smp.Buckets((8,), (8,)))


def test_speaker_table_sorted_and_stable(speakers):
  table = smp.speaker_table(reversed(list(speakers)))
  assert list(table) == sorted(speakers)
  assert list(table.values()) == list(range(len(speakers)))
  with pytest.raises(ValueError, match="speaker_ids"):
    smp.EpisodeSampler(speakers, num_tasks=1, num_support=1, num_query=1,
                       speaker_ids={"spk00": 0})


def test_batch_iterator_shapes_epoch_coverage_and_determinism(speakers):
  it = smp.BatchIterator(speakers, batch_size=4, num_buckets=3, seed=2)
  table = _lookup(speakers)
  inv = {v: k for k, v in it.speaker_ids.items()}
  rng = np.random.default_rng(0)
  epoch = it.epoch(rng)
  seen = set()
  for b in epoch:
    assert b.tokens.shape[0] == 4 and b.mels.shape[-1] == M
    assert (b.tokens.shape[1], b.mels.shape[1]) in set(zip(*it.buckets))
    for i in range(4):
      spk = inv[int(b.speaker_ids[i])]
      key = (spk, b.tokens[i, :b.token_lengths[i]].tobytes())
      assert key in table and key not in seen  # each clip at most once
      seen.add(key)
  # Dropped remainders: fewer than batch_size per bucket.
  per_bucket = collections.Counter(
      it.buckets.index(len(e.tokens), e.mel.shape[0])
      for es in speakers.values() for e in es)
  assert len(seen) == sum(n // 4 * 4 for n in per_bucket.values())
  a = [x.tokens for _, x in zip(range(30), iter(it))]
  b2 = [x.tokens for _, x in zip(range(30), iter(smp.BatchIterator(
      speakers, batch_size=4, num_buckets=3, seed=2)))]
  for x, y in zip(a, b2):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(ValueError, match="batch_size"):
    smp.BatchIterator(speakers, batch_size=10_000)


def test_batch_iterator_grouping_reduces_padding(speakers):
  def pad_fraction(group):
    it = smp.BatchIterator(speakers, batch_size=4, num_buckets=4,
                           group_by_bucket=group, seed=0)
    batches = it.epoch(np.random.default_rng(0))
    valid = sum(int(b.mel_lengths.sum()) for b in batches)
    total = sum(b.mels.shape[0] * b.mels.shape[1] for b in batches)
    return 1 - valid / total
  assert pad_fraction(True) < pad_fraction(False)


def test_prefetcher_preserves_order_and_stops(sampler):
  direct = list(sampler.episodes(6))
  with smp.Prefetcher(iter(sampler), size=2) as pf:
    fetched = [next(pf) for _ in range(6)]
    assert pf.alive
  for x, y in zip(direct, fetched):
    np.testing.assert_array_equal(x.support.mels, y.support.mels)
    np.testing.assert_array_equal(x.query.seeds, y.query.seeds)
  assert not pf.alive  # joined on exit although the source is endless


def test_prefetcher_bounded_and_propagates_errors():
  produced = []

  def source():
    for i in range(100):
      produced.append(i)
      yield i

  pf = smp.Prefetcher(source(), size=3)
  time.sleep(0.3)
  # At most size items queued + one held by the blocked producer.
  assert len(produced) <= 3 + 1
  assert next(pf) == 0
  pf.close()
  assert not pf.alive

  def failing():
    yield 1
    raise RuntimeError("corrupt clip")

  pf = smp.Prefetcher(failing(), size=2)
  assert next(pf) == 1
  with pytest.raises(RuntimeError, match="corrupt clip"):
    next(pf)
  assert list(smp.Prefetcher(iter([1, 2, 3]))) == [1, 2, 3]
  assert threading.active_count() < 10


def test_jitted_step_compiles_at_most_once_per_bucket(speakers):
  jax = pytest.importorskip("jax")
  traces = []

  @jax.jit
  def step(task):
    traces.append(task.support.mels.shape)  # runs only while tracing
    s, q = task.support, task.query
    mask = (np.arange(s.mels.shape[2])[None, None, :] <
            s.mel_lengths[..., None])
    return (s.mels.sum(-1) * mask).sum() + q.mels.sum()

  s = smp.EpisodeSampler(speakers, num_tasks=2, num_support=1, num_query=1,
                         num_buckets=4, seed=0)
  seen = set()
  for task in s.episodes(60):
    step(task).block_until_ready()
    seen.add(task.support.mels.shape)
  assert len(traces) == len(seen) <= len(s.buckets)
  assert len(seen) > 1
