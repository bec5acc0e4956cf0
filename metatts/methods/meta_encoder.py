"""``meta-<algorithm>-encoder``: meta-learning from the speaker encoder's vector.

The ``meta-<algorithm>`` methods start a new voice from a meta-learned
speaker-table row, the same row for every voice. These methods start it
from what ``zeroshot`` would say about the voice: the acoustic model is the
zero-shot one (no speaker table; conditioned on a speaker encoder's vector,
``metatts.methods.zeroshot``) and the meta-learner's inner loop starts each
training speaker from the encoder's vector of its clips. So the
initialization that is meta-learned is a function of the support clips
(the encoder and the acoustic model together) instead of one row; the
encoder is trained only through the meta-learner's query loss.

How the inner loop sees the vector. At test time the voice path
(``metatts.voice.adapt``) starts from the encoder's mean vector of the
support clips and adapts it, with the acoustic parameters of the protocol's
filter. In training the vector is the encoder's leave-one-out mean over the
other clips of the same batch (:class:`metatts.methods.zeroshot.ZeroShotLoss`,
so a query clip is never conditioned on itself) plus an offset
``speaker_offset`` that the inner loop adapts in the vector's place. The
offset's meta-learned start ``o`` is folded into the export exactly: the
model sees the vector only through ``speaker/proj`` (``W v + b``), so the
exported bias is ``b + W o`` and a test-time vector ``v`` acts as ``v + o``
did in training. What differs from test time: a query clip's vector comes
from the other query clips, not from the support clips (the loss sees one
batch at a time), and a support clip's from the other support clips.

``config.train.init_from`` may be a ``transfer``-like export (the acoustic
model is warm-started from it as ``zeroshot`` does, the encoder starts from
random) or a ``zeroshot`` export (both start from it; then the method has
that export's budget on top of its own, which the run's budget accounting
does not count, so say so beside any result).

References:
  Finn et al. (2017), Model-agnostic meta-learning, ICML, arXiv:1703.03400.
  Arik et al. (2018), Neural voice cloning with a few samples, NeurIPS,
    arXiv:1802.06006 (speaker encoding as the start of adaptation).
  Huang et al. (2022), Meta-TTS, IEEE/ACM TASLP, arXiv:2111.04040.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from metatts import functional
from metatts.methods import base
from metatts.methods import meta_learning
from metatts.methods import zeroshot

ALGORITHMS = ("maml", "fomaml")
OFFSET = "speaker_offset"  # in the filter group "speaker" (functional.group_of)
ENCODER = "speaker_encoder"


class EncoderStartLoss(zeroshot.ZeroShotLoss):
  """The zero-shot loss with the inner loop's offset added to the vectors.

  ``params = {"acoustic", "speaker_encoder", "speaker_offset"}``.
  """

  def __call__(self, params, batch):
    v = self.vectors(params[ENCODER], batch) + params[OFFSET]
    model = functional.merge(self.graphdef, params["acoustic"], self.rest)
    return model.loss(batch, speaker_vectors=v)


def fold_offset(params):
  """The acoustic parameters with the offset folded into ``speaker/proj``.

  Returns ``{"acoustic", "speaker_encoder"}`` (a zero-shot export's params)
  whose projection bias is ``b + offset @ kernel``.
  """
  acoustic = dict(params["acoustic"])
  speaker = dict(acoustic["speaker"])
  proj = dict(speaker["proj"])
  offset = jnp.asarray(params[OFFSET], jnp.float32)
  proj["bias"] = (jnp.asarray(proj["bias"], jnp.float32)
                  + offset @ jnp.asarray(proj["kernel"], jnp.float32))
  speaker["proj"] = proj
  acoustic["speaker"] = speaker
  return {"acoustic": acoustic, ENCODER: params[ENCODER]}


def not_the_encoder(path, leaf) -> bool:
  """False for the speaker encoder's leaves: the inner loop never adapts
  them (its key would put them in the filter group ``speaker``)."""
  del leaf
  keys = functional.path_keys(path)
  return not keys or keys[0] != ENCODER


class MetaEncoder(meta_learning.MetaLearned):
  """``meta-<algorithm>-encoder`` for one ``metatts.meta`` learner."""

  slot_tasks = False  # no speaker table: the encoder gives the start
  new_voice = "encoder"

  def __init__(self, algorithm: str):
    super().__init__(algorithm)
    self.name = f"meta-{algorithm}-encoder"

  def learner(self, t, filter_name: str):
    return base.learner_for(self.learner_name, t, filter_name,
                            also=not_the_encoder)

  def _initial(self, ctx: base.Context):
    params, source = super()._initial(ctx)
    if source is not None and os.path.isdir(
        os.path.join(source["export"], "speaker_encoder")):
      _, _, params, _ = zeroshot.load_zeroshot(source["export"])
      params = jax.tree.map(jnp.asarray, params)
    return params, source

  def setup(self, ctx: base.Context, params) -> base.Setup:
    graphdef, rest, egraphdef, erest, start = zeroshot.build(
        ctx, int(ctx.config.seed))
    if ENCODER in params:  # a zeroshot export: acoustic model and encoder
      start = {"acoustic": params["acoustic"], ENCODER: params[ENCODER]}
      base.say(f"[{self.name}] acoustic model and speaker encoder from the "
               "init_from zeroshot export.")
    elif params is not ctx.params0:  # a speaker-table export
      acoustic, copied, total = zeroshot.warm_start(start["acoustic"], params)
      start = dict(start, acoustic=acoustic)
      base.say(f"[{self.name}] acoustic model: {copied} of {total} parameter "
               "arrays from the init_from export; the encoder from random.")
    dim = int(start["acoustic"]["speaker"]["proj"]["kernel"].shape[0])
    start = dict(start, **{OFFSET: jnp.zeros((dim,), jnp.float32)})
    return base.Setup(start, EncoderStartLoss(graphdef, rest, egraphdef,
                                              erest))

  def export(self, ctx: base.Context, directory: str, params, extra=None,
             info=None) -> str:
    del extra  # MAML and FOMAML have none
    tcfg, ecfg = zeroshot.configs(ctx)
    fc = ctx.data.feature_config
    return zeroshot.export_zeroshot_model(
        directory, model_config=tcfg, encoder_config=ecfg,
        params=fold_offset(params), feature_config=fc, symbols=fc.symbols,
        speakers=ctx.data.speakers,
        adapt=base.adapt_info(ctx.config, ctx.slot),
        info=dict(info or {}, new_voice=self.new_voice),
        model_name=ctx.model_name, method=self.name)


METHODS = tuple(MetaEncoder(a) for a in ALGORITHMS)
