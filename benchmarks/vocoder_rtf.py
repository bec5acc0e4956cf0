"""Real-time factor of the vocoders: WaveNet fast (queued) vs naive
generation, and the parallel vocoders (source-filter WaveNet, Griffin-Lim).

RTF = seconds of generation / seconds of audio generated, per example
stream (lower is better; < 1 is faster than real time); with batch B the
wall time of the batch is divided by the audio of one example, so B streams
are produced at that RTF. Wall-clock and CPU-time (``process_time``) RTFs
are both reported. Each measurement is the median of
``--repeats`` runs after one compile-and-warm-up run; the compile time is
reported separately. The naive generator re-runs the whole receptive field for
every sample, so it is timed on a shorter clip (``--naive-seconds``); RTF is
per second of audio, so the two are comparable.

The parallel vocoders make the whole clip in one pass and are timed on
``--parallel-seconds`` of audio (batch of one): the source-filter WaveNet
(``metatts.models.nsf``, one row per ``--nsf-sizes``) through
``metatts.vocoders.NSFVocoder`` and Griffin-Lim (32 iterations) through
``metatts.vocoders.GriffinLimVocoder``, both as the voice path calls them
(a log-mel ``[T, 80]`` in, the waveform out, bucket padding included).

Usage:
  .venv/bin/python -m benchmarks.vocoder_rtf            # tiny + base, B=1,4
  .venv/bin/python -m benchmarks.vocoder_rtf --sizes tiny --repeats 5
  .venv/bin/python -m benchmarks.vocoder_rtf --sizes '' --nsf-sizes base

References:
  T. L. Paine et al., "Fast Wavenet Generation Algorithm", 2016.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
from flax import nnx

from metatts.models import wavenet as wn


def _time(fn, repeats):
  """(compile + first run, median, min wall seconds, median CPU seconds).

  CPU seconds (``time.process_time``, all threads of this process) do not
  count time spent waiting for a core, so they stay meaningful on a machine
  shared with other jobs.
  """
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t0
  runs, cpu = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    runs.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return first, statistics.median(runs), min(runs), statistics.median(cpu)


def measure(size, batch, seconds, naive_seconds, repeats, n_mels=80):
  """Returns a dict of timings for one (size, batch)."""
  cfg = wn.wavenet_config(size, n_mels=n_mels)
  model = wn.WaveNet(cfg, rngs=nnx.Rngs(0))
  key = jax.random.key(0)
  out = {"size": size, "batch": batch,
         "receptive_field": cfg.receptive_field,
         "params": sum(x.size for x in jax.tree.leaves(
             nnx.state(model, nnx.Param)))}
  for name, fn, secs in (("fast", wn.generate_jit, seconds),
                         ("naive", wn.generate_naive_jit, naive_seconds)):
    if secs <= 0:
      continue
    frames = max(1, round(secs * cfg.sample_rate / cfg.hop_length))
    audio_s = frames * cfg.hop_length / cfg.sample_rate
    mels = jax.random.normal(jax.random.key(1), (batch, frames, n_mels))
    first, med, best, cpu = _time(lambda: fn(model, mels, key), repeats)
    out[name] = {"audio_seconds": audio_s, "compile_and_first_s": first,
                 "median_s": med, "rtf": med / audio_s,
                 "min_rtf": best / audio_s, "cpu_rtf": cpu / audio_s,
                 "samples_per_s": batch * frames * cfg.hop_length / med}
  return out


def measure_parallel(name, seconds, repeats, n_mels=80):
  """Timings of a parallel vocoder (``nsf:<size>`` or ``griffin-lim``)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from metatts import vocoders  # pylint: disable=g-import-not-at-top
  from metatts.audio import features as afeat  # pylint: disable=g-import-not-at-top
  from metatts.models import nsf  # pylint: disable=g-import-not-at-top
  mel_config = afeat.MelConfig(n_mels=n_mels)
  if name == "griffin-lim":
    voc = vocoders.GriffinLimVocoder(mel_config)
    params = 0
  else:
    cfg = nsf.nsf_config(name.split(":", 1)[1], n_mels=n_mels)
    model = nsf.NSFWaveNet(cfg, rngs=nnx.Rngs(0))
    voc = vocoders.NSFVocoder(model, {}, "unused")
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model,
                                                           nnx.Param)))
  frames = max(1, round(seconds * mel_config.sample_rate /
                        mel_config.hop_length))
  audio_s = frames * mel_config.hop_length / mel_config.sample_rate
  mel = np.asarray(jax.random.normal(jax.random.key(1), (frames, n_mels)),
                   np.float32) - 4.0
  key = jax.random.key(0)
  first, med, best, cpu = _time(lambda: voc(mel, key), repeats)
  return {"vocoder": name, "params": params, "audio_seconds": audio_s,
          "compile_and_first_s": first, "median_s": med,
          "rtf": med / audio_s, "min_rtf": best / audio_s,
          "cpu_rtf": cpu / audio_s}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="tiny,base")
  parser.add_argument("--batches", default="1,4")
  parser.add_argument("--seconds", type=float, default=0.5,
                      help="audio seconds per example for fast generation")
  parser.add_argument("--naive-seconds", type=float, default=0.05,
                      help="audio seconds per example for naive generation")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--nsf-sizes", default="base",
                      help="source-filter WaveNet sizes ('' = none)")
  parser.add_argument("--parallel-seconds", type=float, default=5.0,
                      help="audio seconds for the parallel vocoders")
  parser.add_argument("--json", default="", help="optional output path")
  args = parser.parse_args()
  results = []
  for size in filter(None, args.sizes.split(",")):
    for b in (int(x) for x in args.batches.split(",")):
      r = measure(size, b, args.seconds, args.naive_seconds, args.repeats)
      results.append(r)
      print(json.dumps(r), flush=True)
  load = os.getloadavg() if hasattr(os, "getloadavg") else None
  print(f"\nmachine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, jax {jax.__version__} "
        f"{jax.devices()[0].platform}, load average at end {load}")
  print("| size | RF | B | fast RTF wall median (min) | fast RTF CPU | "
        "naive RTF wall median (min) | naive RTF CPU | speed-up (CPU) | "
        "fast compile + first run s |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in results:
    f, n = r["fast"], r["naive"]
    print(f"| {r['size']} | {r['receptive_field']} | {r['batch']} | "
          f"{f['rtf']:.2f} ({f['min_rtf']:.2f}) | {f['cpu_rtf']:.2f} | "
          f"{n['rtf']:.1f} ({n['min_rtf']:.1f}) | {n['cpu_rtf']:.1f} | "
          f"{n['cpu_rtf'] / f['cpu_rtf']:.0f}x | "
          f"{f['compile_and_first_s']:.1f} |")
  parallel = [measure_parallel(f"nsf:{z}", args.parallel_seconds,
                               args.repeats)
              for z in filter(None, args.nsf_sizes.split(","))]
  parallel.append(measure_parallel("griffin-lim", args.parallel_seconds,
                                   args.repeats))
  print("\n| vocoder | params | audio s | RTF wall median (min) | RTF CPU | "
        "compile + first run s |")
  print("|---|---|---|---|---|---|")
  for r in parallel:
    print(f"| {r['vocoder']} | {r['params']} | {r['audio_seconds']:.1f} | "
          f"{r['rtf']:.3f} ({r['min_rtf']:.3f}) | {r['cpu_rtf']:.3f} | "
          f"{r['compile_and_first_s']:.1f} |")
  if args.json:
    with open(args.json, "w") as fh:
      json.dump({"autoregressive": results, "parallel": parallel}, fh,
                indent=1)


if __name__ == "__main__":
  main()
