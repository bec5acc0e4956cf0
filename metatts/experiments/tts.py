"""Few-shot speaker adaptation of TTS models, end to end, as a library run.

``run(config, workdir)`` (what ``experiments/main.py`` calls for
``config.experiment == "tts"``):

1. builds (or finds) the corpus: the embedded synthetic corpus
   (``metatts.data.synth``) or a real layout (VCTK, LibriTTS, generic), and
   its feature cache;
2. trains every method of ``config.methods`` on the *training* speakers with
   ``metatts.training.loop.train`` (resumable Orbax checkpoints, NaN-guarded,
   TensorBoard + ``metrics.json``): ``transfer`` (multi-speaker pre-training,
   ``meta.pretrain``), ``multitask`` (the same plus a speaker-classification
   head on the generated mel, shared trunk), ``zeroshot`` (a Tacotron
   conditioned on the vector of a speaker encoder trained jointly with it
   through reconstruction, see ``ZeroShotLoss``), and ``meta-<algorithm>`` for
   maml, fomaml, reptile, metasgd and imaml over speaker tasks, from scratch
   or from another method's result (``config.train.init_from``), with the
   parameters adapted in the inner loop chosen by ``config.train.filter``;
3. exports each result to ``WORKDIR/<method>/model`` (``metatts.training
   .export``: what ``metatts.load`` reads);
4. optionally meta-trains the WaveNet-style vocoder on speaker tasks of
   (mel, waveform) windows and reports its held-out NLL after adaptation;
5. adapts every method *and* a from-scratch model to held-out speakers
   (``heldout_seen``: new speakers of voices seen in training,
   ``heldout_unseen``: a voice never seen) with the one protocol of
   ``metatts.experiments.adaptation`` (same clips, optimizer, filter, steps),
   writes ``WORKDIR/samples`` and runs ``metatts.evaluation.evaluate``.

The speaker slot of a new voice
-------------------------------
The Tacotron speaker table has ``num_train_speakers + 1`` rows; the last row
(``speaker_slot``) belongs to whichever new voice is being adapted.

* Meta-learned methods train every task on that slot: each training speaker
  is, for the inner loop, a new voice whose embedding starts at the slot row
  and is adapted on its support clips (with the filter's other parameters).
  So the slot row is meta-learned as the initialization of a new speaker's
  embedding, in the spirit of CAVIA's context parameters (Zintgraf et al.
  2019); the other rows stay unused.
* ``transfer`` / ``multitask`` learn one row per training speaker; before
  export and adaptation the slot row is set to the mean of the trained rows
  (the "average voice", the usual starting point for fine-tuning a new
  speaker, cf. Arik et al. 2018).
* ``scratch`` starts from the random initialization.
* ``zeroshot`` has no speaker table: its Tacotron is conditioned only on an
  external speaker vector. A new voice's vector is the speaker encoder's
  mean over its ``K`` support clips (0 steps: zero-shot); for ``S > 0``
  steps that vector is the adapted ``speaker`` parameter (with the rest of
  the protocol's filter), see ``ZeroShotAdapter``.

Compute budget
--------------
Every method trains on the same stream of meta-batches (``N`` speakers x
``K`` support + ``Q`` query clips). The pre-training step makes one
forward/backward pass over all ``N (K + Q)`` clips; (FO)MAML and Meta-SGD
with ``m`` inner steps make ``m`` over the ``N K`` support clips and one
over the ``N Q`` query clips; Reptile ``m`` over the support clips (and
iMAML also its CG products, not counted). ``config.train.num_steps`` is
the number of *pre-training* steps; with ``config.train.equal_budget``
(default) every other method trains for the number of steps that costs the
same number of clip forward/backward passes (``steps_for_budget``), so a
5-inner-step FOMAML makes a third as many meta-steps as ``transfer`` makes
steps. ``run.json`` records each method's steps, clip passes and
wall-clock. With ``equal_budget=False`` every method makes ``num_steps``
steps whatever they cost.

References:
  Finn et al. (2017), Model-agnostic meta-learning, ICML, arXiv:1703.03400.
  Nichol et al. (2018), On first-order meta-learning algorithms (Reptile),
    arXiv:1803.02999.
  Li et al. (2017), Meta-SGD, arXiv:1707.09835.
  Rajeswaran et al. (2019), Meta-learning with implicit gradients, NeurIPS.
  Zintgraf et al. (2019), Fast context adaptation via meta-learning (CAVIA),
    ICML, arXiv:1810.03642.
  Arik et al. (2018), Neural voice cloning with a few samples, NeurIPS,
    arXiv:1802.06006.
  Jia et al. (2018), Transfer learning from speaker verification to
    multispeaker text-to-speech synthesis, NeurIPS, arXiv:1806.04558.
  Huang et al. (2022), Meta-TTS, IEEE/ACM TASLP, arXiv:2111.04040.
  Shen et al. (2018), Tacotron 2, ICASSP, arXiv:1712.05884.
  van den Oord et al. (2016), WaveNet, arXiv:1609.03499.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Mapping, NamedTuple, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from metatts import functional
from metatts import meta
from metatts.experiments import adaptation
from metatts.training import export
from metatts.training import loop
from metatts.types import Task, VocoderBatch

# Method key -> metatts.meta learner name.
METHODS: Dict[str, str] = {
    "transfer": "pretrain",
    "multitask": "pretrain",
    "zeroshot": "pretrain",
    "meta-maml": "maml",
    "meta-fomaml": "fomaml",
    "meta-metasgd": "metasgd",
    "meta-reptile": "reptile",
    "meta-imaml": "imaml",
}
BASELINES = ("scratch",)  # adapted at test time, never trained
CORPORA = ("synth", "vctk", "libritts", "generic")


def _say(msg: str) -> None:
  print(msg, flush=True)


# ----------------------------------------------------------------------------
# Config.


def default_config() -> ml_collections.ConfigDict:
  """Every key of a tts experiment config, with CPU-quickstart-like values.

  ``experiments/configs/{quickstart,base,full}.py`` start from this and set
  their sizes; the config is locked by the launcher, so a misspelt override
  is an error.
  """
  c = ml_collections.ConfigDict()
  c.experiment = "tts"
  c.name = "tts"
  c.seed = 0
  c.progress = True
  c.expected_minutes = 0
  c.hardware = "a 2-core CPU"  # what expected_minutes refers to

  c.data = ml_collections.ConfigDict()
  c.data.corpus = "synth"  # synth | vctk | libritts | generic
  c.data.root = "~/.cache/metatts/synth-default"
  c.data.synth_preset = "default"  # metatts.data.synth preset name
  c.data.synth_overrides = ml_collections.ConfigDict()  # SynthConfig fields
  c.data.synth_seed = 0
  c.data.cache_dir = "~/.cache/metatts/features"
  c.data.features = ml_collections.ConfigDict({"n_mels": 80})
  c.data.max_tokens = 120
  c.data.max_frames = 320
  c.data.num_buckets = 1
  c.data.max_train_speakers = 0  # 0 = all
  # Real corpora: speaker ids moved to the held-out splits.
  c.data.heldout_seen = ()
  c.data.heldout_unseen = ()

  c.model = ml_collections.ConfigDict({"size": "tiny"})

  c.methods = ("transfer", "meta-fomaml")

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 200  # pre-training steps; see equal_budget
  # Every method gets the clip forward/backward passes of num_steps
  # pre-training steps (steps_for_budget); False: num_steps steps each.
  c.train.equal_budget = True
  c.train.num_tasks = 4  # N speakers per meta-batch
  c.train.num_support = 5  # K
  c.train.num_query = 5  # Q
  c.train.filter = "speaker+decoder"
  c.train.inner_lr = 0.01
  c.train.outer_lr = 1e-3
  c.train.inner_steps = ml_collections.ConfigDict(
      {"maml": 1, "fomaml": 1, "metasgd": 1, "reptile": 3, "imaml": 3})
  c.train.reptile_epsilon = 0.5
  c.train.imaml_lam = 1.0
  c.train.imaml_cg_steps = 3
  c.train.multitask_weight = 0.1
  c.train.multitask_l2 = 0.0
  c.train.speaker_encoder_size = "tiny"  # zeroshot: SpeakerEncoder size
  c.train.init_from = ""  # "" | method key of this run | an export dir
  c.train.log_every = 10
  c.train.checkpoint_every = 50
  c.train.max_to_keep = 2
  c.train.max_skipped = 20

  c.adapt = ml_collections.ConfigDict()
  c.adapt.enabled = True
  c.adapt.scratch = True
  c.adapt.filter = "speaker+decoder"
  c.adapt.optimizer = "sgd"
  c.adapt.lr = 0.01
  c.adapt.steps = (0, 5, 20, 100)
  c.adapt.shots = (1, 5)
  c.adapt.default_steps = 20
  c.adapt.num_eval = 2
  c.adapt.max_speakers = 4  # per held-out split
  c.adapt.seed = 0
  c.adapt.synth_frames_factor = 1.25
  c.adapt.griffin_lim_iters = 32

  c.eval = ml_collections.ConfigDict()
  c.eval.enabled = True
  c.eval.metrics = ("secs", "eer")
  c.eval.griffin_lim = True

  c.vocoder = ml_collections.ConfigDict()
  c.vocoder.enabled = False
  c.vocoder.method = "meta-reptile"
  c.vocoder.size = "tiny"
  c.vocoder.upsample_factors = (10, 20)
  c.vocoder.num_steps = 100
  c.vocoder.num_tasks = 2
  c.vocoder.num_support = 2
  c.vocoder.num_query = 2
  c.vocoder.window_frames = 8
  c.vocoder.inner_lr = 0.01
  c.vocoder.inner_steps = 1
  c.vocoder.outer_lr = 1e-3
  c.vocoder.max_speakers = 16
  c.vocoder.clips_per_speaker = 4
  c.vocoder.eval_speakers = 2
  c.vocoder.eval_clips = 2
  return c


# ----------------------------------------------------------------------------
# Data.


class Data(NamedTuple):
  """Features of one corpus, split for training and evaluation."""

  corpus_dir: str
  feature_config: Any  # metatts.data.features.FeatureConfig
  train: Dict[str, list]  # speaker -> [Example]
  heldout: Dict[str, Dict[str, list]]  # split -> speaker -> [Example]
  speakers: List[str]  # training speakers, table order
  buckets: Any  # metatts.data.sampler.Buckets
  skipped: Dict[str, int]


def prepare_data(config, progress: bool = True) -> Data:
  """Builds/loads the corpus and its feature cache; splits the speakers.

  Args:
    config: the experiment config (uses ``config.data``).
    progress: progress bars.

  Returns:
    A ``Data``.

  Raises:
    ValueError / FileNotFoundError: unknown corpus kind, missing folder, a
      held-out speaker that is not in the corpus, too few speakers.
  """
  from metatts.data import corpora, features, sampler, synth  # pylint: disable=g-import-not-at-top
  d = config.data
  if d.corpus not in CORPORA:
    raise ValueError(f"config.data.corpus={d.corpus!r}; use one of "
                     f"{list(CORPORA)}.")
  root = os.path.abspath(os.path.expanduser(d.root))
  if d.corpus == "synth":
    import dataclasses  # pylint: disable=g-import-not-at-top
    preset = d.synth_preset
    overrides = d.synth_overrides.to_dict() if d.get("synth_overrides") else {}
    if overrides:
      preset = dict(dataclasses.asdict(synth.get_config(preset)), **overrides)
    _say(f"Corpus: synthetic preset {d.synth_preset}"
         f"{' with ' + str(sorted(overrides)) if overrides else ''} in {root}"
         " (built if missing or out of date).")
    synth.build_corpus(preset, root, seed=int(d.synth_seed),
                       progress=progress)
    corpus = corpora.load_generic(root)
  else:
    corpus = corpora.load_corpus(d.corpus, root)
  meta_overrides = {}
  for split in ("heldout_seen", "heldout_unseen"):
    for spk in list(d.get(split, ()) or ()):
      if spk not in corpus.speakers:
        raise ValueError(
            f"config.data.{split} names speaker {spk!r}, which {root} does "
            f"not have; pick from {sorted(corpus.speakers)[:10]}...")
      meta_overrides[spk] = split
  if meta_overrides:
    speakers = {s: dict(m, split=meta_overrides.get(s, m.get("split",
                                                               "train")))
                for s, m in corpus.speakers.items()}
    corpus = corpus._replace(speakers=speakers)
  fc = features.FeatureConfig.from_config(d.features)
  store = features.build_features(corpus, fc, os.path.expanduser(d.cache_dir),
                                  progress=progress)
  by = store.by_speaker()
  train: Dict[str, list] = {}
  heldout: Dict[str, Dict[str, list]] = {"heldout_seen": {},
                                         "heldout_unseen": {}}
  for spk, exs in by.items():
    split = corpus.speakers.get(spk, {}).get("split", "train")
    if split == "train":
      train[spk] = exs
    else:
      heldout[split][spk] = exs
  if int(d.max_train_speakers) and len(train) > int(d.max_train_speakers):
    keep = sorted(train)[:int(d.max_train_speakers)]
    train = {s: train[s] for s in keep}
  if len(train) < int(config.train.num_tasks):
    raise ValueError(
        f"{root} has {len(train)} training speakers with features, fewer "
        f"than config.train.num_tasks={config.train.num_tasks}; lower it or "
        "use a larger corpus.")
  all_train = [e for v in train.values() for e in v]
  buckets = sampler.make_buckets(all_train, int(d.num_buckets),
                                 int(d.max_tokens), int(d.max_frames),
                                 frame_multiple=16)
  _say(f"Features: {len(store)} clips ({dict(store.skipped) or 'none'} "
       f"skipped); {len(train)} training speakers, "
       f"{len(heldout['heldout_seen'])} heldout_seen, "
       f"{len(heldout['heldout_unseen'])} heldout_unseen; buckets "
       f"{tuple(zip(*buckets))}.")
  return Data(root, fc, train, heldout, sorted(train), buckets,
              dict(store.skipped))


def task_factory(data: Data, config, slot: Optional[int]):
  """``(data_key, start_step) -> iterator of Task`` for ``loop.train``.

  The tasks of step ``s`` depend only on ``(config.seed, s)``, so a resumed
  run sees exactly the tasks an uninterrupted one would, and every method
  sees the same stream.

  Args:
    data: from ``prepare_data``.
    config: the experiment config.
    slot: if not None, every clip's speaker id becomes this row (meta
      methods; see the module docstring).
  """
  from metatts.data import sampler as sampler_lib  # pylint: disable=g-import-not-at-top
  t = config.train
  table = {s: i for i, s in enumerate(data.speakers)}
  sampler = sampler_lib.EpisodeSampler(
      data.train, num_tasks=int(t.num_tasks), num_support=int(t.num_support),
      num_query=int(t.num_query), buckets=data.buckets, speaker_ids=table,
      seed=int(config.seed))

  def factory(data_key, start_step):
    key = [int(x) for x in np.asarray(data_key).reshape(-1)]
    step = int(start_step)
    while True:
      task = sampler.sample(np.random.default_rng(key + [step]))
      if slot is not None:
        task = Task(
            task.support._replace(speaker_ids=np.full_like(
                task.support.speaker_ids, slot)),
            task.query._replace(speaker_ids=np.full_like(
                task.query.speaker_ids, slot)))
      step += 1
      yield task

  return factory


# ----------------------------------------------------------------------------
# Models.


def build_params(model_name: str, model_config, seed: int):
  """Initializes a model under ``nnx.jit`` (one compile instead of thousands
  of eager initializer dispatches) and splits it.

  Returns:
    ``(graphdef, params, rest)`` as in ``metatts.functional.split``.
  """
  from metatts.models import tacotron, wavenet  # pylint: disable=g-import-not-at-top
  cls = {"tacotron": tacotron.Tacotron, "wavenet": wavenet.WaveNet}[
      model_name]

  def make():
    return cls(model_config, rngs=nnx.Rngs(seed))

  if model_name == "wavenet":
    # Its initializers draw on the host (numpy), which cannot be traced.
    return functional.split(make())
  return functional.split(nnx.jit(make)())


def tacotron_config(config, data: Data):
  """The Tacotron config: the size in ``config.model`` fitted to the data."""
  from metatts.models import tacotron  # pylint: disable=g-import-not-at-top
  overrides = dict(config.model.to_dict())
  size = overrides.pop("size", "tiny")
  overrides.update(num_symbols=data.feature_config.num_symbols,
                   num_mels=data.feature_config.n_mels,
                   num_speakers=len(data.speakers) + 1)
  return tacotron.tacotron_config(size, **overrides)


class MultiTaskLoss:
  """Mel loss plus a speaker-classification head on the generated mel.

  The trunk (the whole Tacotron) is shared; the head is a linear softmax
  classifier over the training speakers applied to the time-average of the
  post-net mel over valid frames, so the auxiliary task asks the *output* to
  carry the speaker's identity (the multi-task formulation of the seeds:
  ``sum_t L_t + lambda R(theta_shared)`` with an L2 ``R``). The head's
  parameters live under the key ``classifier`` beside the Tacotron's
  ``acoustic`` parameters; only the latter are exported.
  """

  def __init__(self, graphdef, rest, weight: float, l2: float):
    self.graphdef, self.rest = graphdef, rest
    self.weight, self.l2 = float(weight), float(l2)

  def __call__(self, params, batch):
    from metatts.models import layers  # pylint: disable=g-import-not-at-top
    model = functional.merge(self.graphdef, params["acoustic"], self.rest)
    loss, aux = model.loss(batch)
    out = model(batch)
    mask = layers.length_mask(batch.mel_lengths, out.mel_after.shape[1])
    pooled = (out.mel_after * mask[..., None]).sum(1) / jnp.maximum(
        mask.sum(1, keepdims=True), 1)  # [B, M]
    head = params["classifier"]
    logits = pooled @ head["kernel"] + head["bias"]  # [B, num_train]
    ids = jnp.clip(batch.speaker_ids, 0, logits.shape[-1] - 1)
    ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                       ids[:, None], -1))
    reg = sum(jnp.sum(jnp.square(x))
              for x in jax.tree_util.tree_leaves(params["acoustic"]))
    aux = dict(aux, speaker_ce=ce)
    return loss + self.weight * ce + self.l2 * reg, aux


def zeroshot_configs(config, data: Data):
  """``(TacotronConfig, SpeakerEncoderConfig)`` of the ``zeroshot`` method.

  The Tacotron is the one of ``tacotron_config`` without a speaker table,
  conditioned on an external vector of the encoder's ``embed_dim``.
  """
  import dataclasses  # pylint: disable=g-import-not-at-top
  from metatts.models import speaker_encoder  # pylint: disable=g-import-not-at-top
  ecfg = speaker_encoder.speaker_encoder_config(
      config.train.speaker_encoder_size, n_mels=data.feature_config.n_mels)
  tcfg = dataclasses.replace(tacotron_config(config, data),
                             use_speaker_table=False,
                             external_speaker_dim=ecfg.embed_dim)
  return tcfg, ecfg


def build_zeroshot(config, data: Data, seed: int):
  """Initializes the joint zero-shot model.

  Returns:
    ``(graphdef, rest, encoder_graphdef, encoder_rest, params)`` with
    ``params = {"acoustic": Tacotron params, "speaker_encoder": encoder
    params}``.
  """
  from metatts.models import speaker_encoder  # pylint: disable=g-import-not-at-top
  tcfg, ecfg = zeroshot_configs(config, data)
  graphdef, acoustic, rest = build_params("tacotron", tcfg, seed)
  # The encoder's initializers draw on the host (as the vocoder's): eager.
  egraphdef, eparams, erest = functional.split(
      speaker_encoder.SpeakerEncoder(ecfg, rngs=nnx.Rngs(seed + 23)))
  return graphdef, rest, egraphdef, erest, {"acoustic": acoustic,
                                            "speaker_encoder": eparams}


class ZeroShotLoss:
  """Tacotron loss conditioned on speaker-encoder vectors of the same speaker.

  For each clip ``i`` of a batch the speaker vector is the encoder's mean
  over the *other* clips of the batch with the same speaker id
  (leave-one-out, so a clip is never its own reference, as at test time
  where the evaluation sentences are not among the support clips;
  re-normalized as in ``SpeakerEncoder.embed_speakers``); a clip that is
  alone with its speaker uses its own vector. The Tacotron reconstructs the
  clip's mel from text and that vector, and the gradient of the
  reconstruction loss trains both, as in Jia et al. (2018) without the
  separately trained verification encoder and as in Arik et al. (2018)'s
  speaker encoding. Nothing here sees a speaker-verification judge.

  ``params = {"acoustic": ..., "speaker_encoder": ...}``.
  """

  def __init__(self, graphdef, rest, encoder_graphdef, encoder_rest):
    self.graphdef, self.rest = graphdef, rest
    self.encoder_graphdef, self.encoder_rest = encoder_graphdef, encoder_rest

  def vectors(self, encoder_params, batch):
    """[B, D] leave-one-out mean encoder vectors of the batch's speakers."""
    enc = functional.merge(self.encoder_graphdef, encoder_params,
                           self.encoder_rest)
    e = enc(batch.mels, jnp.maximum(batch.mel_lengths, 1))  # [B, D]
    ids = jnp.asarray(batch.speaker_ids)
    b = ids.shape[0]
    same = (ids[:, None] == ids[None, :]) & ~jnp.eye(b, dtype=bool)
    w = same.astype(jnp.float32)  # [B, B]
    count = w.sum(1, keepdims=True)  # [B, 1]
    mean = (w @ e) / jnp.maximum(count, 1.0)
    if enc.config.normalize:
      mean = mean * jax.lax.rsqrt(jnp.maximum(
          jnp.sum(mean * mean, -1, keepdims=True), 1e-12))
    return jnp.where(count > 0, mean, e)

  def __call__(self, params, batch):
    v = self.vectors(params["speaker_encoder"], batch)
    model = functional.merge(self.graphdef, params["acoustic"], self.rest)
    return model.loss(batch, speaker_vectors=v)


def zeroshot_voice_model(graphdef, rest, params, batch_size: int):
  """The Tacotron and its speaker vectors for a new voice's parameters.

  Args:
    graphdef: the zero-shot Tacotron's graph.
    rest: its non-parameter state.
    params: ``{"acoustic": Tacotron params, "speaker_vector": [D]}``.
    batch_size: B.

  Returns:
    ``(model, speaker_vectors [B, D])``: the vector broadcast over the batch.
  """
  model = functional.merge(graphdef, params["acoustic"], rest)
  v = params["speaker_vector"]
  return model, jnp.broadcast_to(v, (batch_size,) + v.shape)


def zeroshot_voice_loss_fn(graphdef, rest):
  """``loss_fn(params, batch)`` of a new voice of the ``zeroshot`` method.

  ``params = {"acoustic", "speaker_vector" [D]}``: the Tacotron loss of the
  batch conditioned on the one vector. The inner loop of both the evaluation
  (``ZeroShotAdapter``) and the library API (``metatts.api``) adapts it, so
  the vector is in the filter group ``speaker``.
  """

  def loss_fn(params, batch):
    model, v = zeroshot_voice_model(graphdef, rest, params,
                                    batch.tokens.shape[0])
    return model.loss(batch, speaker_vectors=v)

  return loss_fn


def encode_speaker(encoder_graphdef, encoder_rest, encoder_params, mels,
                   mel_lengths):
  """A new voice's vector: the speaker encoder's mean over its clips.

  Args:
    encoder_graphdef, encoder_rest: the ``SpeakerEncoder``'s graph and state.
    encoder_params: its parameters.
    mels: [K, T, M] support log-mels (padded).
    mel_lengths: [K] valid frames (a zero length counts as 1).

  Returns:
    [D] float32 (``speaker_encoder.speaker_vector``, Arik et al. 2018's
    averaging over cloning samples).
  """
  from metatts.models import speaker_encoder  # pylint: disable=g-import-not-at-top
  enc = functional.merge(encoder_graphdef, encoder_params, encoder_rest)
  return speaker_encoder.speaker_vector(enc, mels,
                                        jnp.maximum(mel_lengths, 1))


class ZeroShotAdapter(adaptation.Adapter):
  """The adaptation protocol for the ``zeroshot`` method.

  ``curve`` takes ``{"acoustic", "speaker_encoder"}`` params, encodes the
  support clips into the new voice's vector (``speaker_vector``: the mean
  over the ``K`` clips) and runs the *same* protocol as every other method
  (optimizer, lr, steps, chunks, filter) on ``{"acoustic": ...,
  "speaker_vector": [D]}``: the vector falls in the filter group
  ``speaker``, so with ``speaker+decoder`` it is adapted together with the
  decoder (and the Tacotron's speaker projection). At 0 steps the model is
  conditioned on the encoder's vector as is: zero-shot.
  """

  def __init__(self, graphdef, rest, encoder_graphdef, encoder_rest,
               protocol, mel_config, max_tokens: int, max_frames: int,
               synth_frames: int, reduction_factor: int = 1,
               griffin_lim_iters: int = 32):
    super().__init__(graphdef, rest, protocol, mel_config, max_tokens,
                     max_frames, synth_frames, reduction_factor,
                     griffin_lim_iters)
    loss_fn = zeroshot_voice_loss_fn(graphdef, rest)
    self.loss_fn = loss_fn

    def chunk(params, support, lrs, num_steps):
      return meta.adapt(params, support, loss_fn,
                        inner_optimizer=self.optimizer, num_steps=num_steps,
                        filter=self.filter, lrs=lrs)

    self._chunk = jax.jit(chunk, static_argnums=(3,))

    def infer(params, tokens, token_lengths, speaker_ids, min_frames=None):
      model, v = zeroshot_voice_model(graphdef, rest, params, tokens.shape[0])
      return model.infer(tokens, token_lengths, speaker_ids,
                         max_frames=synth_frames, speaker_vectors=v,
                         min_frames=min_frames)

    self._infer = jax.jit(infer)

    def encode(encoder_params, mels, lengths):
      return encode_speaker(encoder_graphdef, encoder_rest, encoder_params,
                            mels, lengths)  # [D]

    self._encode = jax.jit(encode)

  def start(self, params, support):
    """The 0-step parameters for a support batch: the encoded vector."""
    v = self._encode(params["speaker_encoder"], support.mels,
                     support.mel_lengths)
    return {"acoustic": params["acoustic"], "speaker_vector": v}

  def curve(self, params, support, lrs=None):
    """As ``Adapter.curve``, starting from the encoder's vector."""
    if "speaker_encoder" in params:
      params = self.start(params, support)
    return super().curve(params, support, lrs)


def export_zeroshot(directory: str, config, data: Data, params, slot: int,
                    info: Mapping[str, Any]) -> str:
  """Exports the zero-shot Tacotron and, beside it, its speaker encoder.

  ``directory`` is a normal ``metatts.training.export`` folder of the
  Tacotron (``external_speaker_dim > 0``, no table); ``model.json`` also
  holds ``speaker_encoder_config`` and the encoder's parameters are in
  ``directory/speaker_encoder`` (load both with ``load_zeroshot``).
  """
  tcfg, ecfg = zeroshot_configs(config, data)
  return export_zeroshot_model(
      directory, model_config=tcfg, encoder_config=ecfg, params=params,
      feature_config=data.feature_config,
      symbols=data.feature_config.symbols, speakers=data.speakers,
      adapt=_adapt_info(config, slot), info=info)


def export_zeroshot_model(directory: str, *, model_config, encoder_config,
                          params, feature_config, symbols: str, speakers,
                          adapt: Mapping[str, Any],
                          info: Optional[Mapping[str, Any]] = None) -> str:
  """Writes a zero-shot export from its parts (see ``export_zeroshot``).

  Args:
    directory: destination (``WORKDIR/zeroshot/model``).
    model_config: the Tacotron's config (``external_speaker_dim`` equal to
      the encoder's ``embed_dim``).
    encoder_config: the ``SpeakerEncoderConfig``.
    params: ``{"acoustic": ..., "speaker_encoder": ...}``.
    feature_config, symbols, speakers, adapt, info: as in
      ``metatts.training.export.export_model``.

  Returns:
    The absolute export path.

  Raises:
    ValueError: the Tacotron takes no external vector of the encoder's size.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ext = getattr(model_config, "external_speaker_dim", None)
  if ext != encoder_config.embed_dim:
    raise ValueError(
        f"The zero-shot Tacotron has external_speaker_dim={ext} but the "
        f"speaker encoder's embed_dim={encoder_config.embed_dim}; build both "
        "with zeroshot_configs.")
  path = export.export_model(
      directory, method="zeroshot", model_name="tacotron",
      model_config=model_config, params=params["acoustic"],
      feature_config=feature_config, symbols=symbols, speakers=speakers,
      adapt=adapt, info=dict(info or {}, speaker_encoder_config=(
          export.config_to_dict(encoder_config))))
  ckptr = ocp.StandardCheckpointer()
  ckptr.save(os.path.join(path, "speaker_encoder"),
             jax.tree.map(np.asarray, params["speaker_encoder"]))
  ckptr.wait_until_finished()
  ckptr.close()
  return path


def load_zeroshot(directory: str):
  """Loads an export of ``export_zeroshot``.

  Returns:
    ``(tacotron, encoder, params, info)``: the merged Tacotron and
    ``SpeakerEncoder`` modules, ``{"acoustic", "speaker_encoder"}`` params
    and the ``model.json`` dict.

  Raises:
    FileNotFoundError / ValueError: not a zeroshot export, or no encoder.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from metatts.models import speaker_encoder  # pylint: disable=g-import-not-at-top
  model, acoustic, info, _ = export.load_exported(directory)
  ecfg_dict = info.get("speaker_encoder_config")
  enc_dir = os.path.join(info["directory"], "speaker_encoder")
  if ecfg_dict is None or not os.path.isdir(enc_dir):
    raise FileNotFoundError(
        f"{info['directory']} is not a zeroshot export (no "
        "speaker_encoder_config in model.json or no speaker_encoder/ "
        "folder); export it with metatts.experiments.tts.export_zeroshot.")
  ecfg = speaker_encoder.SpeakerEncoderConfig(**{
      k: (tuple(v) if isinstance(v, list) else v)
      for k, v in ecfg_dict.items()})
  # Eager: the encoder's initializers draw on the host (values replaced).
  egraphdef, abstract, erest = functional.split(
      speaker_encoder.SpeakerEncoder(ecfg, rngs=nnx.Rngs(0)))
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), abstract)
  ckptr = ocp.StandardCheckpointer()
  try:
    eparams = ckptr.restore(enc_dir, abstract)
  finally:
    ckptr.close()
  encoder = functional.merge(egraphdef, eparams, erest)
  return model, encoder, {"acoustic": acoustic,
                          "speaker_encoder": eparams}, info


def set_slot_to_mean(params, slot: int):
  """Returns params whose speaker-table row ``slot`` is the mean of the
  rows before it (the trained speakers)."""
  table = jnp.asarray(params["speaker"]["table"]["embedding"])  # [S + 1, D]
  mean = jnp.mean(table[:slot], axis=0)
  new = dict(params)
  new["speaker"] = dict(params["speaker"])
  new["speaker"]["table"] = dict(params["speaker"]["table"])
  new["speaker"]["table"]["embedding"] = table.at[slot].set(mean)
  return new


def make_learner(method: str, t, filter_name: str):
  """The learner of a method from ``config.train`` (``t``)."""
  if method not in METHODS:
    raise ValueError(f"config.methods has {method!r}; known methods are "
                     f"{sorted(METHODS)} (plus 'scratch', never trained).")
  name = METHODS[method]
  pred = functional.filter_for(filter_name)
  inner_steps = int(t.inner_steps.get(name, 1))
  if name == "pretrain":
    return meta.pretrain(optax.adam(t.outer_lr), inner_lr=t.inner_lr,
                         filter=pred)
  kw = dict(inner_lr=float(t.inner_lr), num_inner_steps=inner_steps,
            filter=pred)
  if name == "reptile":
    return meta.reptile(outer_optimizer=optax.sgd(float(t.reptile_epsilon)),
                        **kw)
  if name == "imaml":
    return meta.imaml(outer_optimizer=optax.adam(float(t.outer_lr)),
                      lam=float(t.imaml_lam), cg_steps=int(t.imaml_cg_steps),
                      **kw)
  return meta.get_learner(name, outer_optimizer=optax.adam(float(t.outer_lr)),
                          extra_metrics=False, **kw)


def clip_passes(method: str, t, num_steps: int) -> int:
  """Clip forward/backward passes of a training run (see module docstring)."""
  n, k, q = int(t.num_tasks), int(t.num_support), int(t.num_query)
  name = METHODS[method]
  if name == "pretrain":
    return num_steps * n * (k + q)
  m = int(t.inner_steps.get(name, 1))
  if name == "reptile":
    return num_steps * n * k * m
  return num_steps * n * (k * m + q)


def steps_for_budget(method: str, t) -> int:
  """Training steps of ``method`` under ``config.train`` (``t``).

  With ``t.equal_budget`` the steps whose clip passes equal ``t.num_steps``
  pre-training steps (at least 1); otherwise ``t.num_steps``.
  """
  steps = int(t.num_steps)
  if not t.get("equal_budget", True):  # default_config's default
    return steps
  budget = clip_passes("transfer", t, steps)
  per_step = clip_passes(method, t, 1)
  return max(1, int(round(budget / per_step)))


def _loop_config(config, num_steps: int) -> ml_collections.ConfigDict:
  t = config.train
  return ml_collections.ConfigDict(dict(
      num_steps=int(num_steps), seed=int(config.seed),
      log_every=int(t.log_every), checkpoint_every=int(t.checkpoint_every),
      max_to_keep=int(t.max_to_keep), max_skipped=int(t.max_skipped),
      eval_every=0))


def _adapt_info(config, slot: int) -> dict:
  a = config.adapt
  return {"filter": a.filter, "optimizer": a.optimizer, "lr": float(a.lr),
          "default_steps": int(a.default_steps), "speaker_slot": int(slot)}


def _init_params(config, method: str, workdir: str, params0, slot: int):
  """Starting parameters: random init, or ``config.train.init_from``."""
  src = config.train.init_from
  if not src or method in ("transfer", "multitask", "zeroshot"):
    return params0
  path = src if os.path.sep in src or os.path.isdir(src) else os.path.join(
      workdir, src)
  _, params, info, _ = export.load_exported(path)
  _say(f"[{method}] initialized from {info['directory']} "
       f"({info['method']}).")
  return jax.tree.map(jnp.asarray, params)


def train_method(method: str, config, data: Data, graphdef, rest, params0,
                 workdir: str) -> dict:
  """Trains (or resumes) one method and exports it.

  Returns:
    ``{"params", "extra", "seconds", "clip_passes", "export", ...}``; for
    ``zeroshot`` also ``"zeroshot"``: its graphdefs (``params`` is then
    ``{"acoustic", "speaker_encoder"}``).
  """
  t = config.train
  slot = len(data.speakers)
  mdir = os.path.join(workdir, method)
  is_meta = method.startswith("meta-")
  filter_name = t.filter
  learner = make_learner(method, t, filter_name)
  start_params = _init_params(config, method, workdir, params0, slot)
  loss_fn = functional.make_loss_fn(graphdef, rest)
  if method == "multitask":
    key = jax.random.PRNGKey(int(config.seed) + 17)
    m = data.feature_config.n_mels
    start_params = {
        "acoustic": start_params,
        "classifier": {"kernel": 0.01 * jax.random.normal(
            key, (m, len(data.speakers))),
                       "bias": jnp.zeros((len(data.speakers),))}}
    loss_fn = MultiTaskLoss(graphdef, rest, t.multitask_weight,
                            t.multitask_l2)
  zeroshot = None
  if method == "zeroshot":
    # Its own architecture (external vector, no table) and the encoder.
    graphdef, rest, egraphdef, erest, start_params = build_zeroshot(
        config, data, int(config.seed))
    loss_fn = ZeroShotLoss(graphdef, rest, egraphdef, erest)
    zeroshot = {"graphdef": graphdef, "rest": rest,
                "encoder_graphdef": egraphdef, "encoder_rest": erest}
  factory = task_factory(data, config, slot if is_meta else None)
  num_steps = steps_for_budget(method, t)
  _say(f"[{method}] training {num_steps} steps ({METHODS[method]}, "
       f"N={t.num_tasks} K={t.num_support} Q={t.num_query}, filter "
       f"{filter_name}) in {mdir}")
  start = time.perf_counter()
  cpu0 = time.process_time()
  result = loop.train(learner, loss_fn, start_params, factory,
                      _loop_config(config, num_steps), mdir,
                      progress=bool(config.progress))
  seconds = time.perf_counter() - start
  params = result.meta_state.params
  if method == "multitask":
    params = params["acoustic"]
  extra = result.meta_state.extra
  extra = extra if jax.tree_util.tree_leaves(extra) else None
  info = {"train_steps": int(result.step), "learner": METHODS[method],
          "num_skipped": int(result.meta_state.num_skipped)}
  if zeroshot is not None:
    exp = export_zeroshot(os.path.join(mdir, "model"), config, data, params,
                          slot, info)
  else:
    if not is_meta:
      params = set_slot_to_mean(params, slot)
    exp = export.export_model(
        os.path.join(mdir, "model"), method=method, model_name="tacotron",
        model_config=tacotron_config(config, data), params=params,
        feature_config=data.feature_config,
        symbols=data.feature_config.symbols, speakers=data.speakers,
        adapt=_adapt_info(config, slot), extra=extra, info=info)
  return {"params": params, "extra": extra, "seconds": seconds,
          "zeroshot": zeroshot,
          "cpu_seconds": time.process_time() - cpu0,
          "clip_passes": clip_passes(method, t, num_steps),
          "steps": num_steps,
          "export": exp, "resumed_from": result.resumed_from,
          "num_skipped": int(result.meta_state.num_skipped),
          "final": {k: v for k, v in result.metrics.items()
                    if isinstance(v, float)}}


# ----------------------------------------------------------------------------
# Vocoder.


def _load_audio(example, fc) -> np.ndarray:
  from metatts.audio import io as aio  # pylint: disable=g-import-not-at-top
  return aio.load_clip(example.audio_path, fc.sample_rate,
                       trim=fc.trim_top_db is not None,
                       top_db=fc.trim_top_db or 40.0,
                       normalize=fc.target_dbfs is not None,
                       target_dbfs=fc.target_dbfs or -20.0, min_seconds=0.0,
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
  graphdef, params0, rest = build_params("wavenet", vcfg, int(config.seed))
  loss_fn = functional.make_loss_fn(graphdef, rest)
  rng = np.random.default_rng(int(config.seed))
  speakers = sorted(data.train)
  if int(v.max_speakers) and len(speakers) > int(v.max_speakers):
    speakers = [speakers[int(i)] for i in np.linspace(
        0, len(speakers) - 1, int(v.max_speakers)).round()]
  clips = {}
  for s in speakers:
    exs = data.train[s][:int(v.clips_per_speaker)]
    clips[s] = [(np.asarray(e.mel), _load_audio(e, fc)) for e in exs]
  pred = functional.filter_for("all")
  name = METHODS.get(v.method, v.method)
  kw = dict(inner_lr=float(v.inner_lr), num_inner_steps=int(v.inner_steps),
            filter=pred)
  if name == "pretrain":
    learner = meta.pretrain(optax.adam(float(v.outer_lr)),
                            inner_lr=float(v.inner_lr))
  elif name == "reptile":
    learner = meta.reptile(outer_optimizer=optax.sgd(float(
        config.train.reptile_epsilon)), **kw)
  else:
    learner = meta.get_learner(name, outer_optimizer=optax.adam(
        float(v.outer_lr)), **kw)

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
                      _loop_config(config, int(v.num_steps)), vdir,
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


# ----------------------------------------------------------------------------
# The run.


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
  mcfg = tacotron_config(config, data)
  tick = time.perf_counter()
  graphdef, params0, rest = build_params("tacotron", mcfg, int(config.seed))
  timings["init"] = time.perf_counter() - tick

  trained: Dict[str, dict] = {}
  for method in _ordered_methods(config):
    trained[method] = train_method(method, config, data, graphdef, rest,
                                   params0, workdir)
    timings[f"train/{method}"] = trained[method]["seconds"]

  vocoder = None
  if config.vocoder.enabled:
    tick = time.perf_counter()
    vocoder = train_vocoder(config, data, workdir)
    timings["vocoder"] = time.perf_counter() - tick

  evaluation = None
  report = None
  if config.adapt.enabled:
    tick = time.perf_counter()
    protocol = adaptation.protocol_from_config(config.adapt, slot)
    lim_t, lim_f = data.buckets.tokens[-1], data.buckets.frames[-1]
    fits = lambda e: len(e.tokens) <= lim_t and e.mel.shape[0] <= lim_f  # noqa: E731
    speakers = adaptation.select_clips(
        data.heldout, protocol, int(config.adapt.max_speakers), fits)
    if not speakers:
      raise ValueError(
          "No held-out speaker has enough clips for the adaptation protocol "
          f"(max(shots)={max(protocol.shots)} + num_eval={protocol.num_eval}"
          " of distinct texts within the length limits).")
    samples_dir = os.path.join(workdir, "samples")
    adaptation.write_references(samples_dir, speakers, data.feature_config)
    synth_frames = min(int(mcfg.max_frames), int(
        lim_f * float(config.adapt.synth_frames_factor)))
    adapter = adaptation.Adapter(
        graphdef, rest, protocol, data.feature_config.mel_config(), lim_t,
        lim_f, synth_frames, mcfg.reduction_factor,
        int(config.adapt.griffin_lim_iters))
    starts = {m: (r["params"], r["extra"]) for m, r in trained.items()}
    if config.adapt.scratch:
      starts["scratch"] = (params0, None)
    adapters = {}
    if "zeroshot" in trained:
      z = trained["zeroshot"]["zeroshot"]
      adapters["zeroshot"] = ZeroShotAdapter(
          z["graphdef"], z["rest"], z["encoder_graphdef"],
          z["encoder_rest"], protocol, data.feature_config.mel_config(),
          lim_t, lim_f, synth_frames, mcfg.reduction_factor,
          int(config.adapt.griffin_lim_iters))
    _say(f"Adapting {len(starts)} methods to {len(speakers)} held-out "
         f"speakers: shots {protocol.shots}, steps {protocol.steps}, "
         f"{protocol.optimizer} lr {protocol.lr}, filter {protocol.filter}.")
    for m, (p, extra) in starts.items():
      adaptation.run_method(adapters.get(m, adapter), m, p, speakers,
                            samples_dir, data.feature_config.sample_rate,
                            lrs=extra,
                            progress=bool(config.progress))
    timings["adapt"] = time.perf_counter() - tick
    if config.eval.enabled:
      from metatts.evaluation import pipeline  # pylint: disable=g-import-not-at-top
      tick = time.perf_counter()
      evaluation = pipeline.evaluate(workdir, metrics=tuple(
          config.eval.metrics), progress=bool(config.progress),
                                     griffin_lim=bool(config.eval.griffin_lim))
      report = evaluation.get("report")
      timings["evaluate"] = time.perf_counter() - tick

  timings["total"] = time.perf_counter() - t_start
  timings["total_cpu"] = time.process_time() - cpu_start
  primary = next((m for m in trained if m.startswith("meta-")),
                 next(iter(trained), None))
  summary = {
      "name": config.name, "methods": list(trained), "primary": primary,
      "corpus": data.corpus_dir, "speakers": data.speakers,
      "speaker_slot": slot, "timings": timings,
      "budget": {"unit": "clip forward/backward passes",
                 **{m: r["clip_passes"] for m, r in trained.items()}},
      "training": {m: {k: r[k] for k in ("steps", "seconds", "cpu_seconds",
                                         "num_skipped", "resumed_from",
                                         "final", "export")}
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


__all__ = ["BASELINES", "Data", "default_config", "METHODS", "MultiTaskLoss", "build_params",
           "build_zeroshot", "clip_passes", "encode_speaker",
           "export_zeroshot", "export_zeroshot_model", "load_zeroshot",
           "ZeroShotAdapter", "ZeroShotLoss", "zeroshot_configs",
           "zeroshot_voice_loss_fn", "zeroshot_voice_model", "make_learner",
           "prepare_data", "run",
           "set_slot_to_mean", "task_factory", "tacotron_config",
           "train_method", "train_vocoder", "vocoder_tasks"]
