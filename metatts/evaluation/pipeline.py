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

The per-clip work (embeddings, WORLD + DTW, transcripts, Griffin-Lim) is
:mod:`metatts.evaluation.measure`'s: in this process or in ``workers``
spawned processes, with identical results, and cached in
``REPORT/.judged/`` so that a rerun judges only new or changed clips. The
parent scores what comes back (cosines, EER trials, WER counts) in the
serial order.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from metatts.evaluation import curves, layout, measure, schema
from metatts.evaluation.audio_io import EVAL_SAMPLE_RATE

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
  """Scores measured clips against the reference side (in the parent).

  The per-clip measuring (embeddings, WORLD + DTW, transcripts) is
  :mod:`metatts.evaluation.measure`'s; this holds what the scores need from
  the reference clips: their embeddings (enrollments), WORLD features and
  texts.
  """

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
  def add_reference(self, clip: layout.Clip, measured: dict) -> None:
    """Records a reference clip's text and measured embedding and features.

    Raises:
      ValueError, FileNotFoundError: The transcript or the clip is unusable
        (references are the ground truth: the run stops).
    """
    from metatts.evaluation.audio_io import read_text  # pylint: disable=g-import-not-at-top
    spk, utt = clip.speaker, clip.utt_id
    self.ref_text.setdefault(spk, {})[utt] = read_text(clip.txt)
    err = measure.first_error(measured)
    if err is not None:
      measure.raise_error(err)
    if self.need_embed:
      self.ref_emb.setdefault(spk, {})[utt] = measured["embed"]
    if self.need_world:
      self.ref_feat.setdefault(spk, {})[utt] = measured["features"]

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

  # ------------------------------------------------------- what to measure
  def parts(self, clip: layout.Clip, *, is_reference=False, wer=True
            ) -> Tuple[str, ...]:
    """The measured parts a clip of ``clip.speaker`` needs (PARTS order).

    A reference's own measurement serves both the reference side and its
    real-vs-real row (same waveform, same embedding).
    """
    out = []
    if self.need_embed:
      out.append("embed")
    if self.need_world:
      if is_reference:
        out.append("features")
      elif self.has_reference_features(clip):
        out.append("world")
    if "wer" in self.metrics and wer:
      out.append("asr")
    if "dnsmos" in self.metrics:
      out.append("dnsmos")
    return tuple(out)

  def has_reference_features(self, clip: layout.Clip) -> bool:
    """Whether MCD/F0 apply: a same-utt_id reference exists (and is needed)."""
    return (self.need_world
            and clip.utt_id in self.samples.reference.get(clip.speaker, {}))

  # ------------------------------------------------------------- score one
  def score(self, clip: layout.Clip, measured: dict, *, is_real=False,
            text: Optional[str] = None, wer: bool = True) -> dict:
    """All requested per-clip metrics of one measured waveform of ``clip.speaker``."""
    from metatts.evaluation import secs  # pylint: disable=g-import-not-at-top
    from metatts.evaluation import wer as wer_lib  # pylint: disable=g-import-not-at-top
    spk, utt = clip.speaker, clip.utt_id
    row: dict = {}
    # A speaker's only reference clip cannot be scored against itself.
    if self.need_embed and not (is_real and len(self.ref_emb[spk]) < 2):
      e = measured["embed"]
      row["secs"] = float(secs.cosine(e, self.enrollment(spk, exclude=utt)))
      row["nontarget"] = [float(secs.cosine(e, self.enrollment(o)))
                          for o in sorted(self.ref_emb) if o != spk]
    ref_feat = self.ref_feat.get(spk, {}).get(utt)
    if self.need_world and ref_feat is not None and not is_real:
      w = measured["world"]
      if "mcd" in self.metrics:
        row["mcd"] = w["mcd"]
      if "f0" in self.metrics:
        row.update(f0_rmse=_nan_to_none(w["f0_rmse"]),
                   f0_rmse_hz=_nan_to_none(w["f0_rmse_hz"]), vde=w["vde"])
    if "wer" in self.metrics and wer:
      if text is None:
        text = self.ref_text[spk][utt]
      hyp = measured["asr"]
      c = wer_lib.edit_counts(wer_lib.normalize_text(text).split(),
                              wer_lib.normalize_text(hyp).split())
      row.update(text=text, hypothesis=hyp, wer_errors=c.errors,
                 wer_words=c.ref_words,
                 wer=(c.errors / c.ref_words) if c.ref_words else None)
    if "dnsmos" in self.metrics:
      row["dnsmos"] = measured["dnsmos"]
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
    cell["eer"] = eer.pooled_eer(ok)
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


def parse_wer_steps(wer_steps) -> Optional[Tuple[int, ...]]:
  """``None``/``()``/``""``: every step; else a sorted tuple of step counts.

  Accepts a sequence of ints or a comma-separated string (``"0,5,100"``).
  """
  if wer_steps is None:
    return None
  if isinstance(wer_steps, str):
    wer_steps = [w.strip() for w in wer_steps.split(",") if w.strip()]
  out = set()
  for w in wer_steps:
    try:
      v = int(w)
    except (TypeError, ValueError):
      v = -1
    if v < 0 or (not isinstance(w, str) and v != w):
      raise ValueError(f"wer_steps: {w!r} is not a step count; give "
                       "non-negative integers, e.g. (0, 5, 100), or () for "
                       "every step.")
    out.add(v)
  return tuple(sorted(out)) or None


def judge_samples(samples: layout.Samples, metrics: Sequence[str] = DEFAULT_METRICS,
                  *, progress: bool = True, griffin_lim: bool = True,
                  f0_method: str = "dio", workers: Optional[int] = 1,
                  cache_dir: Optional[str] = None,
                  wer_steps: Optional[Sequence[int]] = None) -> dict:
  """Judges every clip; returns ``{"metrics", "rows", "table", "step_ratios"}``.

  Args:
    samples: The scanned layout.
    metrics: Requested metrics (see :data:`ALL_METRICS`).
    progress: Show a tqdm bar.
    griffin_lim: Also judge Griffin-Lim resyntheses of the reference clips.
    f0_method: WORLD F0 estimator, ``"dio"`` or ``"harvest"``.
    workers: Judging processes: 1 measures in this process, ``N > 1`` in a
      pool of N spawned processes, ``None``/0 picks (see
      :func:`metatts.evaluation.measure.resolve_workers`). The numbers do not
      depend on it.
    cache_dir: Folder of the judged-clip cache (``None``: no cache); clips
      measured by an earlier call with the same bytes and settings are not
      measured again.
    wer_steps: Run the recognizer only on synthesized clips whose step count
      is in this set (``None`` or empty: all); other cells have ``wer``
      null. The ceilings (real, Griffin-Lim, vocoded) always get WER.

  Returns:
    ``metrics``: the metrics.json object; ``rows``: one dict per judged clip;
    ``table``: per-speaker table for curves; ``step_ratios``: list of dicts;
    ``n_judged``: audio sources measured now (not from the cache);
    ``n_sources``: all audio sources; ``workers``: processes used.
  """
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  from metatts.evaluation import world  # pylint: disable=g-import-not-at-top
  metrics = parse_metrics(metrics)
  wer_steps = parse_wer_steps(wer_steps)
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
  if "wer" in metrics and wer_steps is not None:
    all_steps = sorted({s for _, _, s, _ in syn})
    if not set(wer_steps) & set(all_steps):
      log.warning("wer_steps=%s matches none of the synthesized step counts "
                  "%s: no synthesized clip gets a WER.", list(wer_steps),
                  all_steps)

  def wants_wer(steps: int) -> bool:
    return wer_steps is None or steps in wer_steps

  measurer = _Measurer(samples, judge, measure.Cache(cache_dir), f0_method)
  # Decide the pool size from what the cache leaves to measure.
  pending = measurer.pending_seconds(
      [(c, False, judge.parts(c, is_reference=True)) for c in ref_clips]
      + ([(c, True, judge.parts(c)) for c in ref_clips] if griffin_lim else [])
      + [(c, False, judge.parts(c)) for c in voc_clips]
      + [(c, False, judge.parts(c, wer=wants_wer(s))) for _, _, s, c in syn])
  n_workers = measure.resolve_workers(workers, pending)
  runner = measure.Runner(n_workers)
  total = len(ref_clips) * (2 if griffin_lim else 1) + len(voc_clips) + len(syn)
  bar = tqdm(total=total, desc="judging clips", unit="clip",
             disable=not progress)
  rows: List[dict] = []
  try:
    bar.set_postfix_str("reference")
    ref_meas = measurer.run(
        runner, [(c, False, judge.parts(c, is_reference=True))
                 for c in ref_clips], bar)
    for c, m in zip(ref_clips, ref_meas):
      judge.add_reference(c, m)
    for c, m in zip(ref_clips, ref_meas):  # real vs real: leave-one-out
      rows.append(dict(method="real", shots=0, steps=0, speaker=c.speaker,
                       utt_id=c.utt_id, wav=c.wav,
                       **judge.score(c, m, is_real=True)))
    # The ceilings and every synthesized clip, in one batch for the pool.
    files = [(c, "vocoded", 0, 0, True) for c in voc_clips] + [
        (c, m, k, s, wants_wer(s)) for m, k, s, c in syn]
    prepared = [_prepare_file(judge, c, m, k, s, samples)
                for c, m, k, s, _ in files]
    sources = ([(c, True, judge.parts(c)) for c in ref_clips]
               if griffin_lim else [])
    file_at = []
    for (c, _, _, _, w), (row, _) in zip(files, prepared):
      if "error" not in row:
        file_at.append(len(sources))
        sources.append((c, False, judge.parts(c, wer=w)))
      else:
        file_at.append(None)
        bar.update(1)
    bar.set_postfix_str("griffin-lim, vocoded, synthesized")
    meas = measurer.run(runner, sources, bar)
    if griffin_lim:
      for c, m in zip(ref_clips, meas):
        err = measure.first_error(m)
        if err is not None:  # a resynthesized reference: stop, like a real one
          measure.raise_error(err)
        rows.append(dict(method="griffin_lim", shots=0, steps=0,
                         speaker=c.speaker, utt_id=c.utt_id, wav=None,
                         **judge.score(c, m)))
    for (c, _, _, _, w), (row, text), at in zip(files, prepared, file_at):
      if at is not None:
        _finish_file(judge, c, row, text, meas[at], w)
      rows.append(row)
  finally:
    bar.close()
    runner.close()
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
  if "wer" in metrics and wer_steps is not None:
    # Only written when set, so an all-steps run's metrics.json is unchanged.
    reference["settings"]["wer_steps"] = list(wer_steps)
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
  return {"metrics": out, "rows": rows, "table": table, "step_ratios": ratios,
          "n_judged": measurer.n_judged, "n_sources": total,
          "workers": n_workers}


class _Measurer:
  """Looks measured parts up in the cache and measures the rest."""

  def __init__(self, samples: layout.Samples, judge: _Judge,
               cache: measure.Cache, f0_method: str):
    self.samples, self.judge, self.cache = samples, judge, cache
    self.f0_method = f0_method
    self.n_judged = 0
    self._sha: Dict[str, Optional[str]] = {}

  def _sha_of(self, path: str) -> Optional[str]:
    if self.cache.folder is None:
      return None
    if path not in self._sha:
      self._sha[path] = measure.file_sha256(path)
    return self._sha[path]

  def _names(self, clip: layout.Clip, parts) -> Dict[str, str]:
    """Cache names of parts: WORLD parts carry the F0 method (and the
    reference clip's hash)."""
    names = {}
    for p in parts:
      if p == "features":
        names[p] = f"features:{self.f0_method}"
      elif p == "world":
        ref = self.samples.reference[clip.speaker][clip.utt_id]
        names[p] = f"world:{self.f0_method}:{self._sha_of(ref.wav)}"
      else:
        names[p] = p
    names["load"] = "load"
    return names

  def _lookup(self, clip, griffin_lim, parts):
    key = self.cache.key("griffin_lim" if griffin_lim else "file",
                         os.path.relpath(clip.wav, self.samples.root),
                         self._sha_of(clip.wav))
    names = self._names(clip, parts)
    cached = self.cache.get(key, clip.wav)
    got = {p: cached[n] for p, n in names.items() if n in cached}
    missing = tuple(p for p in parts if p not in got)
    # Every measurement reads the clip ("load"), even with no part to compute,
    # so an unreadable clip is an error whatever the metrics.
    todo = (missing if (missing or "load" not in got)
            and measure.first_error(got) is None else None)
    return key, names, got, todo

  def pending_seconds(self, sources) -> float:
    """Estimated serial seconds of what the cache leaves to measure."""
    total = 0.0
    for clip, gl, parts in sources:
      todo = self._lookup(clip, gl, parts)[3]
      if todo is not None:
        total += measure.estimate_seconds(todo, gl)
    return total

  def run(self, runner: measure.Runner, sources, bar) -> List[dict]:
    """Measured parts of each ``(clip, griffin_lim, parts)``, in order."""
    results: List[Optional[dict]] = [None] * len(sources)
    pending = []
    for i, (clip, gl, parts) in enumerate(sources):
      key, names, got, missing = self._lookup(clip, gl, parts)
      if missing is None:
        results[i] = got
        bar.update(1)
        continue
      ref = (self.judge.ref_feat[clip.speaker][clip.utt_id]
             if "world" in missing else None)
      pending.append((i, key, names, got, clip.wav, measure.Request(
          clip.wav, gl, missing, ref, self.f0_method)))

    def done(j, res):
      i, key, names, got, wav, _ = pending[j]
      got.update(res)
      results[i] = got
      self.cache.put(key, wav, {names[p]: v for p, v in res.items()})
      bar.update(1)

    self.n_judged += len(pending)
    runner.run([p[-1] for p in pending], done)
    return results


def _prepare_file(judge: _Judge, c: layout.Clip, method, k, s, samples
                  ) -> Tuple[dict, Optional[str]]:
  """A synthesized (or vocoded) clip's row before judging, and its text."""
  from metatts.evaluation.audio_io import read_text  # pylint: disable=g-import-not-at-top
  row = dict(method=method, shots=k, steps=s, speaker=c.speaker,
             utt_id=c.utt_id, wav=c.wav, split=samples.split_of(c.speaker))
  text = None
  try:
    text = read_text(c.txt) if c.txt else None
    if text is not None and c.utt_id in judge.ref_text.get(c.speaker, {}):
      from metatts.evaluation.wer import normalize_text  # pylint: disable=g-import-not-at-top
      if normalize_text(text) != normalize_text(
          judge.ref_text[c.speaker][c.utt_id]):
        row["text_mismatch"] = True  # MCD/F0 would compare different texts
  except (ValueError, FileNotFoundError) as e:
    row["error"] = str(e)
  return row, text


def _finish_file(judge: _Judge, c: layout.Clip, row: dict,
                 text: Optional[str], measured: dict, wer: bool) -> None:
  """Scores a measured clip into its row (or records its error)."""
  err = measure.first_error(measured)
  if err is not None:
    row["error"] = err["error"]
    return
  try:
    res = judge.score(c, measured, text=text, wer=wer)
  except (ValueError, FileNotFoundError) as e:
    row["error"] = str(e)
    return
  if row.get("text_mismatch"):
    for key in ("mcd", "f0_rmse", "f0_rmse_hz", "vde"):
      res.pop(key, None)
  row.update(res)


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
             out_dir: Optional[str] = None, workers: Optional[int] = None,
             cache: bool = True,
             wer_steps: Optional[Sequence[int]] = None) -> dict:
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
    workers: Judging processes (``None``/0: the usable CPUs up to 4, serial
      below about a minute of judging; 1: serial, in this process; use 1 on
      a machine shared with other jobs, see docs/evaluation.md).
      metrics.json and clips.json do not depend on it.
    cache: Keep every judged clip in ``OUT_DIR/.judged/`` and reuse it: a
      rerun (after an interruption, or with one more method) judges only new
      or changed clips.
    wer_steps: Transcribe only synthesized clips of these step counts (e.g.
      ``(0, 5, 100)``; ``None`` or empty: all); the other cells' ``wer`` is
      null.

  Returns:
    ``{"metrics": <metrics.json object>, "step_ratios": [...],
    "metrics_json": path, "report": path of index.html or None,
    "n_failed": int, "n_judged": clips judged now (the rest came from the
    cache), "n_clips": all clips, "workers": processes used}``.

  Raises:
    FileNotFoundError: No samples folder, missing reference clips/transcripts.
    ValueError: Bad folder names, unknown metrics, mismatched sample rates,
      bad ``workers`` or ``wer_steps``.
  """
  samples = layout.scan_samples(workdir)
  out_dir = out_dir or os.path.join(workdir, "report")
  res = judge_samples(samples, metrics, progress=progress,
                      griffin_lim=griffin_lim, f0_method=f0_method,
                      workers=workers, wer_steps=wer_steps,
                      cache_dir=os.path.join(out_dir, ".judged") if cache
                      else None)
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
          "metrics_json": mpath, "report": index, "n_failed": n_failed,
          "n_judged": res["n_judged"], "n_clips": res["n_sources"],
          "workers": res["workers"]}
