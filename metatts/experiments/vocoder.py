"""The tts experiment's vocoder: a WaveNet-style vocoder meta-trained on
speaker tasks of (mel, waveform) windows, and its held-out NLL after
adaptation.

References:
  van den Oord et al. (2016), WaveNet, arXiv:1609.03499.
  Nichol et al. (2018), On first-order meta-learning algorithms (Reptile),
    arXiv:1803.02999.
"""

from __future__ import annotations

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


def _stack(batches):
  return VocoderBatch(*(np.stack(x) for x in zip(*batches)))


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


def train_vocoder(config, data: Data, workdir: str) -> dict:
  """Meta-trains the WaveNet-style vocoder and measures held-out NLL.

  The same machinery as the acoustic model: speaker tasks, the learner of
  ``config.vocoder.method``, ``loop.train``, export to
  ``WORKDIR/vocoder/model``; then, per held-out speaker, the query NLL
  (nats/sample) on windows of its evaluation clips after adapting on 1..K
  support clips for each step count of the protocol (SGD, all parameters).
  """
  from metatts.models import wavenet  # pylint: disable=g-import-not-at-top
  v, fc = config.vocoder, data.feature_config
  vcfg = wavenet.wavenet_config(v.size, n_mels=fc.n_mels,
                                sample_rate=fc.sample_rate,
                                hop_length=fc.hop_length,
                                upsample_factors=tuple(v.upsample_factors))
  graphdef, params0, rest = base.build_params("wavenet", vcfg, int(config.seed))
  loss_fn = functional.make_loss_fn(graphdef, rest)
  speakers = sorted(data.train)
  if int(v.max_speakers) and len(speakers) > int(v.max_speakers):
    speakers = [speakers[int(i)] for i in np.linspace(
        0, len(speakers) - 1, int(v.max_speakers)).round()]
  clips = {}
  for s in speakers:
    exs = data.train[s][:int(v.clips_per_speaker)]
    clips[s] = [(np.asarray(e.mel), _load_audio(e, fc)) for e in exs]
  pred = functional.filter_for("all")
  learner_name = (methods.get(v.method).learner_name
                  if v.method in methods.METHODS else v.method)
  # The learner of the vocoder's method, with the vocoder's rates.
  vt = ml_collections.ConfigDict(dict(
      inner_lr=float(v.inner_lr), outer_lr=float(v.outer_lr),
      inner_steps={learner_name: int(v.inner_steps)},
      reptile_epsilon=float(config.train.reptile_epsilon),
      imaml_lam=float(config.train.imaml_lam),
      imaml_cg_steps=int(config.train.imaml_cg_steps)))
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
  _say(f"[vocoder] {v.method}: {v.num_steps} steps on {len(clips)} speakers")
  start = time.perf_counter()
  result = loop.train(learner, loss_fn, params0, factory,
                      base.loop_config(config, int(v.num_steps)), vdir,
                      progress=bool(config.progress))
  seconds = time.perf_counter() - start
  params = result.meta_state.params
  export.export_model(
      os.path.join(vdir, "model"), method=f"vocoder-{v.method}",
      model_name="wavenet", model_config=vcfg, params=params,
      feature_config=fc, symbols=fc.symbols, speakers=[],
      adapt={"filter": "all", "optimizer": "sgd", "lr": float(v.inner_lr),
             "default_steps": int(config.adapt.default_steps),
             "speaker_slot": 0})
  # Held-out NLL after adaptation (same steps and shots as the TTS protocol).
  steps = sorted({int(s) for s in config.adapt.steps})
  shots = sorted({int(k) for k in config.adapt.shots})
  opt = optax.sgd(float(v.inner_lr))

  @jax.jit
  def nll(p, batch):
    return loss_fn(p, batch)[0]

  def chunk(p, batch, n):
    return meta.adapt(p, batch, loss_fn, inner_optimizer=opt, num_steps=n,
                      filter=pred)[0]

  chunk = jax.jit(chunk, static_argnums=(2,))
  table: Dict[str, Dict[str, Dict[str, List[float]]]] = {}
  for split, spk_map in data.heldout.items():
    for spk in sorted(spk_map)[:int(v.eval_speakers)]:
      exs = spk_map[spk]
      if len(exs) < max(shots) + 1:
        continue
      pairs = [(np.asarray(e.mel), _load_audio(e, fc)) for e in
               exs[:max(shots) + int(v.eval_clips)]]
      erng = np.random.default_rng([int(config.seed), 99])
      query = jax.tree.map(jnp.asarray, wavenet.make_vocoder_batch(
          erng, pairs[max(shots):], int(v.window_frames), fc.hop_length))
      for k in shots:
        sup = jax.tree.map(jnp.asarray, wavenet.make_vocoder_batch(
            erng, pairs[:k], int(v.window_frames), fc.hop_length))
        p, done = params, 0
        for s in steps:
          while done < s:
            n = min(5, s - done)
            p = chunk(p, sup, n)
            done += n
          table.setdefault(split, {}).setdefault(str(k), {}).setdefault(
              str(s), []).append(float(nll(p, query)))
  summary = {split: {k: {s: float(np.mean(vals)) for s, vals in d2.items()}
                     for k, d2 in d1.items()} for split, d1 in table.items()}
  return {"seconds": seconds, "heldout_nll": summary,
          "num_speakers": {s: len(next(iter(d1.values()))["0"])
                           if d1 else 0 for s, d1 in table.items()},
          "export": os.path.join(vdir, "model")}


__all__ = ["train_vocoder", "vocoder_tasks"]
