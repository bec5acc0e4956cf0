"""The HTML report: listen, look, and read the numbers.

``WORKDIR/report/`` after :func:`metatts.evaluation.evaluate`::

  index.html       open in a browser; every link is relative
  metrics.json     schema in metatts/evaluation/schema.py, docs/evaluation.md
  clips.json       one row per judged clip (scores, ASR hypothesis, errors)
  summary.json     step ratios (baseline steps to match meta-learning at 5)
  plots/*.png      adaptation curves, mel spectrograms, attention alignments
  audio/...        16-bit PCM copies of the clips the page plays

The page's script marks every ``<audio>`` with ``data-state="loaded"`` once its
metadata loads (``"error"`` otherwise) and every ``<img>`` likewise, so a
headless browser can check that the media really load.
"""

from __future__ import annotations

import html
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from metatts.evaluation import curves, layout
from metatts.evaluation.audio_io import EVAL_SAMPLE_RATE

LISTEN_STEPS = (0, 5, 100)
_METRIC_ORDER = ("secs", "eer", "mcd", "wer", "f0_rmse", "vde", "dnsmos")
_FMT = {"secs": "{:.3f}", "eer": "{:.1%}", "mcd": "{:.2f}", "wer": "{:.1%}",
        "f0_rmse": "{:.0f}", "vde": "{:.1%}", "dnsmos": "{:.2f}"}
_HEAD = {"secs": "SECS &uarr;", "eer": "EER &darr;", "mcd": "MCD dB &darr;",
         "wer": "WER &darr;", "f0_rmse": "F0 RMSE (cents) &darr;",
         "vde": "VDE &darr;", "dnsmos": "DNSMOS &uarr;"}


def _slug(*parts) -> str:
  return "_".join(re.sub(r"[^A-Za-z0-9.-]+", "-", str(p)) for p in parts)


def _focus_shots(samples: layout.Samples) -> int:
  counts: Dict[int, int] = {}
  for ks in samples.methods.values():
    for k in ks:
      counts[k] = counts.get(k, 0) + 1
  if not counts:  # a vocoder-only run: ceilings and the vocoder, no methods
    return 0
  best = max(counts.values())
  cands = sorted(k for k, c in counts.items() if c == best)
  return 5 if 5 in cands else cands[-1]


def _listen_steps(available: Sequence[int]) -> List[int]:
  """Available steps nearest to 0, 5 and 100 (deduplicated, ordered)."""
  out = []
  for want in LISTEN_STEPS:
    s = min(available, key=lambda a: (abs(a - want), a))
    if s not in out:
      out.append(s)
  return sorted(out)


def _copy_audio(src: str, out_dir: str, rel: str) -> str:
  """Writes a 16-bit PCM copy of ``src`` at ``out_dir/rel``; returns ``rel``."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  dst = os.path.join(out_dir, rel)
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  x, sr = sf.read(src, dtype="float32", always_2d=True)
  x = x.mean(axis=1)
  peak = float(np.max(np.abs(x))) if x.size else 0.0
  if peak > 1.0:
    x = x / peak
  sf.write(dst, x, sr, subtype="PCM_16")
  return rel


def _mel_db(path: str) -> np.ndarray:
  import librosa  # pylint: disable=g-import-not-at-top
  from metatts.evaluation.audio_io import load_wav  # pylint: disable=g-import-not-at-top
  from metatts.evaluation.vocoding import mel_spectrogram  # pylint: disable=g-import-not-at-top
  wav, sr = load_wav(path, EVAL_SAMPLE_RATE)
  m = mel_spectrogram(wav, sr, n_fft=1024, hop_length=256, n_mels=80)
  return librosa.power_to_db(m, ref=np.max, top_db=80.0)


def plot_mels(panels: Sequence[Tuple[str, str]], path: str,
              title: str = "") -> str:
  """PNG of log-mel spectrograms, one row per ``(label, wav_path)``."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  mels = []
  for label, p in panels:
    try:
      mels.append((label, _mel_db(p)))
    except ValueError as e:  # e.g. a 2-frame clip: shown blank, with why
      reason = str(e).split(": ", 1)[-1][:80]
      mels.append((f"{label} (not shown: {reason})",
                   np.full((80, 1), -80.0, np.float32)))
  width = max(m.shape[1] for _, m in mels)
  height = 1.6 * len(mels) + 0.7
  fig = Figure(figsize=(8.0, height), dpi=80)
  FigureCanvasAgg(fig)
  for i, (label, m) in enumerate(mels):
    ax = fig.add_subplot(len(mels), 1, i + 1)
    ax.imshow(m, origin="lower", aspect="auto", cmap="magma", vmin=-80,
              vmax=0, interpolation="nearest",
                   extent=(0, m.shape[1] * 256 / EVAL_SAMPLE_RATE, 0, 80))
    ax.set_xlim(0, width * 256 / EVAL_SAMPLE_RATE)
    ax.set_ylabel("mel", fontsize=8)
    ax.set_title(label, fontsize=9, loc="left")
    ax.tick_params(labelsize=7)
  ax.set_xlabel("seconds (colour: dB re. max, -80..0)", fontsize=8)
  if title:
    fig.suptitle(title, fontsize=10)
  # Fixed margins (tight/constrained layout costs seconds per figure).
  fig.subplots_adjust(left=0.07, right=0.98, bottom=0.55 / height,
                      top=1 - 0.45 / height, hspace=0.45)
  fig.savefig(path, format="png")
  return path


def plot_alignment(align_npy: str, path: str, title: str = "") -> str:
  """PNG of an attention matrix ``[decoder_steps, encoder_steps]``."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  a = np.load(align_npy)
  a = np.squeeze(a)
  if a.ndim != 2:
    raise ValueError(f"{align_npy}: expected an attention matrix [decoder "
                     f"steps, encoder steps], got shape {a.shape}.")
  fig = Figure(figsize=(4.5, 3.2), dpi=80)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  ax.imshow(a.T, origin="lower", aspect="auto", cmap="viridis",
            interpolation="nearest")
  ax.set_xlabel("decoder step")
  ax.set_ylabel("encoder step (text)")
  ax.set_title(title, fontsize=9)
  fig.subplots_adjust(left=0.15, right=0.97, bottom=0.15, top=0.9)
  fig.savefig(path, format="png")
  return path


def _fmt(metric: str, cell: Optional[dict]) -> str:
  if not cell or cell.get(metric) is None:
    return "&ndash;"
  v = cell[metric]
  s = _FMT.get(metric, "{:.3g}").format(v)
  hw = (cell.get("ci95") or {}).get(metric)
  if hw is not None:
    s += " <small>&plusmn; " + _FMT.get(metric, "{:.3g}").format(hw) + "</small>"
  return s


def _metrics_table(metrics: dict, shown: Sequence[str]) -> str:
  head = "".join(f"<th>{_HEAD.get(m, m)}</th>" for m in shown)
  rows = [f"<tr><th>method</th><th>shots</th><th>steps</th>{head}"
          "<th>speakers</th><th>clips (failed)</th></tr>"]
  ref = metrics["reference"]
  for name, label in (("real", "real vs real (ceiling)"),
                      ("griffin_lim", "Griffin-Lim of real mel"),
                      ("vocoded", "neural vocoder of real mel")):
    if name in ref:
      c = ref[name]
      rows.append(f"<tr class='ref'><td>{label}</td><td></td><td></td>"
                  + "".join(f"<td>{_fmt(m, c)}</td>" for m in shown)
                  + f"<td>{c['n']}</td><td>{c.get('n_clips', '')}"
                  f" ({c.get('n_failed', 0)})</td></tr>")
  for method in sorted(k for k in metrics if k != "reference"):
    for k, kv in sorted(metrics[method]["shots"].items(), key=lambda t: int(t[0])):
      for s, c in sorted(kv["steps"].items(), key=lambda t: int(t[0])):
        rows.append(f"<tr><td>{html.escape(method)}</td><td>{k}</td><td>{s}</td>"
                    + "".join(f"<td>{_fmt(m, c)}</td>" for m in shown)
                    + f"<td>{c['n']}</td><td>{c.get('n_clips', '')}"
                    f" ({c.get('n_failed', 0)})</td></tr>")
  return "<table class='metrics'>" + "\n".join(rows) + "</table>"


def _audio(rel: str) -> str:
  return (f"<audio controls preload='metadata' src='{html.escape(rel)}'>"
          "</audio>")


def _img(rel: str, alt: str) -> str:
  return (f"<img src='{html.escape(rel)}' alt='{html.escape(alt)}' "
          "loading='eager'>")


_SCRIPT = """
<script>
function mark(el, state) { el.setAttribute('data-state', state); }
document.querySelectorAll('audio').forEach(function (a) {
  a.addEventListener('loadedmetadata', function () {
    mark(a, 'loaded'); a.setAttribute('data-duration', a.duration.toFixed(3));
  });
  a.addEventListener('error', function () { mark(a, 'error'); });
  if (a.readyState >= 1) { mark(a, 'loaded'); }
  a.load();
});
document.querySelectorAll('img').forEach(function (im) {
  function done() { mark(im, im.naturalWidth > 0 ? 'loaded' : 'error'); }
  if (im.complete) { done(); } else {
    im.addEventListener('load', done); im.addEventListener('error', done);
  }
});
</script>
"""

_STYLE = """
<style>
body { font-family: sans-serif; margin: 1.5em; max-width: 1400px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em 0; }
td, th { border: 1px solid #ccc; padding: 3px 7px; font-size: 13px;
         vertical-align: top; }
tr.ref td { background: #f3f6fa; }
audio { width: 210px; }
.plots img { max-width: 600px; margin: 4px; border: 1px solid #ddd; }
img.wide { max-width: 100%; }
small { color: #666; }
</style>
"""


def write_report(samples: layout.Samples, res: dict, out_dir: str, *,
                 progress: bool = True) -> str:
  """Writes plots, audio copies and ``index.html``; returns the index path.

  Args:
    samples: The scanned layout.
    res: Output of :func:`metatts.evaluation.pipeline.judge_samples`.
    out_dir: Report folder (created).
    progress: Show a tqdm bar over the figures.

  Returns:
    Path of ``index.html``.
  """
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  metrics, table = res["metrics"], res["table"]
  plots = os.path.join(out_dir, "plots")
  os.makedirs(plots, exist_ok=True)
  k_focus = _focus_shots(samples)
  shown = [m for m in _METRIC_ORDER
           if any(c.get(m) is not None
                  for meth, mv in metrics.items() if meth != "reference"
                  for kv in mv["shots"].values()
                  for c in kv["steps"].values())]
  ref = metrics["reference"]
  parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
           f"<title>metatts evaluation</title>{_STYLE}</head><body>",
           "<h1>Few-shot speaker adaptation: evaluation report</h1>",
           f"<p>Samples: <code>{html.escape(samples.root)}</code>. "
           f"Methods: {', '.join(html.escape(m) for m in sorted(samples.methods))}."
           f" Held-out speakers: {len(samples.reference)}. Judges at 16 kHz; "
           "definitions in <code>docs/evaluation.md</code>. Means over "
           "speakers with 95% t-intervals (&plusmn;).</p>"]
  desc = samples.manifest.get("description")
  if desc:
    parts.append(f"<p>{html.escape(str(desc))}</p>")
  if res["step_ratios"]:
    parts.append("<h2>Step ratio</h2><ul>" + "".join(
        f"<li>{html.escape(r['text'])}</li>" for r in res["step_ratios"])
                 + "</ul>")
  parts.append("<h2>Metrics</h2>" + _metrics_table(metrics, shown))
  n_failed = ref["settings"].get("n_failed", 0)
  if n_failed:
    parts.append(f"<p><b>{n_failed} clip(s) could not be judged</b> (see "
                 "clips.json, key <code>error</code>).</p>")

  # ---------------------------------------------------------------- curves
  jobs = []
  multi_k = len({k for ks in samples.methods.values() for k in ks}) > 1
  for m in shown:
    refs = {label: ref[name].get(m) for name, label in
            (("real", "real vs real"), ("griffin_lim", "Griffin-Lim"),
             ("vocoded", "neural vocoder")) if name in ref}
    jobs.append(("steps", m, refs))
    if multi_k:
      jobs.append(("shots", m, refs))
  mel_jobs = sorted(samples.reference)
  bar = tqdm(total=len(jobs) + len(mel_jobs), desc="report figures",
             disable=not progress)
  curve_imgs = []
  try:
    for by, m, refs in jobs:
      at = k_focus if by == "steps" else 5
      if by == "shots":
        steps_all = {s for ks in samples.methods.values() for ss in ks.values()
                     for s in ss}
        at = 5 if 5 in steps_all else max(steps_all)
      name = f"curve_{by}_{m}.png"
      curves.plot_curves(table, m, os.path.join(plots, name), by=by, at=at,
                         reference=refs)
      curve_imgs.append(f"plots/{name}")
      bar.update(1)
    parts.append("<h2>Adaptation curves</h2><div class='plots'>"
                 + "".join(_img(p, p) for p in curve_imgs) + "</div>")

    # ------------------------------------------------------------- listen
    parts.append(f"<h2>Listen ({k_focus} shots)</h2>")
    for spk in sorted(samples.reference):
      cols: List[Tuple[str, layout.Clip]] = []
      utt = _pick_utt(samples, spk, k_focus)
      ref_clip = samples.reference[spk].get(utt) or next(
          iter(samples.reference[spk].values()))
      cols.append(("reference (real)", ref_clip))
      if spk in samples.vocoded and utt in samples.vocoded[spk]:
        cols.append(("neural vocoder of real mel", samples.vocoded[spk][utt]))
      for method in sorted(samples.methods):
        by_s = samples.methods[method].get(k_focus, {})
        avail = [s for s, spks in by_s.items() if utt in spks.get(spk, {})]
        for s in (_listen_steps(avail) if avail else []):
          cols.append((f"{method}, {s} steps", by_s[s][spk][utt]))
      split = samples.split_of(spk)
      text = _text_of(samples, spk, utt)
      parts.append(f"<h3>{html.escape(spk)}"
                   f"{' (' + split + ')' if split else ''}: "
                   f"<i>{html.escape(text)}</i> <small>[{html.escape(utt)}]"
                   "</small></h3><table><tr>"
                   + "".join(f"<th>{html.escape(label)}</th>"
                             for label, _ in cols) + "</tr><tr>")
      for label, clip in cols:
        rel = _copy_audio(clip.wav, out_dir, os.path.join(
            "audio", _slug(label), _slug(spk, os.path.basename(clip.wav))))
        parts.append(f"<td>{_audio(rel)}</td>")
      parts.append("</tr></table>")
      # Mel spectrograms: reference and each method at its largest step.
      panels = [("reference (real)", ref_clip.wav)]
      last = {}
      for label, clip in cols[1:]:
        last[label.split(",")[0]] = (label, clip.wav)
      panels += list(last.values())
      name = f"mel_{_slug(spk, utt)}.png"
      plot_mels(panels, os.path.join(plots, name),
                title=f"{spk} / {utt}: log-mel spectrograms")
      parts.append(_img(f"plots/{name}", f"mel {spk}").replace(
          "<img ", "<img class='wide' "))
      # Attention of each method at its largest step shown.
      aligns = [(label, clip) for label, clip in cols[1:]
                if clip.align and (label, clip.wav) in last.values()]
      if aligns:
        parts.append("<div class='plots'>")
        for label, clip in aligns:
          name = f"align_{_slug(label, spk, utt)}.png"
          plot_alignment(clip.align, os.path.join(plots, name),
                         title=f"attention: {label}")
          parts.append(_img(f"plots/{name}", f"alignment {label}"))
        parts.append("</div>")
      bar.update(1)
  finally:
    bar.close()
  parts.append("<h2>Files</h2><p><a href='metrics.json'>metrics.json</a> "
               "&middot; <a href='clips.json'>clips.json</a> &middot; "
               "<a href='summary.json'>summary.json</a></p>")
  parts.append(_SCRIPT + "</body></html>")
  index = os.path.join(out_dir, "index.html")
  with open(index, "w", encoding="utf-8") as f:
    f.write("\n".join(parts))
  return index


def _pick_utt(samples: layout.Samples, spk: str, k: int) -> str:
  """An utterance of ``spk`` that the most method/step folders synthesized."""
  counts: Dict[str, int] = {}
  for ks in samples.methods.values():
    for spks in ks.get(k, {}).values():
      for utt in spks.get(spk, {}):
        counts[utt] = counts.get(utt, 0) + 1
  if not counts:
    return next(iter(samples.reference[spk]))
  with_ref = [u for u in counts if u in samples.reference[spk]]
  pool = with_ref or list(counts)
  return max(sorted(pool), key=lambda u: counts[u])


def _text_of(samples: layout.Samples, spk: str, utt: str) -> str:
  from metatts.evaluation.audio_io import read_text  # pylint: disable=g-import-not-at-top
  clip = samples.reference[spk].get(utt)
  if clip and clip.txt:
    return read_text(clip.txt)
  for ks in samples.methods.values():
    for ss in ks.values():
      for spks in ss.values():
        c = spks.get(spk, {}).get(utt)
        if c and c.txt:
          return read_text(c.txt)
  return ""
