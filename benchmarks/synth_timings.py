r"""How well the synthetic corpus's timings describe its clips, and the
word-boundary error of reference alignments against them.

For every clip with synthesizer timings (``metatts.data.synth``):

* ``end-gap``: the last word end minus the end of the clip's last frame
  within ``--speech-db`` of its peak (5 ms frames); positive = the word ends
  after the energy fades (quiet final consonants), negative = speech goes on
  after the recorded end.
* ``pause dB``: the loudest 5 ms frame in the middle half of each pause of
  80 ms or more between words (silence where the synthesizer says so).
* The word-boundary error (``metatts.evaluation.alignment``) of the uniform
  alignment (equal frames per token: a bar any aligner must clear) and of
  the reference durations (word ends snapped to frame boundaries: the
  quantization floor, at most half a hop), on the mel clock of the feature
  cache's trimming, with espeak-ng phoneme tokens.

Usage::

  python benchmarks/synth_timings.py --root ~/.cache/metatts/synth-default

No mels are computed (only the cache's trim bounds and frame counts), so it
runs in about a minute for the default corpus.
"""

from __future__ import annotations

import argparse
import collections
import sys
import warnings

import numpy as np
import soundfile as sf

from metatts.audio import text as atext
from metatts.data import corpora, features
from metatts.evaluation import alignment as al


def _frame_db(audio: np.ndarray, sr: int, hop: int) -> np.ndarray:
  n = audio.size // hop
  rms = np.sqrt(np.mean(audio[:n * hop].reshape(n, hop)**2, axis=1) + 1e-20)
  return 20 * np.log10(rms / rms.max())


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--root", required=True, help="synthetic corpus folder")
  p.add_argument("--speech-db", type=float, default=-30.0)
  p.add_argument("--max-clips", type=int, default=0, help="0: all")
  args = p.parse_args(argv)
  corpus = corpora.load_generic(args.root)
  fc = features.FeatureConfig(symbols="phonemes")
  hop, sr = fc.hop_length, fc.sample_rate
  rows = collections.defaultdict(lambda: collections.defaultdict(list))
  utts = [u for u in corpus.utterances if u.timings is not None]
  if args.max_clips:
    utts = utts[:args.max_clips]
  for u in utts:
    voice = corpus.speakers[u.speaker].get("base_voice", u.speaker)
    r = rows[voice]
    audio, fsr = sf.read(u.audio_path, dtype="float64")
    fhop = int(0.005 * fsr)
    db = _frame_db(audio, fsr, fhop)
    t = u.timings
    loud = np.flatnonzero(db > args.speech_db)
    r["end_gap"].append(1000 * (t.word_ends[-1] - (loud[-1] + 1) * fhop / fsr))
    starts = np.concatenate([[0.0], t.phone_ends[:-1]])
    for k, (ph, s, e) in enumerate(zip(t.phones, starts, t.phone_ends)):
      if ph == "pau" and 0 < k < len(t.phones) - 1 and e - s >= 0.08:
        mid = db[int((s + 0.25 * (e - s)) * fsr / fhop):
                 int((s + 0.75 * (e - s)) * fsr / fhop)]
        if mid.size:
          r["pause_db"].append(float(mid.max()))
    start, end = features._trim_bounds(u.audio_path, fc)  # pylint: disable=protected-access
    tm = t.shifted(start / sr, (end - start) / sr)
    frames = 1 + (end - start) // hop
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      tokens = atext.text_to_ids(u.text, "phonemes")
    r["joined"].append(float(
        al.word_token_ends(tokens, "phonemes").size != len(tm.words)))
    r["uniform"].append(al.word_boundary_errors(
        al.uniform_durations(tokens.size, frames), tokens, "phonemes", tm,
        hop, sr))
    ref = al.durations_from_word_ends(tokens, "phonemes", tm, frames, hop, sr)
    r["reference"].append(None if ref is None else al.word_boundary_errors(
        ref, tokens, "phonemes", tm, hop, sr))
  print(f"{len(utts)} timed clips in {args.root}; speech = frames above "
        f"{args.speech_db:g} dB re peak")
  print("| voice | clips | end-gap ms p5 / median / p95 | pause dB p95 / "
        "max (n) | uniform median ms | reference median / max ms | words "
        "matched (joined) / skipped |")
  print("|---|---|---|---|---|---|---|")
  total = collections.defaultdict(list)
  for voice in sorted(rows) + ["all"]:
    r = total if voice == "all" else rows[voice]
    if voice != "all":
      for k, v in r.items():
        total[k].extend(v)
    gap = np.asarray(r["end_gap"])
    pause = np.asarray(r["pause_db"])
    uni = al.summarize(r["uniform"])
    ref = al.summarize(r["reference"])
    ref_max = max((float(np.max(e)) for e in r["reference"]
                   if e is not None and e.size), default=float("nan"))
    print(f"| {voice} | {gap.size} | {np.percentile(gap, 5):.0f} / "
          f"{np.median(gap):.0f} / {np.percentile(gap, 95):.0f} | "
          f"{np.percentile(pause, 95) if pause.size else float('nan'):.0f} / "
          f"{pause.max() if pause.size else float('nan'):.0f} ({pause.size})"
          f" | {uni.median_ms:.1f} | {ref.median_ms:.2f} / {ref_max:.2f} | "
          f"{int(sum(r['joined']))} / {uni.num_skipped} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
