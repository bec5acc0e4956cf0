"""The one test-time adaptation protocol, shared by every method.

Every method (a meta-learned initialization, the transfer-learning and
multi-task baselines, a model trained from scratch, ...) is judged the same
way: for each held-out speaker the *same* support clips (the first ``K`` of
a fixed, seeded draw of ``max(shots)`` clips), the *same* inner optimizer and
learning rate, the *same* parameter filter and the same numbers of steps
(``0, 5, 20, 100`` by default). The adapted model then synthesizes the same
held-out evaluation sentences exactly as ``Voice.synthesize`` does, whose
real recordings are written beside them as references, into the samples
layout of :mod:`metatts.evaluation.layout`::

  WORKDIR/samples/manifest.json
  WORKDIR/samples/reference/<speaker>/<utt_id>.wav + .txt
  WORKDIR/samples/<method>/shots_<K>/steps_<S>/<speaker>/<utt_id>.wav + .txt
                                                  + <utt_id>.align.npy
  WORKDIR/samples/protocol.json      what was done, per method (clips, steps,
                                     optimizer, filter, lr), for audit

The evaluation is what a user runs: each method's export is loaded with
``metatts.load`` (with a Griffin-Lim vocoder of ``config.adapt
.griffin_lim_iters`` iterations) and every held-out speaker's support clips
go through ``metatts.voice.adapt_and_synthesize`` - the functions behind
``TTS.adapt`` and ``Voice.synthesize`` - with the support batch's default
dropout masks (``seed=None`` in ``TTS.adapt``) and synthesis seed 0 (the
default of ``Voice.synthesize``). Only the support clips' log-mels come from
the feature cache instead of the WAV files; both are made by
``metatts.data.features.load_clip`` and ``compute_log_mel``. How each method
starts a new voice (its speaker-table row or encoder vector) is in
``metatts.methods``.

References:
  Finn et al. (2017), Model-agnostic meta-learning, ICML, arXiv:1703.03400.
  Arik et al. (2018), Neural voice cloning with a few samples, NeurIPS,
    arXiv:1802.06006 (speaker adaptation vs. speaker encoding).
  Huang et al. (2022), Meta-TTS: Meta-learning for few-shot speaker adaptive
    text-to-speech, IEEE/ACM TASLP, arXiv:2111.04040 (the protocol of
    0/5/20/100 adaptation steps judged by speaker verification).
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, List, Mapping, NamedTuple, Optional, Sequence

import numpy as np
import tqdm

from metatts import clips as clips_lib
from metatts import functional
from metatts import voice
from metatts.audio import io as aio
from metatts.data import features as dfeat

CHUNK = voice.CHUNK  # inner steps per compiled adaptation call
OPTIMIZERS = ("sgd", "adam")


class Protocol(NamedTuple):
  """The adaptation protocol (identical for every method of a run)."""

  filter: str  # functional.filter_for name, e.g. "speaker+decoder"
  optimizer: str  # "sgd" or "adam"
  lr: float
  steps: tuple  # adaptation step counts, e.g. (0, 5, 20, 100)
  shots: tuple  # support-set sizes K, e.g. (1, 5)
  num_eval: int  # evaluation sentences per speaker
  seed: int  # clip selection seed
  speaker_slot: int  # embedding row of a new voice

  def to_json(self) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in self._asdict().items()}


def protocol_from_config(c, speaker_slot: int) -> Protocol:
  """Builds the protocol from ``config.adapt``."""
  if c.optimizer not in OPTIMIZERS:
    raise ValueError(f"config.adapt.optimizer={c.optimizer!r}; use one of "
                     f"{list(OPTIMIZERS)}.")
  steps = tuple(sorted({int(s) for s in c.steps}))
  shots = tuple(sorted({int(k) for k in c.shots}))
  if not steps or steps[0] < 0 or not shots or shots[0] < 1:
    raise ValueError(f"config.adapt.steps={c.steps} must be >= 0 and "
                     f"config.adapt.shots={c.shots} >= 1.")
  functional.filter_for(c.filter)  # validates the name
  return Protocol(c.filter, c.optimizer, float(c.lr), steps, shots,
                  int(c.num_eval), int(c.seed), int(speaker_slot))


class SpeakerClips(NamedTuple):
  """The clips of one held-out speaker used by the protocol."""

  speaker: str
  split: str
  support: list  # Examples, max(shots) of them (first K used for K shots)
  evaluation: list  # Examples whose texts never appear in support


def select_clips(heldout: Mapping[str, Mapping[str, Sequence[Any]]],
                 protocol: Protocol,
                 max_speakers: Optional[int] = None,
                 fits=None) -> List[SpeakerClips]:
  """Draws each held-out speaker's support and evaluation clips.

  Args:
    heldout: ``{split: {speaker: [Example, ...]}}``.
    protocol: the protocol (its ``seed``, ``shots`` and ``num_eval``).
    max_speakers: keep at most this many speakers per split (sorted ids,
      evenly spaced).
    fits: optional predicate on an Example (e.g. within the length limit).

  Returns:
    One ``SpeakerClips`` per usable speaker, sorted by split then speaker.
    Speakers without enough clips of distinct texts are left out.
  """
  kmax = max(protocol.shots)
  out = []
  for split in sorted(heldout):
    speakers = sorted(heldout[split])
    if max_speakers and len(speakers) > max_speakers:
      idx = np.linspace(0, len(speakers) - 1, max_speakers).round()
      speakers = [speakers[int(i)] for i in idx]
    for spk in speakers:
      clips = [e for e in heldout[split][spk] if fits is None or fits(e)]
      by_text = {}
      for e in sorted(clips, key=lambda e: e.utt_id):
        by_text.setdefault(e.text, e)
      texts = sorted(by_text)
      if len(texts) < kmax + protocol.num_eval:
        continue
      rng = np.random.default_rng(
          [protocol.seed, int.from_bytes(spk.encode()[:8], "little")])
      order = rng.permutation(len(texts))
      chosen = [by_text[texts[int(i)]] for i in order]
      out.append(SpeakerClips(spk, split, chosen[:kmax],
                              chosen[kmax:kmax + protocol.num_eval]))
  return out


def load_model(export_dir: str, griffin_lim_iters: int = 32):
  """A method's export as the library API loads it, with a Griffin-Lim
  vocoder of ``griffin_lim_iters`` iterations (``metatts.api.TTS``)."""
  from metatts import api  # pylint: disable=g-import-not-at-top
  from metatts import vocoders  # pylint: disable=g-import-not-at-top
  from metatts.training import export  # pylint: disable=g-import-not-at-top
  info = export.read_model_json(export_dir)
  mel_config = dfeat.FeatureConfig.from_config(
      info["feature_config"]).mel_config()
  return api.load(export_dir, vocoder=vocoders.GriffinLimVocoder(
      mel_config, int(griffin_lim_iters)))


def _alignment(parts: Sequence[np.ndarray]) -> np.ndarray:
  """One [steps, symbols] alignment of a text's sentences (block diagonal)."""
  if len(parts) == 1:
    return parts[0]
  out = np.zeros((sum(p.shape[0] for p in parts),
                  sum(p.shape[1] for p in parts)), np.float32)
  i = j = 0
  for p in parts:
    out[i:i + p.shape[0], j:j + p.shape[1]] = p
    i, j = i + p.shape[0], j + p.shape[1]
  return out


def _write_clip(folder: str, utt: str, wav: np.ndarray, text: str,
                sample_rate: int, align: Optional[np.ndarray] = None) -> None:
  os.makedirs(folder, exist_ok=True)
  aio.save_wav(os.path.join(folder, utt + ".wav"), wav, sample_rate)
  with open(os.path.join(folder, utt + ".txt"), "w", encoding="utf-8") as f:
    f.write(text + "\n")
  if align is not None:
    np.save(os.path.join(folder, utt + ".align.npy"), align)


def write_references(samples_dir: str, speakers: Sequence[SpeakerClips],
                     feature_config) -> None:
  """Writes the real evaluation clips (never used for adaptation)."""
  for sc in speakers:
    folder = os.path.join(samples_dir, "reference", sc.speaker)
    for e in sc.evaluation:
      wav = dfeat.load_clip(e.audio_path, feature_config, min_seconds=0.0,
                            max_seconds=float("inf"))
      _write_clip(folder, e.utt_id, wav, e.text, feature_config.sample_rate)
  manifest = {"speakers": {sc.speaker: sc.split for sc in speakers},
              "sample_rate": int(feature_config.sample_rate),
              "description": "real held-out clips (reference) and adapted "
                             "synthesis, Griffin-Lim vocoded"}
  os.makedirs(samples_dir, exist_ok=True)
  with open(os.path.join(samples_dir, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)


def run_method(tts, method: str, speakers: Sequence[SpeakerClips],
               samples_dir: str, protocol: Protocol, seed: int = 0,
               progress: bool = True, merge: bool = True) -> dict:
  """Adapts one method to every held-out speaker and writes its samples.

  Args:
    tts: the method's export loaded as the library API loads it
      (:func:`load_model`); its exported adaptation protocol (filter,
      optimizer, lr) must be ``protocol``'s.
    method: method key (folder name), e.g. 'meta-fomaml', 'transfer'.
    speakers: from :func:`select_clips` (the same list for every method).
    samples_dir: ``WORKDIR/samples``.
    protocol: the protocol (its steps and shots).
    seed: the synthesis seed (``Voice.synthesize``'s default).
    progress: show a progress bar.
    merge: merge the record into ``protocol.json`` (False: the caller
      does, as :func:`run_methods` does for its worker processes).

  Returns:
    The method's protocol record (also merged into ``protocol.json``):
    protocol fields, per speaker the support and evaluation utt ids, and the
    support loss after each step count.

  Raises:
    ValueError: the export's protocol is not ``protocol``.
  """
  p = protocol
  exported = (tts.filter_name, tts.optimizer_name, float(tts.lr),
              int(tts.speaker_slot))
  if exported != (p.filter, p.optimizer, float(p.lr), int(p.speaker_slot)):
    raise ValueError(
        f"{tts.model_dir} was exported with the adaptation protocol "
        f"(filter, optimizer, lr, slot) = {exported}, but the evaluation's is "
        f"{(p.filter, p.optimizer, p.lr, p.speaker_slot)}; re-export it with "
        "the same config.adapt.")
  record = {"protocol": p.to_json(), "learned_lrs": tts.lrs is not None,
            "speakers": {}}
  sample_rate = tts.feature_config.sample_rate
  bar = tqdm.tqdm(total=len(speakers) * len(p.shots),
                  desc=f"adapt {method}", unit="spk", disable=not progress)
  for sc in speakers:
    rec = record["speakers"].setdefault(sc.speaker, {
        "split": sc.split,
        "evaluation": [e.utt_id for e in sc.evaluation], "shots": {}})
    for k in p.shots:
      support = sc.support[:k]
      speech, adapted = voice.adapt_and_synthesize(
          tts, [clips_lib.from_example(e) for e in support],
          [e.text for e in sc.evaluation], p.steps, seed=seed)
      rec["shots"][str(k)] = {
          "support": [e.utt_id for e in support],
          "support_loss": {str(s): float(ls[-1])
                           for s, ls in sorted(adapted.losses.items()) if s}}
      for s, outs in speech.items():
        folder = os.path.join(samples_dir, method, f"shots_{k}",
                              f"steps_{s}", sc.speaker)
        for e, out in zip(sc.evaluation, outs):
          _write_clip(folder, e.utt_id, out.audio, e.text, sample_rate,
                      _alignment(out.alignments))
      bar.update(1)
  bar.close()
  if merge:
    _merge_records(samples_dir, {method: record})
  return record


def _merge_records(samples_dir: str, records: Mapping[str, dict]) -> None:
  path = os.path.join(samples_dir, "protocol.json")
  allrec = {}
  if os.path.isfile(path):
    with open(path) as f:
      allrec = json.load(f)
  allrec.update(records)
  os.makedirs(samples_dir, exist_ok=True)
  with open(path, "w") as f:
    json.dump(allrec, f, indent=1, sort_keys=True)


DONE = "adapted.json"  # WORKDIR/samples/<method>/adapted.json


def fingerprint(export_dir: str, speakers: Sequence[SpeakerClips],
                protocol: Protocol, griffin_lim_iters: int,
                seed: int = 0) -> str:
  """What a method's samples depend on: its export's ``model.json`` (which
  records the training steps and, since session 14, a digest of the weights,
  ``params_sha256``), the protocol, the clips and the vocoder."""
  import hashlib  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  with open(os.path.join(export_dir, "model.json"), "rb") as f:
    h.update(f.read())
  h.update(json.dumps({
      "protocol": protocol.to_json(), "griffin_lim_iters": griffin_lim_iters,
      "seed": seed,
      "speakers": [[sc.speaker, sc.split, [e.utt_id for e in sc.support],
                    [e.utt_id for e in sc.evaluation]] for sc in speakers],
  }, sort_keys=True).encode())
  return h.hexdigest()


def _done_record(samples_dir: str, method: str, key: str) -> Optional[dict]:
  path = os.path.join(samples_dir, method, DONE)
  try:
    with open(path) as f:
      done = json.load(f)
  except (OSError, ValueError):
    return None
  return done.get("record") if done.get("fingerprint") == key else None


def _adapt_one(method: str, export_dir: str, speakers, samples_dir: str,
               protocol: Protocol, griffin_lim_iters: int, key: str,
               progress: bool = False) -> dict:
  """Loads, adapts and writes one method; marks it done (worker body)."""
  import shutil  # pylint: disable=g-import-not-at-top
  folder = os.path.join(samples_dir, method)
  if os.path.isdir(folder):  # stale samples of an older export or protocol
    shutil.rmtree(folder)
  tts = load_model(export_dir, griffin_lim_iters)
  record = run_method(tts, method, speakers, samples_dir, protocol,
                      progress=progress, merge=False)
  with open(os.path.join(folder, DONE), "w") as f:
    json.dump({"fingerprint": key, "record": record}, f)
  return record


# One XLA CPU thread per worker process: with as many processes as cores, the
# default intra-op thread pool (one thread per core in every process)
# oversubscribes the cores, and its threads wait on each other.
SINGLE_THREAD_XLA = ("--xla_cpu_multi_thread_eigen=false "
                     "intra_op_parallelism_threads=1")


@contextlib.contextmanager
def spawn_pool(workers: int, initializer=None):
  """A ``ProcessPoolExecutor`` of ``workers`` spawned processes (jax is not
  fork-safe) whose XLA CPU backend runs one thread each
  (``SINGLE_THREAD_XLA`` added to ``XLA_FLAGS`` while the pool starts them;
  ``METATTS_WORKER_THREADS=all`` keeps XLA's default)."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  import multiprocessing  # pylint: disable=g-import-not-at-top
  old = os.environ.get("XLA_FLAGS")
  if os.environ.get("METATTS_WORKER_THREADS", "") != "all":
    os.environ["XLA_FLAGS"] = f"{old or ''} {SINGLE_THREAD_XLA}".strip()
  try:
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=initializer) as pool:
      yield pool
  finally:
    if old is None:
      os.environ.pop("XLA_FLAGS", None)
    else:
      os.environ["XLA_FLAGS"] = old


def _worker_init() -> None:
  from metatts import compile_cache  # pylint: disable=g-import-not-at-top
  compile_cache.enable()


def run_methods(exports: Mapping[str, str], speakers: Sequence[SpeakerClips],
                samples_dir: str, protocol: Protocol,
                griffin_lim_iters: int = 32, workers: int = 1,
                progress: bool = True) -> dict:
  """Adapts every method's export (:func:`run_method`), resumably.

  A method whose samples were already written for the same export,
  protocol, clips and vocoder (``samples/<method>/adapted.json``) is not
  adapted again, so that a study interrupted during adaptation, or rerun
  with one more method, only adapts what is missing. With ``workers`` > 1
  the methods are adapted in that many spawned processes (each loads the
  export as ``metatts.load`` does; the numbers are the same as in one
  process).

  Args:
    exports: ``{method: export_dir}``.
    speakers: from :func:`select_clips`.
    samples_dir: ``WORKDIR/samples``.
    protocol: the protocol.
    griffin_lim_iters: the Griffin-Lim vocoder's iterations.
    workers: processes (1: this process).
    progress: print a line per method (and a bar per method in-process).

  Returns:
    ``{method: record}`` (also merged into ``protocol.json``), and
    ``"_adapted"``: the methods adapted by this call.
  """
  records, todo = {}, {}
  for method, path in exports.items():
    key = fingerprint(path, speakers, protocol, griffin_lim_iters)
    done = _done_record(samples_dir, method, key)
    if done is not None:
      records[method] = done
      if progress:
        print(f"[{method}] samples already written for this export and "
              "protocol; not adapted again.", flush=True)
    else:
      todo[method] = (path, key)
  if workers <= 1 or len(todo) <= 1:
    for method, (path, key) in todo.items():
      records[method] = _adapt_one(method, path, speakers, samples_dir,
                                   protocol, griffin_lim_iters, key, progress)
      _merge_records(samples_dir, {method: records[method]})
      if progress:
        print(f"[{method}] adapted to {len(speakers)} speakers.", flush=True)
  elif todo:
    import concurrent.futures  # pylint: disable=g-import-not-at-top
    with spawn_pool(min(workers, len(todo)), _worker_init) as pool:
      futures = {pool.submit(_adapt_one, method, path, speakers, samples_dir,
                             protocol, griffin_lim_iters, key): method
                 for method, (path, key) in todo.items()}
      for fut in concurrent.futures.as_completed(futures):
        method = futures[fut]
        records[method] = fut.result()
        _merge_records(samples_dir, {method: records[method]})
        if progress:
          print(f"[{method}] adapted to {len(speakers)} speakers "
                f"({len(records)} of {len(exports)} methods).", flush=True)
  return {**{m: records[m] for m in exports}, "_adapted": sorted(todo)}


def markdown_table(workdir: str, metrics: Sequence[str] = ("secs", "eer"),
                   splits: Sequence[str] = ("heldout_seen",
                                            "heldout_unseen")) -> str:
  """Markdown tables of ``WORKDIR/report/metrics.json`` (one per metric).

  Rows are ``method, split, shots``; columns the adaptation step counts;
  cells the mean over held-out speakers (SECS with its 95% half-width; EER
  in percent). Missing cells (nothing judgeable) show as "-".

  Args:
    workdir: a run folder holding ``report/metrics.json``.
    metrics: metric keys to tabulate.
    splits: held-out splits (rows); "all" pools both.

  Returns:
    The markdown text.
  """
  path = os.path.join(workdir, "report", "metrics.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing; run the experiment (or "
                            "python -m metatts.evaluation --workdir) first.")
  with open(path) as f:
    m = json.load(f)
  methods = sorted(k for k, v in m.items()
                   if k != "reference" and isinstance(v, dict))
  steps = sorted({int(s) for k in methods for sh in m[k]["shots"].values()
                  for s in sh["steps"]})
  out = []
  for metric in metrics:
    out.append(f"**{metric.upper()}**"
               + (" (%, lower is better)" if metric == "eer" else
                  " (cosine, higher is better; +- 95% CI over speakers)"
                  if metric == "secs" else ""))
    out.append("")
    out.append("| method | split | clips | " + " | ".join(
        f"{s} steps" for s in steps) + " |")
    out.append("|---|---|---|" + "---|" * len(steps))
    for k in methods:
      for shots in sorted(m[k]["shots"], key=int):
        for split in splits:
          cells = []
          for s in steps:
            cell = m[k]["shots"][shots]["steps"].get(str(s))
            if cell is not None and split != "all":
              cell = cell.get("splits", {}).get(split)
            v = None if cell is None else cell.get(metric)
            if v is None:
              cells.append("-")
            elif metric == "eer":
              cells.append(f"{100 * v:.1f}")
            elif metric == "secs":
              ci = (cell.get("ci95") or {}).get("secs")
              cells.append(f"{v:.3f}" + (f" +- {ci:.3f}" if ci else ""))
            else:
              cells.append(f"{v:.2f}")
          out.append(f"| {k} | {split} | {shots} | " + " | ".join(cells)
                     + " |")
    out.append("")
  ref = m.get("reference", {})
  for name in ("real", "griffin_lim"):
    if name in ref:
      r = ref[name]
      out.append(f"Ceiling `{name}` (real held-out clips"
                 f"{', Griffin-Lim resynthesis' if name != 'real' else ''}"
                 f"): SECS {r.get('secs', float('nan')):.3f}, EER "
                 f"{100 * (r.get('eer') or 0):.1f}%.")
  return "\n".join(out)


__all__ = ["CHUNK", "DONE", "Protocol", "SpeakerClips", "fingerprint",
           "load_model", "markdown_table", "protocol_from_config", "spawn_pool",
           "run_method", "run_methods", "select_clips", "write_references"]
