"""What judging a samples folder costs: per judge, and serial vs parallel.

``--mode judges`` times each judge (wall and CPU seconds) on every clip of a
samples folder, after one warm-up clip (the loading of Resemblyzer,
PocketSphinx and the numba/JAX compilations is reported separately as
``first``):

* ``load``: reading and resampling the WAV to 16 kHz;
* ``embed``: Resemblyzer utterance embedding (SECS and EER);
* ``world``: WORLD analysis + mel-cepstrum of the clip (MCD, F0);
* ``dtw``: DTW alignment against the same-id reference (MCD, F0);
* ``asr``: PocketSphinx recognition (WER);
* ``griffin_lim``: Griffin-Lim resynthesis of a reference clip (32 iters).

``--mode evaluate`` runs :func:`metatts.evaluation.evaluate` on the folder
with ``workers=1`` and ``workers=N``, interleaved, ``--repeats`` times each
(cache off, no HTML report), and prints the wall times and whether
metrics.json and clips.json are identical. CPU seconds (this process and its
worker processes) are printed too: on a shared machine they say what the
judging cost when the wall time cannot.

The machine may be shared: each run prints the 1-minute load average before
and after.

Usage:
  .venv/bin/python -m benchmarks.judging --workdir W --mode judges
  .venv/bin/python -m benchmarks.judging --workdir W --mode evaluate \\
      --workers 2 --repeats 2 --metrics secs,eer,mcd,wer
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import time


def _load():
  return round(os.getloadavg()[0], 2)


def _cpu():
  """CPU seconds of this process and of its finished children (workers)."""
  me = resource.getrusage(resource.RUSAGE_SELF)
  kids = resource.getrusage(resource.RUSAGE_CHILDREN)
  return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def judges(workdir: str, limit: int) -> dict:
  """Median per-clip seconds of each judge over the folder's clips."""
  from metatts.evaluation import dtw, layout, secs, wer, world
  from metatts.evaluation.audio_io import EVAL_SAMPLE_RATE, load_wav
  from metatts.evaluation.vocoding import vocode_real
  s = layout.scan_samples(workdir)
  refs = [c for spk in s.reference.values() for c in spk.values()]
  syn = [c for ks in s.methods.values() for ss in ks.values()
         for spks in ss.values() for u in spks.values() for c in u.values()]
  syn = syn[:limit]
  ref_feat = {}
  keys = ("load", "embed", "world", "dtw", "asr", "griffin_lim")
  times = {k: [] for k in keys}
  cpu = {k: [] for k in keys}
  first = {}

  def timed(key, fn, *a, **kw):
    t, c = time.perf_counter(), time.process_time()
    out = fn(*a, **kw)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    if key not in first:
      first[key] = dt
    else:
      times[key].append(dt)
      cpu[key].append(dc)
    return out

  for c in refs:
    wav, _ = load_wav(c.wav, EVAL_SAMPLE_RATE)
    ref_feat[(c.speaker, c.utt_id)] = world.world_features(
        wav, EVAL_SAMPLE_RATE)
    timed("griffin_lim", vocode_real, wav, EVAL_SAMPLE_RATE, n_iter=32)
  seconds = []
  for c in syn:
    wav, _ = timed("load", load_wav, c.wav, EVAL_SAMPLE_RATE)
    seconds.append(wav.size / EVAL_SAMPLE_RATE)
    timed("embed", secs.embed_utterance, wav, EVAL_SAMPLE_RATE, c.wav)
    f = timed("world", world.world_features, wav, EVAL_SAMPLE_RATE)
    r = ref_feat.get((c.speaker, c.utt_id))
    if r is not None:
      timed("dtw", dtw.align, f.mcep[:, 1:], r.mcep[:, 1:])
    timed("asr", wer.transcribe, wav, EVAL_SAMPLE_RATE, c.wav)
  med = {k: round(statistics.median(v), 4) for k, v in times.items() if v}
  med_cpu = {k: round(statistics.median(v), 4) for k, v in cpu.items() if v}
  return {"clips": len(syn), "references": len(refs),
          "median_clip_seconds": round(statistics.median(seconds), 2),
          "median_s": med, "median_cpu_s": med_cpu,
          "first_s": {k: round(v, 3) for k, v in first.items()},
          "total_s": {k: round(sum(v), 2) for k, v in times.items()}}


def compare(workdir: str, workers: int, repeats: int, metrics: str,
            griffin_lim: bool) -> dict:
  """Serial vs parallel :func:`evaluate` wall times on the same folder."""
  from metatts.evaluation import pipeline
  walls = {1: [], workers: []}
  loads = {1: [], workers: []}
  cpus = {1: [], workers: []}
  files = {}
  # Interleaved (serial, parallel, serial, ...) so that a shared machine's
  # changing load falls on both alike.
  for _ in range(repeats):
    for n in (1, workers):
      tmp = tempfile.mkdtemp(prefix=f"judging-w{n}-")
      loads[n].append(_load())
      t, c = time.perf_counter(), _cpu()
      pipeline.evaluate(workdir, metrics=metrics, progress=False,
                        griffin_lim=griffin_lim, report=False, out_dir=tmp,
                        workers=n, cache=False)
      walls[n].append(time.perf_counter() - t)
      cpus[n].append(_cpu() - c)
      files[n] = {f: open(os.path.join(tmp, f), encoding="utf-8").read()
                  for f in ("metrics.json", "clips.json")}
      shutil.rmtree(tmp)
  out = {f"workers={n}": {"walls_s": [round(w, 1) for w in walls[n]],
                          "median_s": round(statistics.median(walls[n]), 1),
                          "cpu_s": [round(x, 1) for x in cpus[n]],
                          "load_at_start": loads[n]}
         for n in walls}
  out["identical"] = {f: files[1][f] == files[workers][f]
                      for f in ("metrics.json", "clips.json")}
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--mode", choices=("judges", "evaluate"), default="judges")
  p.add_argument("--limit", type=int, default=10 ** 9,
                 help="judges mode: at most this many synthesized clips")
  p.add_argument("--workers", type=int, default=2)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--metrics", default="secs,eer,mcd,wer")
  p.add_argument("--no-griffin-lim", action="store_true")
  a = p.parse_args()
  res = {"load_before": _load(), "cpus": os.cpu_count()}
  if a.mode == "judges":
    res.update(judges(a.workdir, a.limit))
  else:
    res.update(compare(a.workdir, a.workers, a.repeats, a.metrics,
                       not a.no_griffin_lim))
  res["load_after"] = _load()
  print(json.dumps(res, indent=1))


if __name__ == "__main__":
  main()
