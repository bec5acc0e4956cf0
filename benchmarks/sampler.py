r"""Episode sampler throughput (meta-batches per second, host side).

Measures ``EpisodeSampler.sample`` directly and through ``Prefetcher`` for
N tasks x (K support + Q query) clips, on clips shaped like the embedded
synthetic corpus (80 mel bins, 12.5 ms hop): by default random clips with the
corpus' length distribution; with ``--features DIR`` the real memory-mapped
features of a corpus.

Usage::

  python benchmarks/sampler.py                       # synthetic clips
  python benchmarks/sampler.py --tasks 4,8,16 --episodes 100
  python benchmarks/sampler.py --corpus /tmp/synth_default \
      --cache /tmp/metatts_features                  # real features

Prints a Markdown table (paste into docs/benchmarks.md, "Episode sampler").
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from metatts.data import sampler as smp  # pylint: disable=g-import-not-at-top


class _Clip:
  __slots__ = ("speaker", "text", "tokens", "mel")

  def __init__(self, speaker, text, tokens, mel):
    self.speaker, self.text, self.tokens, self.mel = speaker, text, tokens, mel


def synthetic_speakers(num_speakers: int = 100, clips: int = 30,
                       n_mels: int = 80, seed: int = 0):
  """Random clips with the synthetic corpus' lengths.

  4-14 word sentences read at 2-5 s: 120-420 frames (12.5 ms hop) and about
  25-80 characters.
  """
  rng = np.random.default_rng(seed)
  out = {}
  for s in range(num_speakers):
    cs = []
    for i in range(clips):
      nt = int(rng.integers(25, 81))
      nf = int(nt * rng.uniform(4.5, 5.5))
      cs.append(_Clip(f"s{s:03d}", f"text {i}",
                      rng.integers(1, 40, nt).astype(np.int32),
                      rng.normal(size=(nf, n_mels)).astype(np.float32)))
    out[f"s{s:03d}"] = cs
  return out


def corpus_speakers(corpus: str, cache: str):
  from metatts.data import corpora, features  # pylint: disable=g-import-not-at-top
  c = corpora.load_generic(corpus)
  store = features.build_features(c, features.FeatureConfig(), cache,
                                  progress=False)
  return store.by_speaker()


def measure(speakers, n, k, q, episodes, prefetch, seed=0, repeats=3):
  """Best-of-``repeats`` wall-clock and CPU-time rates (episodes / s).

  The CPU-time rate (episodes per second of this process' CPU time) does not
  depend on other jobs sharing the machine; the wall-clock rate does.
  """
  s = smp.EpisodeSampler(speakers, num_tasks=n, num_support=k, num_query=q,
                         seed=seed)
  best_wall = best_cpu = 0.0
  for _ in range(repeats):
    it = iter(s)
    next(it)  # warm (first touch of memory-mapped files)
    t0, c0 = time.perf_counter(), time.process_time()
    nbytes = 0
    if prefetch:
      with smp.Prefetcher(it, size=4) as pf:
        for _ in range(episodes):
          task = next(pf)
          nbytes = sum(x.nbytes for x in task.support + task.query)
    else:
      for _ in range(episodes):
        task = next(it)
        nbytes = sum(x.nbytes for x in task.support + task.query)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    best_wall = max(best_wall, episodes / wall)
    best_cpu = max(best_cpu, episodes / max(cpu, 1e-9))
  return best_wall, best_cpu, nbytes, task.support.mels.shape


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--tasks", default="4,8,16")
  p.add_argument("--k", type=int, default=5)
  p.add_argument("--q", type=int, default=5)
  p.add_argument("--episodes", type=int, default=100)
  p.add_argument("--corpus", default=None,
                 help="generic-layout corpus folder (real features)")
  p.add_argument("--cache", default="/tmp/metatts_features")
  args = p.parse_args(argv)
  if args.corpus:
    speakers = corpus_speakers(args.corpus, args.cache)
    source = f"features of {args.corpus} ({len(speakers)} speakers)"
  else:
    speakers = synthetic_speakers()
    source = "random clips, 100 speakers x 30 (120-440 frames, 80 mels)"
  print(f"# Episode sampler throughput: {source}")
  print(f"# machine: {platform.node()} {platform.processor() or ''} "
        f"{os.cpu_count()} cores, python {platform.python_version()}, "
        f"numpy {np.__version__}")
  print("| N tasks | K | Q | padded support mels [N,K,T,M] | MB / episode "
        "| episodes/s, wall (direct) | episodes/s, wall (prefetch thread) "
        "| episodes per CPU-second (direct) |")
  print("|---|---|---|---|---|---|---|---|")
  for n in [int(x) for x in args.tasks.split(",")]:
    w0, c0, nbytes, shape = measure(speakers, n, args.k, args.q,
                                    args.episodes, prefetch=False)
    w1, _, _, _ = measure(speakers, n, args.k, args.q, args.episodes,
                          prefetch=True)
    print(f"| {n} | {args.k} | {args.q} | {list(shape)} | "
          f"{nbytes / 2**20:.1f} | {w0:.0f} | {w1:.0f} | {c0:.0f} |")
  if hasattr(os, "getloadavg"):
    print(f"# load average during the run: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  main()
