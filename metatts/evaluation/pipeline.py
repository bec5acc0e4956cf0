"""Judging a samples workdir: every clip, every cell, the ceilings.

:func:`evaluate` is what ``python -m metatts.evaluation`` and a launcher run
(``config.evals``) call. It reads ``WORKDIR/samples`` (layout in
:mod:`metatts.evaluation.layout`), judges every clip at 16 kHz, aggregates per
``(method, shots, steps)`` cell over held-out speakers, and writes
``WORKDIR/report/`` (metrics.json, clips.json, summary.json, PNGs, audio,
index.html).

Per-clip definitions:

* ``secs``: cosine between the clip's Resemblyzer embedding and the target
  speaker's enrollment built from the real reference clips *other than the one
  with the same utt_id* (so a clip never meets its own text's real recording,
  exactly as in the real-vs-real ceiling).
* EER trials: that same score is the target trial; the cosines against every
  other held-out speaker's enrollment (all of their reference clips) are the
  non-target trials. A cell's EER pools the trials of all its clips.
* ``mcd``, ``f0_rmse`` (cents), ``f0_rmse_hz``, ``vde``: against the reference
  clip with the same utt_id, DTW-aligned; absent if there is none.
* ``wer``: PocketSphinx hypothesis against the clip's text.

A cell's value of a metric is the mean over speakers of the per-speaker value
(a speaker's mean over its clips; WER as errors over words), with a 95%
Student-t interval over speakers in ``ci95``.

A synthesized clip that cannot be judged (unreadable, silent, NaN) is counted
in ``n_failed`` and listed with its error in clips.json, and the run goes on.
Bad reference clips stop the run: they are the ground truth.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from metatts.evaluation import curves, layout, schema
from metatts.evaluation.audio_io import EVAL_SAMPLE_RATE, load_wav

DEFAULT_METRICS = ("secs", "eer", "mcd", "wer", "f0")
ALL_METRICS = DEFAULT_METRICS + ("dnsmos",)
_ALIASES = {"f0_rmse": "f0", "vde": "f0", "similarity": "secs"}
# Metric keys of a cell and of the per-speaker table, by requested metric.
_CELL_KEYS = {"secs": ("secs",), "mcd": ("mcd",), "wer": ("wer",),
              "f0": ("f0_rmse", "f0_rmse_hz", "vde"), "dnsmos": ("dnsmos",)}

log = logging.getLogger(__name__)


def parse_metrics(metrics) -> tuple:
  """Normalises a metric list (``"secs,eer"`` or a sequence) and validates it."""
  if isinstance(metrics, str):
    metrics = [m.strip() for m in metrics.split(",") if m.strip()]
  out = []
  for m in metrics:
    m = _ALIASES.get(m, m)
    if m not in ALL_METRICS:
      raise ValueError(f"unknown metric {m!r}; choose from "
                       f"{list(ALL_METRICS)} (comma-separated).")
    if m not in out:
      out.append(m)
  if not out:
    raise ValueError(f"no metrics requested; choose from {list(ALL_METRICS)}.")
  return tuple(out)


def _nan_to_none(x):
  if x is None:
    return None
  if isinstance(x, (float, np.floating)):
    return None if not math.isfinite(float(x)) else float(x)
  return x


class _Judge:
  """Holds the loaded judges and the reference-side features."""

  def __init__(self, samples: layout.Samples, metrics: Sequence[str],
               f0_method: str):
    self.samples = samples
    self.metrics = set(metrics)
    self.f0_method = f0_method
    self.need_embed = bool(self.metrics & {"secs", "eer"})
    self.need_world = bool(self.metrics & {"mcd", "f0"})
    self.ref_emb: Dict[str, Dict[str, np.ndarray]] = {}
    self.ref_feat: Dict[str, Dict[str, object]] = {}
    self.ref_text: Dict[str, Dict[str, str]] = {}
    self._enroll_cache: Dict = {}

  # ----------------------------------------------------------- reference side
  def add_reference(self, clip: layout.Clip, wav: np.ndarray) -> None:
    from metatts.evaluation import secs, world  # pylint: disable=g-import-not-at-top
    from metatts.evaluation.audio_io import read_text  # pylint: disable=g-import-not-at-top
    spk, utt = clip.speaker, clip.utt_id
    self.ref_text.setdefault(spk, {})[utt] = read_text(clip.txt)
    if self.need_embed:
      self.ref_emb.setdefault(spk, {})[utt] = secs.embed_utterance(
          wav, EVAL_SAMPLE_RATE, clip.wav)
    if self.need_world:
      self.ref_feat.setdefault(spk, {})[utt] = world.world_features(
          wav, EVAL_SAMPLE_RATE, f0_method=self.f0_method, name=clip.wav)

  def enrollment(self, speaker: str, exclude: Optional[str] = None
                 ) -> np.ndarray:
    """Speaker embedding from reference clips, leaving out ``exclude``."""
    from metatts.evaluation import secs  # pylint: disable=g-import-not-at-top
    embs = self.ref_emb[speaker]
    if exclude in embs and len(embs) < 2:
      exclude = None  # a single reference clip cannot be left out
    key = (speaker, exclude if exclude in embs else None)
    if key not in self._enroll_cache:
      self._enroll_cache[key] = secs.speaker_embedding(
          [e for u, e in sorted(embs.items()) if u != key[1]])
    return self._enroll_cache[key]

  # --------------------------------------------------------------- judge one
  def judge(self, clip: layout.Clip, wav: np.ndarray, *, is_real=False,
            text: Optional[str] = None) -> dict:
    """All requested per-clip metrics of one waveform of ``clip.speaker``."""
    from metatts.evaluation import f0, mcd, secs, wer, world  # pylint: disable=g-import-not-at-top
    spk, utt = clip.speaker, clip.utt_id
    row: dict = {}
    # A speaker's only reference clip cannot be scored against itself.
    if self.need_embed and not (is_real and len(self.ref_emb[spk]) < 2):
      e = secs.embed_utterance(wav, EVAL_SAMPLE_RATE, clip.wav)
      row["secs"] = float(secs.cosine(e, self.enrollment(spk, exclude=utt)))
      row["nontarget"] = [float(secs.cosine(e, self.enrollment(o)))
                          for o in sorted(self.ref_emb) if o != spk]
    ref_feat = self.ref_feat.get(spk, {}).get(utt)
    if self.need_world and ref_feat is not None and not is_real:
      feat = world.world_features(wav, EVAL_SAMPLE_RATE,
                                  f0_method=self.f0_method, name=clip.wav)
      from metatts.evaluation.dtw import align  # pylint: disable=g-import-not-at-top
      path = align(feat.mcep[:, 1:], ref_feat.mcep[:, 1:])
      if "mcd" in self.metrics:
        row["mcd"] = mcd.mcd_from_features(feat, ref_feat, path)
      if "f0" in self.metrics:
        fm = f0.f0_metrics_from_features(feat, ref_feat, path)
        row.update(f0_rmse=_nan_to_none(fm.rmse_cents),
                   f0_rmse_hz=_nan_to_none(fm.rmse_hz), vde=fm.vde)
    if "wer" in self.metrics:
      if text is None:
        text = self.ref_text[spk][utt]
      hyp = wer.transcribe(wav, EVAL_SAMPLE_RATE, clip.wav)
      c = wer.edit_counts(wer.normalize_text(text).split(),
                          wer.normalize_text(hyp).split())
      row.update(text=text, hypothesis=hyp, wer_errors=c.errors,
                 wer_words=c.ref_words,
                 wer=(c.errors / c.ref_words) if c.ref_words else None)
    if "dnsmos" in self.metrics:
      from metatts.evaluation import naturalness  # pylint: disable=g-import-not-at-top
      row["dnsmos"] = naturalness.dnsmos(wav, EVAL_SAMPLE_RATE)
    return row


def _cell(rows: List[dict], metrics: Sequence[str], speakers=None) -> dict:
  """Aggregates clip rows of one cell (optionally restricted to speakers)."""
  if speakers is not None:
    rows = [r for r in rows if r["speaker"] in speakers]
  ok = [r for r in rows if "error" not in r]
  keys = [k for m in metrics for k in _CELL_KEYS.get(m, ())]
  table = curves.table_from_clips(ok, keys)
  per_spk = table.get(ok[0]["method"], {}).get(int(ok[0]["shots"]), {}).get(
      int(ok[0]["steps"]), {}) if ok else {}
  cell = {k: None for k in schema.CELL_REQUIRED}
  ci = {}
  for k in keys:
    if k in per_spk:
      mc = curves.mean_ci(per_spk[k].values())
      cell[k] = _nan_to_none(mc.mean)
      ci[k] = _nan_to_none(mc.half_width)
  if "eer" in metrics:
    from metatts.evaluation import eer  # pylint: disable=g-import-not-at-top
    tar = [r["secs"] for r in ok if "secs" in r]
    non = [s for r in ok for s in r.get("nontarget", [])]
    cell["eer"] = (eer.equal_error_rate(tar, non).eer if tar and non
                   else None)
  cell["n"] = len({r["speaker"] for r in ok})
  cell["n_clips"] = len(ok)
  cell["n_failed"] = len(rows) - len(ok)
  cell["ci95"] = ci
  return cell


def _cell_with_splits(rows, metrics, samples: layout.Samples) -> dict:
  cell = _cell(rows, metrics)
  by_split: Dict[str, set] = {}
  for r in rows:
    s = samples.split_of(r["speaker"])
    if s:
      by_split.setdefault(s, set()).add(r["speaker"])
  if by_split:
    cell["splits"] = {s: _cell(rows, metrics, spk)
                      for s, spk in sorted(by_split.items())}
  return cell


def judge_samples(samples: layout.Samples, metrics: Sequence[str] = DEFAULT_METRICS,
                  *, progress: bool = True, griffin_lim: bool = True,
                  f0_method: str = "dio") -> dict:
  """Judges every clip; returns ``{"metrics", "rows", "table", "step_ratios"}``.

  Args:
    samples: The scanned layout.
    metrics: Requested metrics (see :data:`ALL_METRICS`).
    progress: Show a tqdm bar.
    griffin_lim: Also judge Griffin-Lim resyntheses of the reference clips.
    f0_method: WORLD F0 estimator, ``"dio"`` or ``"harvest"``.

  Returns:
    ``metrics``: the metrics.json object; ``rows``: one dict per judged clip;
    ``table``: per-speaker table for curves; ``step_ratios``: list of dicts.
  """
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  from metatts.evaluation import world  # pylint: disable=g-import-not-at-top
  metrics = parse_metrics(metrics)
  if "eer" in metrics and len(samples.reference) < 2:
    log.warning("EER needs >= 2 reference speakers; %s has %d, EER is null.",
                samples.root, len(samples.reference))
  _check_manifest_rate(samples)
  judge = _Judge(samples, metrics, f0_method)
  ref_clips = [c for spk in samples.reference.values() for c in spk.values()]
  voc_clips = [c for spk in samples.vocoded.values() for c in spk.values()]
  syn = [(m, k, s, c) for m, ks in samples.methods.items()
         for k, ss in ks.items() for s, spks in ss.items()
         for utts in spks.values() for c in utts.values()]
  total = len(ref_clips) * (2 if griffin_lim else 1) + len(voc_clips) + len(syn)
  bar = tqdm(total=total, desc="judging clips", unit="clip",
             disable=not progress)
  rows: List[dict] = []
  ref_wavs = {}
  try:
    bar.set_postfix_str("reference")
    for c in ref_clips:
      wav, _ = load_wav(c.wav, EVAL_SAMPLE_RATE)
      ref_wavs[(c.speaker, c.utt_id)] = wav
      judge.add_reference(c, wav)
      bar.update(1)
    for c in ref_clips:  # real vs real: leave-one-out, ground-truth WER
      rows.append(dict(method="real", shots=0, steps=0, speaker=c.speaker,
                       utt_id=c.utt_id, wav=c.wav,
                       **judge.judge(c, ref_wavs[(c.speaker, c.utt_id)],
                                     is_real=True)))
    if griffin_lim:
      from metatts.evaluation.vocoding import vocode_real  # pylint: disable=g-import-not-at-top
      bar.set_postfix_str("griffin-lim")
      for c in ref_clips:
        voc = vocode_real(ref_wavs[(c.speaker, c.utt_id)], EVAL_SAMPLE_RATE,
                          n_iter=32)
        rows.append(dict(method="griffin_lim", shots=0, steps=0,
                         speaker=c.speaker, utt_id=c.utt_id, wav=None,
                         **judge.judge(c, voc)))
        bar.update(1)
    bar.set_postfix_str("vocoded")
    for c in voc_clips:
      rows.append(_judge_file(judge, c, "vocoded", 0, 0, samples))
      bar.update(1)
    for m, k, s, c in syn:
      bar.set_postfix_str(f"{m} K={k} S={s}")
      rows.append(_judge_file(judge, c, m, k, s, samples))
      bar.update(1)
  finally:
    bar.close()
  failed = [r for r in rows if "error" in r]
  if failed:
    log.warning("%d clip(s) could not be judged and were counted as failed, "
                "e.g. %s: %s", len(failed), failed[0]["wav"],
                failed[0]["error"])

  out: dict = {}
  for m, ks in samples.methods.items():
    out[m] = {"shots": {str(k): {"steps": {
        str(s): _cell_with_splits(
            [r for r in rows if r["method"] == m and r["shots"] == k
             and r["steps"] == s], metrics, samples)
        for s in sorted(ss)}} for k, ss in sorted(ks.items())}}
  reference = {}
  for name in ("real", "griffin_lim", "vocoded"):
    rr = [r for r in rows if r["method"] == name]
    if rr:
      reference[name] = _cell_with_splits(rr, metrics, samples)
  reference["settings"] = {
      "sample_rate": EVAL_SAMPLE_RATE, "metrics": list(metrics),
      "secs_encoder": "resemblyzer.VoiceEncoder (GE2E, 256-d)",
      "secs_enrollment": "mean of unit utterance embeddings of the real "
                         "reference clips, excluding the clip's own utt_id",
      "eer_trials": "target: clip vs own speaker; non-target: clip vs every "
                    "other held-out speaker",
      "mcep_order": world.MCEP_ORDER, "mcep_alpha": world.alpha_for_rate(
          EVAL_SAMPLE_RATE), "mcd_c0": "excluded", "mcd_alignment": "DTW",
      "frame_period_ms": world.FRAME_PERIOD_MS, "f0_method": f0_method,
      "f0_rmse_unit": "cents", "asr": "pocketsphinx 5 en-us (16 kHz)",
      "eer_unit": "fraction", "wer_unit": "fraction",
      "griffin_lim": ("metatts.audio.mel_to_audio of the MelConfig log-mel "
                      "(16 kHz defaults), 32 fast Griffin-Lim iterations, "
                      "seed 0") if griffin_lim else None,
      "n_failed": len(failed),
  }
  if samples.manifest:
    reference["settings"]["manifest"] = samples.manifest
  out["reference"] = reference
  schema.validate_metrics(out)

  all_keys = [k for m in metrics for k in _CELL_KEYS.get(m, ())]
  table = curves.table_from_clips(
      [r for r in rows if "error" not in r and r["method"] in samples.methods],
      all_keys)
  # EER is pooled over a cell's trials: one value, under the speaker key "*".
  for m, mv in out.items():
    if m == "reference":
      continue
    for k, kv in mv["shots"].items():
      for st, c in kv["steps"].items():
        if c.get("eer") is not None:
          table.setdefault(m, {}).setdefault(int(k), {}).setdefault(
              int(st), {})["eer"] = {curves.POOLED: c["eer"]}
  ratios = []
  if "secs" in metrics:
    ratios = [r._asdict() | {"text": r.describe()}
              for r in curves.all_step_ratios(table, "secs", 5)]
  return {"metrics": out, "rows": rows, "table": table, "step_ratios": ratios}


def _judge_file(judge: _Judge, c: layout.Clip, method, k, s, samples) -> dict:
  from metatts.evaluation.audio_io import read_text  # pylint: disable=g-import-not-at-top
  row = dict(method=method, shots=k, steps=s, speaker=c.speaker,
             utt_id=c.utt_id, wav=c.wav, split=samples.split_of(c.speaker))
  try:
    text = read_text(c.txt) if c.txt else None
    if text is not None and c.utt_id in judge.ref_text.get(c.speaker, {}):
      from metatts.evaluation.wer import normalize_text  # pylint: disable=g-import-not-at-top
      if normalize_text(text) != normalize_text(
          judge.ref_text[c.speaker][c.utt_id]):
        row["text_mismatch"] = True  # MCD/F0 would compare different texts
    wav, _ = load_wav(c.wav, EVAL_SAMPLE_RATE)
    res = judge.judge(c, wav, text=text)
    if row.get("text_mismatch"):
      for key in ("mcd", "f0_rmse", "f0_rmse_hz", "vde"):
        res.pop(key, None)
    row.update(res)
  except (ValueError, FileNotFoundError) as e:
    row["error"] = str(e)
  return row


def _check_manifest_rate(samples: layout.Samples) -> None:
  """If the manifest names a sample rate, every clip must have it."""
  sr = samples.manifest.get("sample_rate")
  if sr is None:
    return
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  groups = [samples.reference, samples.vocoded] + [
      spks for ks in samples.methods.values() for ss in ks.values()
      for spks in ss.values()]
  for g in groups:
    for utts in g.values():
      for c in utts.values():
        try:
          rate = sf.info(c.wav).samplerate
        except Exception as e:  # pylint: disable=broad-except
          raise ValueError(f"{c.wav}: cannot read the WAV header ({e}); "
                           "rewrite it as a PCM WAV.") from e
        if rate != int(sr):
          raise ValueError(
              f"mismatched sample rate: {c.wav} is {rate} Hz but "
              f"samples/manifest.json says sample_rate={sr}; resample the "
              f"clip to {sr} Hz or fix the manifest.")


def evaluate(workdir: str, *, metrics: Iterable[str] = DEFAULT_METRICS,
             progress: bool = True, griffin_lim: bool = True,
             f0_method: str = "dio", report: bool = True,
             out_dir: Optional[str] = None) -> dict:
  """Judges ``WORKDIR/samples`` and writes ``WORKDIR/report``.

  Args:
    workdir: Experiment directory holding ``samples/`` (layout in
      docs/evaluation.md).
    metrics: Any of ``secs, eer, mcd, wer, f0, dnsmos`` (a sequence or a
      comma-separated string).
    progress: Show a tqdm progress bar.
    griffin_lim: Judge Griffin-Lim resyntheses of the reference as a ceiling.
    f0_method: ``"dio"`` (fast) or ``"harvest"``.
    report: Write the HTML report, PNGs and audio (metrics.json is always
      written).
    out_dir: Report folder (default ``WORKDIR/report``).

  Returns:
    ``{"metrics": <metrics.json object>, "step_ratios": [...],
    "metrics_json": path, "report": path of index.html or None,
    "n_failed": int}``.

  Raises:
    FileNotFoundError: No samples folder, missing reference clips/transcripts.
    ValueError: Bad folder names, unknown metrics, mismatched sample rates.
  """
  samples = layout.scan_samples(workdir)
  res = judge_samples(samples, metrics, progress=progress,
                      griffin_lim=griffin_lim, f0_method=f0_method)
  out_dir = out_dir or os.path.join(workdir, "report")
  os.makedirs(out_dir, exist_ok=True)
  mpath = os.path.join(out_dir, "metrics.json")
  with open(mpath, "w", encoding="utf-8") as f:
    json.dump(res["metrics"], f, indent=2, sort_keys=True)
  with open(os.path.join(out_dir, "clips.json"), "w", encoding="utf-8") as f:
    json.dump([{k: _nan_to_none(v) for k, v in r.items()}
               for r in res["rows"]], f, indent=1)
  with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as f:
    json.dump({"step_ratios": res["step_ratios"]}, f, indent=2)
  index = None
  if report:
    from metatts.evaluation import report as report_lib  # pylint: disable=g-import-not-at-top
    index = report_lib.write_report(samples, res, out_dir,
                                    progress=progress)
  n_failed = res["metrics"]["reference"]["settings"]["n_failed"]
  return {"metrics": res["metrics"], "step_ratios": res["step_ratios"],
          "metrics_json": mpath, "report": index, "n_failed": n_failed}
