"""Command line: judge a samples workdir and write its report.

  python -m metatts.evaluation --workdir W [--metrics secs,eer,mcd,wer,f0]
      [--out W/report] [--no-griffin-lim] [--f0-method dio|harvest]
      [--no-report] [--quiet] [--workers N] [--no-cache] [--wer-steps 0,5,100]

Reads ``W/samples`` (layout in docs/evaluation.md), shows a progress bar, and
writes ``W/report/index.html`` and ``W/report/metrics.json``. Clips are judged
in ``--workers`` processes, and every judged clip is kept in
``W/report/.judged/``, so a rerun judges only new or changed clips. Exit status
0 on success, 2 when the input is unusable (the message says what to fix).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from metatts.evaluation import pipeline


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m metatts.evaluation",
      description="Judge synthesized speech in WORKDIR/samples (speaker "
                  "similarity, verification EER, MCD, WER, F0) and write "
                  "WORKDIR/report/index.html and metrics.json.")
  p.add_argument("--workdir", required=True,
                 help="experiment directory holding samples/")
  p.add_argument("--metrics", default=",".join(pipeline.DEFAULT_METRICS),
                 help="comma-separated subset of "
                      f"{','.join(pipeline.ALL_METRICS)} (default: "
                      "%(default)s; dnsmos needs speechmos + onnxruntime)")
  p.add_argument("--out", default=None,
                 help="report folder (default WORKDIR/report)")
  p.add_argument("--no-griffin-lim", action="store_true",
                 help="skip the Griffin-Lim vocoded-real ceiling")
  p.add_argument("--f0-method", default="dio", choices=("dio", "harvest"))
  p.add_argument("--no-report", action="store_true",
                 help="write metrics.json only (no HTML, plots or audio)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.add_argument("--workers", type=int, default=0,
                 help="judging processes: 0 = auto (the usable CPUs up to 4; "
                      "serial for small jobs), 1 = serial (default: %(default)s)")
  p.add_argument("--no-cache", action="store_true",
                 help="judge every clip again (ignore and do not write "
                      "OUT/.judged/)")
  p.add_argument("--wer-steps", default="",
                 help="comma-separated step counts whose synthesized clips get "
                      "WER (e.g. 0,5,100; default: all)")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    res = pipeline.evaluate(
        args.workdir, metrics=args.metrics, progress=not args.quiet,
        griffin_lim=not args.no_griffin_lim, f0_method=args.f0_method,
        report=not args.no_report, out_dir=args.out, workers=args.workers,
        cache=not args.no_cache, wer_steps=args.wer_steps or None)
  except (FileNotFoundError, ValueError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"metrics: {res['metrics_json']} ({res['n_judged']} of "
        f"{res['n_clips']} clips judged now, the rest from the cache; "
        f"{res['workers']} process(es))")
  if res["report"]:
    print(f"report:  {res['report']}")
  for r in res["step_ratios"]:
    print(f"step ratio: {r['text']}")
  if res["n_failed"]:
    print(f"warning: {res['n_failed']} clip(s) could not be judged; see "
          "clips.json (key 'error').")
  return 0


if __name__ == "__main__":
  sys.exit(main())
