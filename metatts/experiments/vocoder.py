"""The tts experiment's vocoder: a WaveNet-style vocoder trained (or
meta-trained) on speaker tasks of (mel, waveform) windows, its held-out loss
after adaptation, and its resynthesis of the real held-out clips.

``config.vocoder.model`` picks the network: ``"wavenet"`` (autoregressive,
``metatts.models.wavenet``; loss = NLL in nats/sample) or ``"nsf"`` (the
source-filter WaveNet stack, ``metatts.models.nsf``; loss = multi-resolution
STFT + F0 loss, with WORLD F0 analysed once per training clip).

References:
  van den Oord et al. (2016), WaveNet, arXiv:1609.03499.
  Nichol et al. (2018), On first-order meta-learning algorithms (Reptile),
    arXiv:1803.02999.
"""

from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from metatts import functional
from metatts import meta
from metatts import methods
from metatts.data import features as dfeat
from metatts.experiments.data import Data
from metatts.methods import base
from metatts.training import export
from metatts.training import loop
from metatts.types import Task, VocoderBatch


def _say(msg: str) -> None:
  print(msg, flush=True)


def _load_audio(example, fc) -> np.ndarray:
  return dfeat.load_clip(example.audio_path, fc, min_seconds=0.0,
                         max_seconds=float("inf"))


def _vocoder_model_config(config, fc):
  """The vocoder's model name and config from ``config.vocoder``."""
  v = config.vocoder
  name = str(v.get("model", "wavenet"))
  common = dict(n_mels=fc.n_mels, sample_rate=fc.sample_rate,
                hop_length=fc.hop_length,
                upsample_factors=tuple(v.upsample_factors))
  if name == "nsf":
    from metatts.models import nsf  # pylint: disable=g-import-not-at-top
    # The envelope inverts the features' own mel.
    return name, nsf.nsf_config(
        v.size, n_fft=fc.n_fft, win_length=fc.win_length, fmin=fc.fmin,
        fmax=fc.fmax, log_floor=fc.log_floor, **common)
  if name == "wavenet":
    from metatts.models import wavenet  # pylint: disable=g-import-not-at-top
    return name, wavenet.wavenet_config(v.size, **common)
  raise ValueError(f"config.vocoder.model={name!r}; use 'wavenet' or 'nsf'.")


def _clip_pairs(examples, fc, model_name: str) -> list:
  """(mel, audio[, f0]) per example; F0 only for the source-filter model."""
  out = []
  for e in examples:
    mel, audio = np.asarray(e.mel), _load_audio(e, fc)
    if model_name == "nsf":
      from metatts.models import nsf  # pylint: disable=g-import-not-at-top
      out.append((mel, audio, nsf.analyse_f0(audio, mel.shape[0],
                                             fc.sample_rate, fc.hop_length)))
    else:
      out.append((mel, audio))
  return out


def _stack(batches):
  return VocoderBatch(*(None if x[0] is None else np.stack(x)
                        for x in zip(*batches)))


def _mcd_function(graphdef, rest, fc):
  """``mcd(params, clips) -> dB``: the mean MCD of the source-filter
  vocoder's resynthesis of ``(mel, audio, f0)`` clips against their audio
  (its own predicted F0, as synthesis runs; one compile per 64-frame
  bucket)."""
  from metatts import vocoders  # pylint: disable=g-import-not-at-top
  from metatts.evaluation import mcd as mcdlib  # pylint: disable=g-import-not-at-top
  floor = float(np.log(fc.log_floor))

  @jax.jit
  def synth(params, mels, key):
    return functional.merge(graphdef, params, rest)(mels, key)

  def mcd(params, clips):
    vals = []
    for i, (mel, audio, _) in enumerate(clips):
      y = vocoders._bucketed(  # pylint: disable=protected-access
          np.asarray(mel, np.float32), floor, fc.hop_length,
          lambda m: synth(params, m, jax.random.key(i)))[:len(audio)]
      vals.append(mcdlib.mel_cepstral_distortion(
          np.clip(y, -1.0, 1.0), audio, fc.sample_rate))
    return float(np.mean(vals))

  return mcd


def _fit_f0(graphdef, params, rest, clips, v, seed: int):
  """The source-filter vocoder's F0 predictor fitted alone (its own stage).

  In the joint loss the predictor sees only the filter's short windows
  (``window_frames``, 16 in the study: less than its receptive field); this
  stage fits it on ``f0_window_frames``-frame windows of the same training
  clips. The filter's parameters are not touched. Deterministic, so a
  resumed run redoes it identically.
  """
  from metatts.models import nsf  # pylint: disable=g-import-not-at-top
  model = functional.merge(graphdef, params, rest)
  pairs = [(mel, f0) for cs in clips.values() for mel, _, f0 in cs]
  steps = int(v.f0_steps)
  start = time.perf_counter()

  def log(i, out):
    _say(f"[vocoder] F0 predictor step {i}/{steps}: loss {out['loss']:.3f}, "
         f"voicing error {out['vuv_error']:.3f}, "
         f"|error| {out['f0_cents']:.0f} cents")

  nsf.fit_f0_predictor(model, pairs, steps=steps,
                       window_frames=int(v.f0_window_frames),
                       batch_size=int(v.f0_batch),
                       learning_rate=float(v.f0_lr), seed=seed,
                       log_every=max(1, steps // 5), log=log)
  _say(f"[vocoder] F0 predictor fitted in {time.perf_counter() - start:.0f} s"
       f" on {len(pairs)} clips")
  return functional.split(model)[1]


def vocoder_tasks(clips: Mapping[str, list], n: int, k: int, q: int,
                  frames: int, hop: int, rng: np.random.Generator) -> Task:
  """One meta-batch of vocoder tasks: ``N`` speakers, ``K + Q`` windows.

  Args:
    clips: speaker -> [(mel [F, M], audio [S])].
    n, k, q: tasks, support and query windows per task.
    frames: window length in frames.
    hop: samples per frame.
    rng: numpy Generator.

  Returns:
    ``Task`` of ``VocoderBatch`` with leaves ``[N, K, ...]`` / ``[N, Q, ...]``.
  """
  from metatts.models import wavenet  # pylint: disable=g-import-not-at-top
  speakers = sorted(clips)
  chosen = rng.choice(len(speakers), n, replace=False)
  sup, qry = [], []
  for si in chosen:
    cs = clips[speakers[int(si)]]
    idx = rng.choice(len(cs), k + q, replace=len(cs) < k + q)
    sup.append(wavenet.make_vocoder_batch(rng, [cs[int(i)] for i in idx[:k]],
                                          frames, hop))
    qry.append(wavenet.make_vocoder_batch(rng, [cs[int(i)] for i in idx[k:]],
                                          frames, hop))
  return Task(_stack(sup), _stack(qry))


def heldout_protocol(config) -> dict:
  """The held-out adaptation protocol of a vocoder config, as plain values.

  ``resample`` (``config.vocoder.heldout_resample``): after the first five
  steps, every further chunk of five steps adapts on new random windows of
  the same support clips (as a user fine-tuning on their clips would),
  instead of the same window per clip for all steps. The first five steps
  see the same windows either way.
  """
  v = config.vocoder
  out = {"steps": sorted({int(s) for s in config.adapt.steps}),
         "shots": sorted({int(k) for k in config.adapt.shots}),
         "eval_speakers": int(v.eval_speakers),
         "eval_clips": int(v.eval_clips), "lr": float(v.inner_lr),
         "window_frames": int(v.window_frames), "seed": int(config.seed)}
  if bool(v.get("heldout_resample", False)):  # older tables lack the key
    out["resample"] = True
  return out


def heldout_adaptation(graphdef, rest, params, heldout, fc, model_name: str,
                       protocol: Mapping, log=None):
  """The vocoder's held-out loss (and MCD) after few-shot adaptation.

  For each held-out speaker (the first ``eval_speakers`` of each split, in
  sorted order): the loss on windows of ``eval_clips`` evaluation clips after
  adapting all parameters on 1 window of each of ``k`` support clips for each
  step count (SGD at ``lr``, in chunks of 5 steps), and for the
  source-filter model the MCD of the evaluation clips' full resynthesis. The
  windows depend only on the protocol's seed and the speaker's clips, so two
  vocoders judged by one protocol see the same windows (a paired
  comparison).

  Args:
    graphdef, rest, params: the vocoder (``functional.split``).
    heldout: split -> speaker -> examples (``Data.heldout``).
    fc: the features' config.
    model_name: ``"nsf"`` or ``"wavenet"``.
    protocol: :func:`heldout_protocol`'s dict.
    log: optional ``log(str)`` per speaker.

  Returns:
    ``(loss, mcd)``, each split -> str(shots) -> str(steps) -> one value per
    speaker (``mcd`` is empty for the WaveNet).
  """
  from metatts.models import wavenet  # pylint: disable=g-import-not-at-top
  steps, shots = list(protocol["steps"]), list(protocol["shots"])
  frames, seed = int(protocol["window_frames"]), int(protocol["seed"])
  resample = bool(protocol.get("resample", False))
  loss_fn = functional.make_loss_fn(graphdef, rest)
  opt = optax.sgd(float(protocol["lr"]))
  pred = functional.filter_for("all")

  @jax.jit
  def nll(p, batch):
    return loss_fn(p, batch)[0]

  def chunk(p, batch, n):
    return meta.adapt(p, batch, loss_fn, inner_optimizer=opt, num_steps=n,
                      filter=pred)[0]

  chunk = jax.jit(chunk, static_argnums=(2,))
  # The source-filter vocoder is fast enough to resynthesize the evaluation
  # clips after every step count: their MCD against the real clip (dB).
  mcd_of = _mcd_function(graphdef, rest, fc) if model_name == "nsf" else None
  table: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
  mcd_table: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
  batch = lambda rng, cs: jax.tree.map(  # noqa: E731
      jnp.asarray, wavenet.make_vocoder_batch(rng, cs, frames, fc.hop_length))
  for split, spk_map in heldout.items():
    for si, spk in enumerate(sorted(spk_map)[:int(protocol["eval_speakers"])]):
      exs = spk_map[spk]
      if len(exs) < max(shots) + 1:
        continue
      pairs = _clip_pairs(exs[:max(shots) + int(protocol["eval_clips"])], fc,
                          model_name)
      erng = np.random.default_rng([seed, 99])
      query = batch(erng, pairs[max(shots):])
      for k in shots:
        sup = batch(erng, pairs[:k])
        p, done = params, 0
        for s in steps:
          while done < s:
            n = min(5, s - done)
            if resample and done >= 5:
              sup = batch(np.random.default_rng([seed, 98, si, k, done]),
                          pairs[:k])
            p = chunk(p, sup, n)
            done += n
          table.setdefault(split, {}).setdefault(str(k), {}).setdefault(
              str(s), []).append(float(nll(p, query)))
          if mcd_of is not None:
            mcd_table.setdefault(split, {}).setdefault(str(k), {}).setdefault(
                str(s), []).append(mcd_of(p, pairs[max(shots):]))
      if log is not None:
        log(f"[vocoder] held-out {split} {spk}: " + ", ".join(
            f"{k} clips @{steps[-1]} loss {table[split][str(k)][str(steps[-1])][-1]:.3f}"
            for k in shots))
  return table, mcd_table


def train_vocoder(config, data: Data, workdir: str) -> dict:
  """Meta-trains the WaveNet-style vocoder and measures held-out NLL.

  The same machinery as the acoustic model: speaker tasks, the learner of
  ``config.vocoder.method``, ``loop.train``, export to
  ``WORKDIR/vocoder/model``; then, per held-out speaker, the query NLL
  (nats/sample) on windows of its evaluation clips after adapting on 1..K
  support clips for each step count of the protocol (SGD, all parameters;
  :func:`heldout_adaptation`).
  """
  v, fc = config.vocoder, data.feature_config
  model_name, vcfg = _vocoder_model_config(config, fc)
  graphdef, params0, rest = base.build_params(model_name, vcfg,
                                              int(config.seed))
  init_from = str(v.get("init_from", "") or "")
  if init_from:  # e.g. meta-learning from a pre-trained vocoder's export
    _, params0, info, _ = export.load_exported(os.path.expanduser(init_from))
    if info.get("model") != model_name or info.get("model_config") != (
        export.config_to_dict(vcfg)):
      raise ValueError(
          f"config.vocoder.init_from={init_from!r} holds a {info.get('model')}"
          f" vocoder whose config differs from config.vocoder's "
          f"({model_name}, size {v.size}); point it at an export of the same"
          " model and size.")
  loss_fn = functional.make_loss_fn(graphdef, rest)
  speakers = sorted(data.train)
  if int(v.max_speakers) and len(speakers) > int(v.max_speakers):
    speakers = [speakers[int(i)] for i in np.linspace(
        0, len(speakers) - 1, int(v.max_speakers)).round()]
  clips = {}
  for s in speakers:
    clips[s] = _clip_pairs(data.train[s][:int(v.clips_per_speaker)], fc,
                           model_name)
  learner_name = (methods.get(v.method).learner_name
                  if v.method in methods.METHODS else v.method)
  # The learner of the vocoder's method, with the vocoder's rates.
  vt = ml_collections.ConfigDict(dict(
      inner_lr=float(v.inner_lr), outer_lr=float(v.outer_lr),
      inner_steps={learner_name: int(v.inner_steps)},
      reptile_epsilon=float(config.train.reptile_epsilon),
      imaml_lam=float(config.train.imaml_lam),
      imaml_cg_steps=int(config.train.imaml_cg_steps),
      task_map=str(config.train.get("task_map", "vmap"))))
  learner = base.learner_for(learner_name, vt, "all")

  def factory(data_key, start_step):
    key = [int(x) for x in np.asarray(data_key).reshape(-1)]
    step = int(start_step)
    while True:
      yield vocoder_tasks(clips, int(v.num_tasks), int(v.num_support),
                          int(v.num_query), int(v.window_frames),
                          fc.hop_length,
                          np.random.default_rng(key + [7, step]))
      step += 1

  vdir = os.path.join(workdir, "vocoder")
  _say(f"[vocoder] {model_name} {v.size}, {v.method}: {v.num_steps} steps on "
       f"{len(clips)} speakers" + (f", from {init_from}" if init_from else ""))
  start = time.perf_counter()
  result = loop.train(learner, loss_fn, params0, factory,
                      base.loop_config(config, int(v.num_steps)), vdir,
                      progress=bool(config.progress))
  seconds = time.perf_counter() - start
  params = result.meta_state.params
  if model_name == "nsf" and int(v.get("f0_steps", 0)):
    params = _fit_f0(graphdef, params, rest, clips, v, int(config.seed))
  export.export_model(
      os.path.join(vdir, "model"), method=f"vocoder-{v.method}",
      model_name=model_name, model_config=vcfg, params=params,
      feature_config=fc, symbols=fc.symbols, speakers=[],
      adapt={"filter": "all", "optimizer": "sgd", "lr": float(v.inner_lr),
             "default_steps": int(config.adapt.default_steps),
             "speaker_slot": 0})
  # Held-out loss after adaptation (same steps and shots as the TTS protocol).
  # The table is saved, and reused by a rerun of the same protocol on the
  # same trained vocoder (it takes minutes).
  held_path = os.path.join(vdir, "heldout.json")
  key = dict(heldout_protocol(config), trained_steps=int(v.num_steps),
             method=str(v.method), mcd=model_name == "nsf")
  table, mcd_table = {}, {}
  if os.path.isfile(held_path):
    with open(held_path) as f:
      saved = json.load(f)
    if saved.get("protocol") == key:
      table = saved["per_speaker"]
      mcd_table = saved.get("mcd_per_speaker", {})
  if not table:
    table, mcd_table = heldout_adaptation(
        graphdef, rest, params, data.heldout, fc, model_name,
        heldout_protocol(config), log=_say)
  with open(held_path, "w") as f:
    json.dump({"protocol": key, "per_speaker": table,
               "mcd_per_speaker": mcd_table}, f, indent=1)
  mean = lambda t: {split: {k: {s: float(np.mean(vals))  # noqa: E731
                                for s, vals in d2.items()}
                            for k, d2 in d1.items()}
                    for split, d1 in t.items()}
  summary = mean(table)
  # The WaveNet's loss is its NLL; older readers look for that key.
  loss_key = "heldout_nll" if model_name == "wavenet" else "heldout_loss"
  return {"seconds": seconds, loss_key: summary, "model": model_name,
          "heldout_mcd": mean(mcd_table),
          "num_speakers": {s: len(next(iter(d1.values()))["0"])
                           if d1 else 0 for s, d1 in table.items()},
          "export": os.path.join(vdir, "model")}


def vocode_references(samples_dir: str, export_dir: str, feature_config,
                      seed: int = 0) -> int:
  """Resynthesizes every real reference clip with a trained vocoder.

  ``samples/reference/<spk>/<utt>.wav`` -> its log-mel (the features the
  acoustic models predict) -> the vocoder -> ``samples/vocoded/<spk>/
  <utt>.wav`` (with the text), the evaluation's "vocoded" ceiling row beside
  Griffin-Lim's.

  Returns:
    The number of clips written.
  """
  from metatts import vocoders  # pylint: disable=g-import-not-at-top
  import soundfile  # pylint: disable=g-import-not-at-top
  from metatts.experiments import adaptation  # pylint: disable=g-import-not-at-top
  mel_config = feature_config.mel_config()
  vocoder = vocoders.load_vocoder(export_dir, export_dir, mel_config)
  ref_root = os.path.join(samples_dir, "reference")
  count = 0
  key = jax.random.key(seed)
  for spk in sorted(os.listdir(ref_root)):
    folder = os.path.join(ref_root, spk)
    if not os.path.isdir(folder):
      continue
    for name in sorted(os.listdir(folder)):
      if not name.endswith(".wav") or name.startswith("."):
        continue
      utt = name[:-4]
      wav, sr = soundfile.read(os.path.join(folder, name), dtype="float32")
      mel = dfeat.compute_log_mel(np.asarray(wav, np.float32), mel_config)
      audio = vocoder(np.asarray(mel), jax.random.fold_in(key, count))
      audio = np.clip(np.asarray(audio)[:len(wav)], -0.99, 0.99)
      txt = os.path.join(folder, utt + ".txt")
      text = open(txt, encoding="utf-8").read().strip() if os.path.isfile(
          txt) else ""
      adaptation._write_clip(  # pylint: disable=protected-access
          os.path.join(samples_dir, "vocoded", spk), utt, audio, text, sr)
      count += 1
  return count


def run(config, workdir: str) -> dict:
  """The vocoder experiment: train the vocoder, resynthesize, judge.

  A tts config with ``experiment = "vocoder"`` (``experiments/configs/
  vocoder.py``): the same corpus and held-out speakers as the tts
  experiment, but only its vocoder stage. The vocoder trains (resuming from
  its checkpoints), its held-out loss after adaptation is measured, the real
  evaluation clips of the held-out speakers are written to
  ``samples/reference`` and resynthesized from their mels into
  ``samples/vocoded``, and the evaluation judges real, Griffin-Lim and the
  vocoder side by side (``report/metrics.json`` rows ``real``,
  ``griffin_lim`` and ``vocoded``). Writes ``WORKDIR/vocoder.json``.
  """
  from metatts.experiments import adaptation  # pylint: disable=g-import-not-at-top
  from metatts.experiments import tts  # pylint: disable=g-import-not-at-top
  t0, c0 = time.perf_counter(), time.process_time()
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json(indent=1))
  data = tts.prepare_data(config, progress=bool(config.progress))
  result = train_vocoder(config, data, workdir)
  timings = {"train": result["seconds"]}
  tick = time.perf_counter()
  _, speakers = tts.evaluation_clips(config, data)
  samples_dir = os.path.join(workdir, "samples")
  adaptation.write_references(samples_dir, speakers, data.feature_config)
  n = vocode_references(samples_dir, result["export"], data.feature_config,
                        seed=int(config.seed))
  timings["vocode"] = time.perf_counter() - tick
  _say(f"[vocoder] resynthesized {n} held-out clips in "
       f"{timings['vocode']:.0f} s")
  metrics = None
  if config.eval.enabled:
    from metatts.evaluation import pipeline  # pylint: disable=g-import-not-at-top
    tick = time.perf_counter()
    evaluation = pipeline.evaluate(
        workdir, metrics=tuple(config.eval.metrics),
        progress=bool(config.progress), griffin_lim=True,
        workers=int(config.eval.get("workers", 0)))
    metrics = {k: v for k, v in evaluation["metrics"].items()
               if k in ("reference",)}
    timings["evaluate"] = time.perf_counter() - tick
  timings["total"] = time.perf_counter() - t0
  timings["total_cpu"] = time.process_time() - c0
  summary = {"name": config.name, "vocoder": result, "clips": n,
             "timings": timings, "ceilings": metrics, "workdir": workdir}
  path = os.path.join(workdir, "vocoder.json")
  with open(path, "w") as f:
    json.dump(summary, f, indent=1, default=str)
  _say(f"[vocoder] done in {timings['total'] / 60:.1f} min; summary {path}")
  return summary


__all__ = ["heldout_adaptation", "heldout_protocol", "run", "train_vocoder",
           "vocode_references", "vocoder_tasks"]
