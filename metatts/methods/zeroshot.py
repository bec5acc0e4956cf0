"""``zeroshot``: a speaker encoder trained jointly with the acoustic model.

The acoustic model has no speaker table: it is conditioned only on an
external speaker vector, the speaker encoder's (leave-one-out) mean over
other clips of the same speaker, and the reconstruction loss trains both
(:class:`ZeroShotLoss`). A new voice's vector is the encoder's mean over its
``K`` support clips (0 steps: zero-shot cloning); with ``S > 0`` steps the
voice path adapts ``{"acoustic", "speaker_vector"}`` with the protocol's
filter (the vector is in the filter group ``speaker``), see
``metatts.voice``.

The export (:func:`export_zeroshot_model`) is a normal
``metatts.training.export`` folder of the acoustic model plus the encoder's
config in ``model.json`` (``speaker_encoder_config``) and its parameters in
``speaker_encoder/``; :func:`load_zeroshot` reads both.

References:
  Jia et al. (2018), Transfer learning from speaker verification to
    multispeaker text-to-speech synthesis, NeurIPS, arXiv:1806.04558.
  Arik et al. (2018), Neural voice cloning with a few samples, NeurIPS,
    arXiv:1802.06006 (speaker encoding).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from metatts import functional
from metatts.methods import base


def configs(ctx: base.Context):
  """``(acoustic config, SpeakerEncoderConfig)`` of the method.

  The acoustic model is the run's (``ctx.model_config``) without a speaker
  table, conditioned on an external vector of the encoder's ``embed_dim``.
  """
  from metatts.models import speaker_encoder  # pylint: disable=g-import-not-at-top
  ecfg = speaker_encoder.speaker_encoder_config(
      ctx.config.train.speaker_encoder_size,
      n_mels=ctx.data.feature_config.n_mels)
  tcfg = dataclasses.replace(ctx.model_config, use_speaker_table=False,
                             external_speaker_dim=ecfg.embed_dim)
  return tcfg, ecfg


def build(ctx: base.Context, seed: int):
  """Initializes the joint zero-shot model.

  Returns:
    ``(graphdef, rest, encoder_graphdef, encoder_rest, params)`` with
    ``params = {"acoustic": acoustic params, "speaker_encoder": encoder
    params}``.
  """
  from metatts.models import speaker_encoder  # pylint: disable=g-import-not-at-top
  tcfg, ecfg = configs(ctx)
  graphdef, acoustic, rest = base.build_params(ctx.model_name, tcfg, seed)
  egraphdef, eparams, erest = functional.split(nnx.jit(
      lambda: speaker_encoder.SpeakerEncoder(ecfg, rngs=nnx.Rngs(seed + 23)))())
  return graphdef, rest, egraphdef, erest, {"acoustic": acoustic,
                                            "speaker_encoder": eparams}


class ZeroShotLoss:
  """Acoustic loss conditioned on speaker-encoder vectors of the same speaker.

  For each clip ``i`` of a batch the speaker vector is the encoder's mean
  over the *other* clips of the batch with the same speaker id
  (leave-one-out, so a clip is never its own reference, as at test time
  where the evaluation sentences are not among the support clips;
  re-normalized as in ``SpeakerEncoder.embed_speakers``); a clip that is
  alone with its speaker uses its own vector. The acoustic model
  reconstructs the clip's mel from text and that vector, and the gradient of
  the reconstruction loss trains both, as in Jia et al. (2018) without the
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


def export_zeroshot_model(directory: str, *, model_config, encoder_config,
                          params, feature_config, symbols: str, speakers,
                          adapt: Mapping[str, Any],
                          info: Optional[Mapping[str, Any]] = None,
                          model_name: str = "tacotron",
                          method: str = "zeroshot") -> str:
  """Writes a zero-shot export: the acoustic model and its speaker encoder.

  Args:
    directory: destination (``WORKDIR/zeroshot/model``).
    model_config: the acoustic model's config (``external_speaker_dim``
      equal to the encoder's ``embed_dim``).
    encoder_config: the ``SpeakerEncoderConfig``.
    params: ``{"acoustic": ..., "speaker_encoder": ...}``.
    feature_config, symbols, speakers, adapt, info: as in
      ``metatts.training.export.export_model``.
    model_name: the acoustic model's key in ``metatts.models.MODELS``.
    method: the method name recorded in ``model.json``.

  Returns:
    The absolute export path.

  Raises:
    ValueError: the acoustic model takes no external vector of the
      encoder's size.
  """
  from metatts.training import export  # pylint: disable=g-import-not-at-top
  ext = getattr(model_config, "external_speaker_dim", None)
  if ext != encoder_config.embed_dim:
    raise ValueError(
        f"The zero-shot acoustic model has external_speaker_dim={ext} but the"
        f" speaker encoder's embed_dim={encoder_config.embed_dim}; build both "
        "with metatts.methods.zeroshot.configs.")
  return export.export_model(  # one atomic write, the encoder included
      directory, method=method, model_name=model_name,
      model_config=model_config, params=params["acoustic"],
      feature_config=feature_config, symbols=symbols, speakers=speakers,
      adapt=adapt, info=dict(info or {}, speaker_encoder_config=(
          export.config_to_dict(encoder_config))),
      trees={"speaker_encoder": params["speaker_encoder"]})


def load_zeroshot(directory: str):
  """Loads an export of :func:`export_zeroshot_model`.

  Returns:
    ``(acoustic, encoder, params, info)``: the merged acoustic model and
    ``SpeakerEncoder`` modules, ``{"acoustic", "speaker_encoder"}`` params
    and the ``model.json`` dict.

  Raises:
    FileNotFoundError: not a zeroshot export (no ``speaker_encoder_config``
      in ``model.json``), or its ``speaker_encoder/`` folder is missing.
    ExportError (a ValueError): the acoustic parameters or the speaker
      encoder cannot be restored (damaged files, a config that does not match
      them); one line naming the folder and the fix, like
      ``metatts.training.export.load_exported``.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  from metatts.models import speaker_encoder  # pylint: disable=g-import-not-at-top
  from metatts.training import export  # pylint: disable=g-import-not-at-top
  model, acoustic, info, _ = export.load_exported(directory)
  ecfg_dict = info.get("speaker_encoder_config")
  enc_dir = os.path.join(info["directory"], "speaker_encoder")
  fix = export._fix_hint(info["directory"])  # pylint: disable=protected-access
  if ecfg_dict is None:
    raise FileNotFoundError(
        f"{info['directory']} is not a zeroshot export (no "
        "speaker_encoder_config in model.json); export it with "
        "metatts.methods.zeroshot.export_zeroshot_model.")
  if not os.path.isdir(enc_dir):
    raise FileNotFoundError(
        f"{enc_dir} is missing: the zeroshot export is partial (model.json "
        "has a speaker_encoder_config but there is no speaker encoder). "
        + fix)
  try:
    ecfg = speaker_encoder.SpeakerEncoderConfig(**{
        k: (tuple(v) if isinstance(v, list) else v)
        for k, v in dict(ecfg_dict).items()})
  except (TypeError, ValueError) as e:
    raise export.ExportError(
        f"{os.path.join(info['directory'], export.MODEL_JSON)}: "
        f"speaker_encoder_config is invalid ({export.short_reason(e)}). "
        + fix) from e
  egraphdef, abstract, erest = functional.split(nnx.eval_shape(
      lambda: speaker_encoder.SpeakerEncoder(ecfg, rngs=nnx.Rngs(0))))
  export.quiet_closed_loop_reports()  # before the restore, see its docstring
  ckptr = ocp.StandardCheckpointer()
  try:
    eparams = ckptr.restore(enc_dir, abstract)
  except Exception as e:  # Orbax raises many types for damaged files.
    raise export.ExportError(
        f"The speaker encoder in {enc_dir} cannot be restored "
        f"({type(e).__name__}: {export.short_reason(e)}). " + fix) from e
  finally:
    ckptr.close()
  encoder = functional.merge(egraphdef, eparams, erest)
  return model, encoder, {"acoustic": acoustic,
                          "speaker_encoder": eparams}, info


def warm_start(acoustic, source):
  """``acoustic`` with every leaf that ``source`` has at the same path and
  shape replaced by ``source``'s.

  The zero-shot acoustic model is the run's model with the speaker table
  replaced by a projection of the encoder's vector (``SpeakerConditioning``),
  so a ``transfer`` export fills everything but ``speaker/proj``; its table
  (``speaker/table``) has no counterpart and is dropped.

  Returns:
    ``(params, copied, total)``: the new pytree and the number of leaves
    copied out of ``acoustic``'s.
  """
  flat_src = {jax.tree_util.keystr(k): v for k, v in
              jax.tree_util.tree_leaves_with_path(source)}
  copied = 0

  def pick(path, leaf):
    nonlocal copied
    other = flat_src.get(jax.tree_util.keystr(path))
    if other is None or np.shape(other) != np.shape(leaf):
      return leaf
    copied += 1
    return jnp.asarray(other, jnp.asarray(leaf).dtype)

  out = jax.tree_util.tree_map_with_path(pick, acoustic)
  return out, copied, len(jax.tree_util.tree_leaves(acoustic))


class ZeroShot(base.Method):
  """Trains the speaker encoder and the acoustic model jointly.

  With ``config.train.init_from`` (as every MAML-family method) the acoustic
  model starts from that export's parameters wherever they fit
  (:func:`warm_start`: all but the speaker table / vector projection); the
  encoder and the projection start from random.
  """

  name = "zeroshot"
  learner_name = "pretrain"
  new_voice = "encoder"
  uses_init_from = True

  def setup(self, ctx: base.Context, params) -> base.Setup:
    # Its own architecture (external vector, no table) and the encoder.
    graphdef, rest, egraphdef, erest, start = build(ctx, int(ctx.config.seed))
    if params is not ctx.params0:  # config.train.init_from
      acoustic, copied, total = warm_start(start["acoustic"], params)
      start = dict(start, acoustic=acoustic)
      base.say(f"[{self.name}] acoustic model: {copied} of {total} "
               "parameter arrays from the init_from export.")
    return base.Setup(start, ZeroShotLoss(graphdef, rest, egraphdef, erest))

  def export(self, ctx: base.Context, directory: str, params, extra=None,
             info=None) -> str:
    del extra  # pretrain has none
    tcfg, ecfg = configs(ctx)
    fc = ctx.data.feature_config
    return export_zeroshot_model(
        directory, model_config=tcfg, encoder_config=ecfg, params=params,
        feature_config=fc, symbols=fc.symbols, speakers=ctx.data.speakers,
        adapt=base.adapt_info(ctx.config, ctx.slot),
        info=dict(info or {}, new_voice=self.new_voice),
        model_name=ctx.model_name, method=self.name)


METHOD = ZeroShot()
