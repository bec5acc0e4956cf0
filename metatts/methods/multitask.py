"""``multitask``: pre-training with a speaker-classification head.

The model is ``metatts.models.multitask.MultiTaskModel``: the acoustic model
is the shared trunk; a mel head (the acoustic model's own loss) and a
speaker-classification head (``PooledClassifierHead``: a linear softmax
classifier over the training speakers applied to the time-average of the
post-net mel over valid frames, so the auxiliary task asks the *output* to
carry the speaker's identity) are trained together with
``MultiTaskObjective``: ``L_mel + w * L_speaker + lambda * R(trunk)`` with an
L2 ``R`` (``config.train.multitask_weight`` / ``multitask_l2``). Only the
trunk is exported; like ``transfer``, the new-voice row is then the mean of
the trained rows.

References:
  R. Caruana, "Multitask Learning", Machine Learning 28, 1997.
  S. Ruder, "An Overview of Multi-Task Learning in Deep Neural Networks",
    arXiv:1706.05098, 2017.
"""

from __future__ import annotations

from flax import nnx

from metatts import functional
from metatts.methods import base
from metatts.models import layers
from metatts.models import multitask as mt


class AcousticTrunk(nnx.Module):
  """The shared trunk: the acoustic model's loss and its generated mel.

  ``trunk(batch) -> {"loss": (loss, aux), "mel": (mel_after [B, T, M],
  mask [B, T])}``. The mel is the ``mel_after`` of the loss's aux when the
  model puts it there (the duration Tacotron: no second forward pass), else
  that of the model's teacher-forced forward pass ``model(batch)`` (the
  attention Tacotron).
  """

  def __init__(self, acoustic: nnx.Module):
    self.acoustic = acoustic

  def __call__(self, batch):
    loss, aux = self.acoustic.loss(batch)
    if isinstance(aux, dict) and "mel_after" in aux:
      aux = dict(aux)
      mel = aux.pop("mel_after")
    else:
      mel = self.acoustic(batch).mel_after
    mask = layers.length_mask(batch.mel_lengths, mel.shape[1])
    return {"loss": (loss, aux), "mel": (mel, mask)}


class SpeakerHead(nnx.Module):
  """Speaker logits ``[B, num_speakers]`` from the trunk's generated mel."""

  def __init__(self, num_mels: int, num_speakers: int, *, rngs: nnx.Rngs):
    self.classifier = mt.PooledClassifierHead(num_mels, num_speakers,
                                              rngs=rngs)

  def __call__(self, features):
    return self.classifier(features["mel"])


def mel_head(features):
  """The mel task's head: the acoustic model's ``(loss, aux)``."""
  return features["loss"]


def _mel_loss(output, batch):
  del batch
  return output


def _speaker_loss(logits, batch):
  return mt.classification_loss(logits, batch.speaker_ids)


def objective(weight: float, l2: float) -> mt.MultiTaskObjective:
  """``L_mel + weight * CE(speaker) + l2 * sum(trunk params ** 2)``."""
  return mt.MultiTaskObjective(
      task_losses={"mel": _mel_loss, "speaker": _speaker_loss},
      weights={"mel": 1.0, "speaker": float(weight)}, kind="l2",
      reg_weight=float(l2))


def flat_loss(objective_fn):
  """``(model, batch) -> (loss, aux)`` with the mel aux plus speaker_ce."""

  def loss(model, batch):
    total, aux = objective_fn(model, batch)
    return total, dict(aux["aux/mel"], speaker_ce=aux["loss/speaker"])

  return loss


class MultiTask(base.Method):
  name = "multitask"
  learner_name = "pretrain"
  new_voice = "mean_row"

  def setup(self, ctx: base.Context, params) -> base.Setup:
    t = ctx.config.train
    acoustic = functional.merge(ctx.graphdef, params, ctx.rest)
    if not callable(acoustic) and not getattr(acoustic, "LOSS_AUX_MEL",
                                               False):
      raise ValueError(
          f"config.model.name={ctx.model_name!r}: the multitask method pools "
          "the mel of the model's teacher-forced forward pass "
          f"(model(batch).mel_after or the loss's aux['mel_after']), which "
          f"{type(acoustic).__name__} has neither of; give the model one.")
    model = mt.MultiTaskModel(AcousticTrunk(acoustic), {
        "mel": mel_head,
        "speaker": SpeakerHead(ctx.data.feature_config.n_mels,
                               len(ctx.data.speakers),
                               rngs=nnx.Rngs(int(ctx.config.seed) + 17))})
    graphdef, start, rest = functional.split(model)
    loss = flat_loss(objective(t.multitask_weight, t.multitask_l2))
    return base.Setup(start, functional.make_loss_fn(graphdef, rest, loss))

  def trained_params(self, ctx: base.Context, params):
    return super().trained_params(ctx, params["trunk"]["acoustic"])


METHOD = MultiTask()
