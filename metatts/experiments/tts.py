"""Few-shot speaker adaptation of TTS models, end to end, as a library run.

``run(config, workdir)`` (what ``experiments/main.py`` calls for
``config.experiment == "tts"``):

1. builds (or finds) the corpus and its feature cache
   (``metatts.experiments.data``; the config schema is
   ``metatts.experiments.config``);
2. trains every method of ``config.methods`` on the *training* speakers, each
   one an entry of the registry ``metatts.methods.METHODS`` (``transfer``,
   ``multitask``, ``zeroshot``, ``meta-<algorithm>``; ``scratch``, never
   trained, when ``config.adapt.scratch``): the method says how it builds its
   model and loss, which learner trains it and how it exports, and the one
   training run of ``metatts.methods.base.Method.train`` (resumable Orbax
   checkpoints, NaN-guarded, TensorBoard + ``metrics.json``) writes
   ``WORKDIR/<method>/model`` (``metatts.training.export``: what
   ``metatts.load`` reads). The acoustic model is ``config.model.name`` from
   ``metatts.models.MODELS`` (default ``tacotron``), fitted to the data;
3. optionally meta-trains the WaveNet-style vocoder on speaker tasks
   (``metatts.experiments.vocoder``);
4. adapts every method's export to held-out speakers (``heldout_seen``: new
   speakers of voices seen in training, ``heldout_unseen``: a voice never
   seen) with the one protocol of ``metatts.experiments.adaptation``, which
   loads each export with ``metatts.load`` and adapts and speaks through
   ``metatts.voice`` (the path users run), writes ``WORKDIR/samples`` and
   runs ``metatts.evaluation.evaluate``.

The speaker slot of a new voice: the speaker table has ``num_train_speakers
+ 1`` rows; the last row (``speaker_slot``) belongs to whichever new voice is
being adapted, and each method says what it holds (``Method.new_voice``, see
``metatts.methods``).

Compute budget: every method trains on the same stream of meta-batches, for
the steps that cost as many clip forward/backward passes as
``config.train.num_steps`` pre-training steps when
``config.train.equal_budget`` (``metatts.methods.base.steps_for_budget``);
``run.json`` records each method's steps, clip passes and wall-clock.

References:
  Finn et al. (2017), Model-agnostic meta-learning, ICML, arXiv:1703.03400.
  Arik et al. (2018), Neural voice cloning with a few samples, NeurIPS,
    arXiv:1802.06006.
  Jia et al. (2018), Transfer learning from speaker verification to
    multispeaker text-to-speech synthesis, NeurIPS, arXiv:1806.04558.
  Huang et al. (2022), Meta-TTS, IEEE/ACM TASLP, arXiv:2111.04040.
  Shen et al. (2018), Tacotron 2, ICASSP, arXiv:1712.05884.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List

from metatts import methods as methods_lib
from metatts.experiments import adaptation
from metatts.experiments.config import CORPORA, default_config
from metatts.experiments.data import Data, prepare_data, task_factory
from metatts.experiments.vocoder import train_vocoder, vocoder_tasks
from metatts.methods import base
from metatts.methods.base import build_params, set_slot_to_mean

# Method key -> metatts.meta learner name, for the methods that train.
METHODS: Dict[str, str] = {
    name: m.learner_name for name, m in methods_lib.trained().items()}
BASELINES = tuple(n for n, m in methods_lib.METHODS.items() if not m.trains)


def _say(msg: str) -> None:
  print(msg, flush=True)


def acoustic_config(config, data: Data):
  """The acoustic model's config: ``config.model`` fitted to the data.

  ``config.model.name`` (default ``"tacotron"``) picks the model from
  ``metatts.models.MODELS``; ``size`` and the other keys are its config
  fields; the symbol, mel and speaker-table sizes come from the data.
  """
  from metatts import models  # pylint: disable=g-import-not-at-top
  overrides = dict(config.model.to_dict())
  name = overrides.pop("name", "tacotron")
  overrides.update(num_symbols=data.feature_config.num_symbols,
                   num_mels=data.feature_config.n_mels,
                   num_speakers=len(data.speakers) + 1)
  return models.model_config(name, overrides)


def model_name(config) -> str:
  """``config.model.name`` (default ``"tacotron"``), checked."""
  from metatts import models  # pylint: disable=g-import-not-at-top
  name = config.model.get("name", "tacotron")
  if name not in models.MODELS:
    raise ValueError(f"config.model.name={name!r}; registered models are "
                     f"{sorted(models.MODELS)}.")
  return name


tacotron_config = acoustic_config  # the name before config.model.name


def make_learner(method: str, t, filter_name: str):
  """The learner of a method from ``config.train`` (``t``)."""
  return _method(method).learner(t, filter_name)


def clip_passes(method: str, t, num_steps: int) -> int:
  """Clip forward/backward passes of a training run of ``method``."""
  return _method(method).clip_passes(t, num_steps)


def steps_for_budget(method: str, t) -> int:
  """Training steps of ``method`` under ``config.train`` (``t``)."""
  return _method(method).steps_for_budget(t)


def _method(name: str) -> base.Method:
  if name not in METHODS:
    raise ValueError(f"config.methods has {name!r}; known methods are "
                     f"{sorted(METHODS)} (plus {list(BASELINES)}, never "
                     "trained).")
  return methods_lib.get(name)


def _loop_config(config, num_steps: int):
  return base.loop_config(config, num_steps)


def _ordered_methods(config) -> List[str]:
  methods = list(config.methods)
  for m in methods:
    if m not in METHODS:
      raise ValueError(f"config.methods has {m!r}; known methods are "
                       f"{sorted(METHODS)} ('scratch' is always evaluated "
                       "when config.adapt.scratch is True).")
  src = config.train.init_from
  if src in methods:  # the initialization source trains first
    methods.remove(src)
    methods.insert(0, src)
  return methods


def context(config, data: Data, workdir: str) -> base.Context:
  """The ``metatts.methods`` context of a run: the acoustic model's random
  initialization and the task stream."""
  name = model_name(config)
  mcfg = acoustic_config(config, data)
  graphdef, params0, rest = build_params(name, mcfg, int(config.seed))
  return base.Context(config, data, os.path.abspath(workdir), name, mcfg,
                      graphdef, rest, params0,
                      lambda slot: task_factory(data, config, slot))


def train_method(method: str, config, data: Data, workdir: str,
                 ctx: base.Context = None) -> dict:
  """Trains (or resumes) one method and exports it (``Method.train``)."""
  ctx = ctx or context(config, data, workdir)
  return methods_lib.get(method).train(ctx)


def evaluation_clips(config, data: Data):
  """The adaptation protocol of ``config.adapt`` and the held-out speakers'
  support and evaluation clips it uses (within the buckets' length limits).

  Returns:
    ``(protocol, speakers)``: an ``adaptation.Protocol`` and the list of
    ``adaptation.SpeakerClips``.
  """
  protocol = adaptation.protocol_from_config(config.adapt, len(data.speakers))
  lim_t, lim_f = data.buckets.tokens[-1], data.buckets.frames[-1]
  fits = lambda e: len(e.tokens) <= lim_t and e.mel.shape[0] <= lim_f  # noqa: E731
  return protocol, adaptation.select_clips(
      data.heldout, protocol, int(config.adapt.max_speakers), fits)


_RESULT_KEYS = ("steps", "seconds", "cpu_seconds", "clip_passes", "export",
                "initialized_from", "resumed_from", "num_skipped", "final")


def _train_worker(config_json: str, workdir: str, name: str) -> dict:
  """Trains one method in a spawned process (``train_methods``)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from metatts import compile_cache  # pylint: disable=g-import-not-at-top
  compile_cache.enable()
  config = ml_collections.ConfigDict(json.loads(config_json))
  data = prepare_data(config, progress=False)
  ctx = context(config, data, workdir)
  result = methods_lib.get(name).train(ctx)
  return {k: result[k] for k in _RESULT_KEYS}


def train_methods(config, ctx: base.Context, names: List[str],
                  workdir: str) -> Dict[str, dict]:
  """Trains (or resumes) and exports every method of ``names``.

  With ``config.train.workers`` > 1 the methods train in that many spawned
  processes, in two waves: first the methods that start from nothing (the
  ``init_from`` source among them), then those that start from the
  source's export. Each process loads the corpus from its cache and builds
  the same initialization from ``config.seed``, so a method's training is
  the same in any process (its checkpoints resume in any other).

  Returns:
    ``{name: {"steps", "seconds", "cpu_seconds", "clip_passes", "export",
    "initialized_from", "resumed_from", "num_skipped", "final"}}``.
  """
  workers = int(config.train.get("workers", 1))
  trains = [n for n in names if methods_lib.get(n).trains]
  out: Dict[str, dict] = {}

  def here(n):
    return {k: v for k, v in methods_lib.get(n).train(ctx).items()
            if k in _RESULT_KEYS}

  if workers <= 1 or len(trains) <= 1:
    return {n: here(n) for n in names}
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  src = config.train.init_from
  later = [n for n in trains if src in trains and n != src
           and methods_lib.get(n).uses_init_from]
  waves = [[n for n in trains if n not in later], later]
  config_json = config.to_json()
  for wave in waves:
    if not wave:
      continue
    _say(f"Training {', '.join(wave)} in {min(workers, len(wave))} "
         "processes.")
    with adaptation.spawn_pool(min(workers, len(wave))) as pool:
      futures = {pool.submit(_train_worker, config_json, workdir, n): n
                 for n in wave}
      for fut in concurrent.futures.as_completed(futures):
        n = futures[fut]
        out[n] = fut.result()
        _say(f"[{n}] trained: {out[n]['steps']} steps in "
             f"{out[n]['seconds'] / 60:.1f} min.")
  for n in names:  # the methods that do not train, in this process
    if n not in out:
      out[n] = here(n)
  return {n: out[n] for n in names}


def run(config, workdir: str) -> Dict[str, Any]:
  """Trains, exports, adapts and evaluates (see the module docstring).

  Args:
    config: from ``experiments/configs/{quickstart,base,full}.py``.
    workdir: output folder; a rerun resumes every training from its newest
      checkpoint and redoes adaptation and evaluation.

  Returns:
    The content of ``WORKDIR/run.json`` plus ``results_path`` and
    ``report``.
  """
  t_start, cpu_start = time.perf_counter(), time.process_time()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if config.get("expected_minutes"):
    _say(f"metatts tts experiment '{config.name}': expected about "
         f"{config.expected_minutes} min on {config.hardware}. Output: "
         f"{workdir}")
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=1))
  timings: Dict[str, float] = {}
  tick = time.perf_counter()
  data = prepare_data(config, progress=bool(config.progress))
  timings["data"] = time.perf_counter() - tick
  slot = len(data.speakers)
  tick = time.perf_counter()
  ctx = context(config, data, workdir)
  timings["init"] = time.perf_counter() - tick

  evaluated = _ordered_methods(config)
  if config.adapt.enabled and config.adapt.scratch:
    evaluated += list(BASELINES)
  trained: Dict[str, dict] = {}
  exports: Dict[str, str] = {}
  results = train_methods(config, ctx, evaluated, workdir)
  for name in evaluated:
    result = results[name]
    exports[name] = result["export"]
    if methods_lib.get(name).trains:
      trained[name] = result
      timings[f"train/{name}"] = result["seconds"]

  vocoder = None
  if config.vocoder.enabled:
    tick = time.perf_counter()
    vocoder = train_vocoder(config, data, workdir)
    timings["vocoder"] = time.perf_counter() - tick

  evaluation = None
  report = None
  if config.adapt.enabled:
    tick = time.perf_counter()
    protocol, speakers = evaluation_clips(config, data)
    if not speakers:
      raise ValueError(
          "No held-out speaker has enough clips for the adaptation protocol "
          f"(max(shots)={max(protocol.shots)} + num_eval={protocol.num_eval}"
          " of distinct texts within the length limits).")
    samples_dir = os.path.join(workdir, "samples")
    adaptation.write_references(samples_dir, speakers, data.feature_config)
    _say(f"Adapting {len(exports)} methods to {len(speakers)} held-out "
         f"speakers: shots {protocol.shots}, steps {protocol.steps}, "
         f"{protocol.optimizer} lr {protocol.lr}, filter {protocol.filter}.")
    adaptation.run_methods(
        exports, speakers, samples_dir, protocol,
        int(config.adapt.griffin_lim_iters),
        workers=int(config.adapt.get("workers", 1)),
        progress=bool(config.progress))
    timings["adapt"] = time.perf_counter() - tick
    if config.eval.enabled:
      from metatts.evaluation import pipeline  # pylint: disable=g-import-not-at-top
      tick = time.perf_counter()
      evaluation = pipeline.evaluate(
          workdir, metrics=tuple(config.eval.metrics),
          progress=bool(config.progress),
          griffin_lim=bool(config.eval.griffin_lim),
          workers=int(config.eval.get("workers", 0)),
          wer_steps=tuple(config.eval.get("wer_steps", ())))
      report = evaluation.get("report")
      from metatts.training import logging as logging_lib  # pylint: disable=g-import-not-at-top
      logging_lib.log_evaluation(workdir, evaluation["metrics"])
      timings["evaluate"] = time.perf_counter() - tick

  timings["total"] = time.perf_counter() - t_start
  timings["total_cpu"] = time.process_time() - cpu_start
  primary = next((m for m in trained if methods_lib.get(m).meta_learned),
                 next(iter(trained), None))
  summary = {
      "name": config.name, "methods": list(trained), "primary": primary,
      "model": ctx.model_name,
      "corpus": data.corpus_dir, "speakers": data.speakers,
      "speaker_slot": slot, "timings": timings,
      "budget": {"unit": "clip forward/backward passes",
                 **{m: r["clip_passes"] for m, r in trained.items()}},
      "training": {m: {k: r[k] for k in ("steps", "seconds", "cpu_seconds",
                                         "num_skipped", "initialized_from",
                                         "resumed_from", "final", "export")}
                   for m, r in trained.items()},
      "vocoder": vocoder,
      "workdir": workdir,
  }
  if evaluation is not None:
    summary["results"] = _headline(evaluation["metrics"])
    summary["step_ratios"] = evaluation.get("step_ratios")
  path = os.path.join(workdir, "run.json")
  with open(path, "w") as f:
    json.dump(summary, f, indent=1, default=str)
  summary["results_path"] = path
  summary["report"] = report
  if report:
    _say(f"Report: {report}")
  _say(f"Done in {timings['total'] / 60:.1f} min "
       f"(this process: {timings['total_cpu'] / 60:.1f} CPU-min). "
       f"Summary: {path}")
  return summary


def _headline(metrics: dict) -> dict:
  """``{method: {shots: {steps: {secs, eer}}}}`` from the evaluation."""
  out = {}
  for method, m in metrics.items():
    if method == "reference" or not isinstance(m, dict) or "shots" not in m:
      continue
    for k, sk in m["shots"].items():
      for s, cell in sk.get("steps", {}).items():
        out.setdefault(method, {}).setdefault(k, {})[s] = {
            key: cell.get(key) for key in ("secs", "eer", "mcd")
            if key in cell}
  return out


__all__ = ["BASELINES", "CORPORA", "Data", "METHODS", "acoustic_config",
           "build_params", "clip_passes", "context", "default_config",
           "evaluation_clips",
           "make_learner", "model_name", "prepare_data", "run",
           "set_slot_to_mean", "steps_for_budget", "tacotron_config",
           "task_factory", "train_method", "train_vocoder", "vocoder_tasks"]
