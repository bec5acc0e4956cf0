"""Duration-based Tacotron-style acoustic model (text -> mel) in Flax NNX.

A Non-Attentive Tacotron (Shen et al. 2020) whose durations come from a
learned monotonic aligner trained jointly with it (``metatts.models.aligner``,
Badlani et al. 2021), so no external forced aligner is needed:

* the Tacotron 2 encoder (``tacotron.Encoder``: embedding -> convs ->
  BiLSTM) and the speaker conditioning of ``tacotron.Tacotron`` (a speaker
  table row and/or a projected external speaker vector) concatenated to every
  encoder output;
* an aligner that aligns the symbol embeddings with the target mel frames
  (soft alignment + beta-binomial prior, forward-sum loss, hard durations by
  monotonic alignment search, binarization loss);
* a duration predictor (convs -> linear) regressing ``log(1 + d)`` of the
  aligner's hard durations ``d`` (stop-gradient targets), MSE over symbols;
* upsampling by durations (a length regulator: each frame copies its symbol's
  encoder output, plus the frame's relative position inside the symbol and
  the symbol's log duration, as NAT's positional features); training uses the
  aligner's hard durations, synthesis the predicted ones times ``pace``;
* a decoder (``decoder_type``): 'conv' (parallel conv stack), 'bilstm'
  (conv stack + BiLSTM) or 'autoregressive' (prenet + LSTM over the
  upsampled frames, teacher-forced in training), then the Tacotron 2 post-net.

It is a drop-in for ``tacotron.Tacotron``: the same ``loss(batch,
speaker_vectors)`` and ``infer(...)`` signatures and outputs
(``tacotron.InferenceOutputs``), the same config field names where the
meaning is shared (``reduction_factor`` is fixed at 1), and top-level
attributes naming parameter groups for ``metatts.functional.filter_for``:
``encoder``, ``speaker``, ``aligner``, ``duration``, ``decoder``,
``postnet``.

Changes from the papers, and why: LayerNorm instead of BatchNorm (as in
``tacotron``: the meta-learning inner loop needs a stateless model); a
length regulator with positional features instead of NAT's Gaussian
upsampling (the hard MAS durations are integers, the conv decoder smooths
the joins); the binarization loss weight is an argument so a training loop
can phase it in while ``loss_fn(params, batch)`` stays pure.

References:
  Shen et al. (2020), Non-Attentive Tacotron: Robust and controllable neural
    TTS synthesis including unsupervised duration modeling,
    arXiv:2010.04301.
  Badlani et al. (2021), One TTS alignment to rule them all,
    arXiv:2108.10447.
  Kim et al. (2020), Glow-TTS, arXiv:2005.11129.
  Ren et al. (2019), FastSpeech: fast, robust and controllable text to
    speech, NeurIPS, arXiv:1905.09263 (length regulator).
  Shen et al. (2018), Tacotron 2, arXiv:1712.05884.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from metatts.models import aligner as aligner_lib
from metatts.models import layers
from metatts.models import tacotron
from metatts.types import TTSBatch

Array = jax.Array
InferenceOutputs = tacotron.InferenceOutputs

DECODERS = ("conv", "bilstm", "autoregressive")
_PRENET_STREAM = 1  # stream 2: the encoder (tacotron.encode_text)
_POSTNET_STREAM = 3
_DECODER_STREAM = 4
_NUM_POSITION_FEATURES = 2


@dataclasses.dataclass(frozen=True)
class DurationTacotronConfig:
  """Sizes and loss weights of the duration-based Tacotron.

  Attributes:
    num_symbols: vocabulary size; id 0 is padding.
    num_mels: mel bins M.
    num_speakers: rows of the speaker embedding table.
    speaker_dim: width of the speaker conditioning (0 = none).
    use_speaker_table: learn a ``[num_speakers, speaker_dim]`` table.
    external_speaker_dim: width of an external speaker vector; 0 = none.
    embed_dim: symbol embedding width.
    encoder_dim: encoder conv channels and BiLSTM width (even).
    encoder_num_convs: encoder convolutions.
    encoder_kernel_size: encoder conv taps.
    aligner_dim: width of the aligner's shared space.
    aligner_temperature: scale of the aligner's squared distances.
    prior_scaling: beta-binomial prior scaling.
    blank_logprob: logit of the forward-sum loss's blank class.
    duration_dim: duration predictor channels.
    duration_num_convs: duration predictor convolutions.
    duration_kernel_size: duration predictor taps.
    duration_init_frames: frames per symbol predicted at initialization.
    decoder_type: 'conv', 'bilstm' or 'autoregressive'.
    decoder_dim: decoder channels (conv / BiLSTM output width).
    decoder_num_convs: decoder convolutions.
    decoder_kernel_size: decoder conv taps.
    prenet_dims: prenet widths (autoregressive decoder).
    prenet_dropout: prenet dropout, always on (autoregressive decoder).
    decoder_rnn_dim: LSTM width (autoregressive decoder).
    reduction_factor: frames per decoder step; must be 1 (kept for call
      sites that read it).
    postnet_dim: post-net channels.
    postnet_num_convs: post-net convolutions.
    postnet_kernel_size: post-net taps.
    conv_dropout: dropout in encoder, decoder and post-net convs when seeds
      are given.
    max_tokens: longest accepted symbol sequence.
    max_frames: longest accepted / generated mel (frames).
    dtype: computation dtype name ('float32' or 'bfloat16').
    duration_weight: weight of the duration loss.
    forward_sum_weight: weight of the aligner's forward-sum loss.
    binarization_weight: default weight of the binarization loss (``loss``
      takes a per-call override to phase it in).
    mel_mean, mel_std: the decoder, post-net and aligner work on
      ``(mel - mel_mean) / mel_std`` (the defaults fit natural-log mels with
      a 1e-5 floor: the embedded corpus has mean -4.9, std 2.3), so the
      output layer does not spend thousands of Adam steps moving its bias
      to the mean log-mel.
  """

  num_symbols: int = 64
  num_mels: int = 80
  num_speakers: int = 8
  speaker_dim: int = 16
  use_speaker_table: bool = True
  external_speaker_dim: int = 0
  embed_dim: int = 64
  encoder_dim: int = 64
  encoder_num_convs: int = 3
  encoder_kernel_size: int = 5
  aligner_dim: int = 64
  aligner_temperature: float = 0.0005
  prior_scaling: float = 1.0
  blank_logprob: float = -1.0
  duration_dim: int = 64
  duration_num_convs: int = 2
  duration_kernel_size: int = 3
  duration_init_frames: float = 6.0
  decoder_type: str = "conv"
  decoder_dim: int = 128
  decoder_num_convs: int = 4
  decoder_kernel_size: int = 5
  prenet_dims: Tuple[int, ...] = (64, 64)
  prenet_dropout: float = 0.5
  decoder_rnn_dim: int = 128
  reduction_factor: int = 1
  postnet_dim: int = 64
  postnet_num_convs: int = 5
  postnet_kernel_size: int = 5
  conv_dropout: float = 0.0
  max_tokens: int = 256
  max_frames: int = 1000
  dtype: str = "float32"
  duration_weight: float = 1.0
  forward_sum_weight: float = 1.0
  binarization_weight: float = 0.0
  mel_mean: float = -5.0
  mel_std: float = 2.0


SIZES = {
    "tiny": {},
    "base": dict(embed_dim=256, encoder_dim=256, aligner_dim=80,
                 duration_dim=256, decoder_dim=256, decoder_rnn_dim=512,
                 prenet_dims=(128, 128), postnet_dim=256, speaker_dim=64),
    "full": dict(embed_dim=512, encoder_dim=512, aligner_dim=80,
                 duration_dim=512, decoder_dim=512, decoder_rnn_dim=1024,
                 prenet_dims=(256, 256), postnet_dim=512, speaker_dim=64,
                 decoder_type="bilstm", conv_dropout=0.5),
}


def duration_tacotron_config(size: str = "tiny",
                             **overrides: Any) -> DurationTacotronConfig:
  """Returns the config of a named size with field overrides.

  Args:
    size: 'tiny' (tests, CPU quickstart), 'base' or 'full' (GPU).
    **overrides: any ``DurationTacotronConfig`` field.

  Returns:
    The config.

  Raises:
    ValueError: unknown size or field, or an invalid value.
  """
  if "prenet_dims" in overrides:
    overrides["prenet_dims"] = tuple(overrides["prenet_dims"])
  config = layers.sized_config(DurationTacotronConfig, SIZES, size, overrides,
                               "DurationTacotron")
  _check_config(config)
  return config


def _check_config(c: DurationTacotronConfig) -> None:
  name = "DurationTacotronConfig"
  if c.encoder_dim % 2 or c.decoder_dim % 2:
    raise ValueError(
        f"{name}.encoder_dim={c.encoder_dim} and decoder_dim={c.decoder_dim}"
        " must be even (split over two LSTM directions).")
  if c.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"{name}.dtype={c.dtype!r}; use 'float32' or "
                     "'bfloat16'.")
  if c.reduction_factor != 1:
    raise ValueError(
        f"{name}.reduction_factor={c.reduction_factor}: this model emits one "
        "frame per upsampled position; set reduction_factor=1 (drop it from "
        "the model config).")
  if c.decoder_type not in DECODERS:
    raise ValueError(f"{name}.decoder_type={c.decoder_type!r}; use one of "
                     f"{DECODERS}.")
  if c.mel_std <= 0:
    raise ValueError(f"{name}.mel_std={c.mel_std} must be > 0.")
  if c.duration_init_frames <= 0:
    raise ValueError(f"{name}.duration_init_frames must be > 0.")
  for field in ("num_symbols", "num_mels", "num_speakers", "max_tokens",
                "max_frames", "decoder_num_convs", "duration_num_convs"):
    if getattr(c, field) < 1:
      raise ValueError(f"{name}.{field}={getattr(c, field)} must be >= 1.")


# --------------------------------------------------------------------------
# Upsampling.


def alignment_from_durations(durations: Array, num_frames: int) -> Array:
  """Hard [B, num_frames, L] alignment of integer durations [B, L].

  Frame ``t`` belongs to symbol ``j`` when ``start_j <= t < end_j`` with
  ``end = cumsum(durations)``; frames past the total are zero rows.
  """
  ends = jnp.cumsum(durations, axis=-1)
  starts = ends - durations
  t = jnp.arange(num_frames)[None, :, None]
  return ((t >= starts[:, None, :]) & (t < ends[:, None, :])).astype(
      jnp.float32)


def upsample(memory: Array, hard: Array) -> Array:
  """Length regulator with positional features.

  Args:
    memory: [B, L, D] symbol features.
    hard: [B, T, L] 0/1 alignment (one 1 per valid frame).

  Returns:
    [B, T, D + 2]: the frame's symbol features, its relative position inside
    the symbol ((k + 0.5) / d for the k-th of d frames) and ``log(1 + d) /
    4`` (zero at frames with no symbol).
  """
  durations = jnp.sum(hard, axis=1)  # [B, L]
  starts = jnp.cumsum(durations, -1) - durations
  up = jnp.einsum("btl,bld->btd", hard, memory.astype(jnp.float32))
  frame_start = jnp.einsum("btl,bl->bt", hard, starts)
  frame_dur = jnp.einsum("btl,bl->bt", hard, durations)
  t = jnp.arange(hard.shape[1], dtype=jnp.float32)[None, :]
  valid = frame_dur > 0
  rel = jnp.where(valid, (t - frame_start + 0.5) / jnp.maximum(frame_dur, 1.0),
                  0.0)
  logd = jnp.log1p(frame_dur) / 4.0
  return jnp.concatenate([up, rel[..., None], logd[..., None]], -1)


# --------------------------------------------------------------------------
# Modules.


class DurationPredictor(nnx.Module):
  """Convs -> linear predicting ``log(1 + frames)`` per symbol."""

  def __init__(self, c: DurationTacotronConfig, in_dim: int, *, dtype=None,
               rngs: nnx.Rngs):
    """Builds the predictor from the config and the input width."""
    dims = [in_dim] + [c.duration_dim] * c.duration_num_convs
    self.convs = nnx.List([
        layers.ConvNormBlock(dims[i], dims[i + 1], c.duration_kernel_size,
                             activation="relu", dtype=dtype, rngs=rngs)
        for i in range(c.duration_num_convs)
    ])
    init = math.log1p(c.duration_init_frames)
    self.proj = nnx.Linear(
        dims[-1], 1, dtype=dtype, rngs=rngs,
        kernel_init=nnx.initializers.normal(0.01),
        bias_init=nnx.initializers.constant(init))

  def __call__(self, x: Array, mask: Array) -> Array:
    """[B, L, D] -> [B, L] float32 log-durations (zero at padding)."""
    for conv in self.convs:
      x = conv(x, mask)
    out = self.proj(x)[..., 0].astype(jnp.float32)
    return jnp.where(mask, out, 0.0)


class ParallelDecoder(nnx.Module):
  """Linear -> conv stack (-> BiLSTM) -> linear to mel frames."""

  def __init__(self, c: DurationTacotronConfig, in_dim: int, *, dtype=None,
               rngs: nnx.Rngs):
    """Builds the decoder ('conv' or 'bilstm')."""
    d = c.decoder_dim
    self.inp = nnx.Linear(in_dim, d, dtype=dtype, rngs=rngs)
    self.convs = nnx.List([
        layers.ConvNormBlock(d, d, c.decoder_kernel_size, activation="relu",
                             dtype=dtype, rngs=rngs)
        for _ in range(c.decoder_num_convs)
    ])
    self.lstm = nnx.data(layers.BiLSTM(d, d // 2, dtype=dtype, rngs=rngs)
                         if c.decoder_type == "bilstm" else None)
    self.out = nnx.Linear(d, c.num_mels, dtype=dtype, rngs=rngs)
    self.conv_dropout = c.conv_dropout

  def __call__(self, x: Array, mask: Array, keys: Optional[Array],
               teacher: Optional[Array] = None) -> Array:
    """[B, T, in_dim] -> [B, T, M] float32 (zero at padding)."""
    del teacher
    h = jax.nn.relu(self.inp(x))
    for i, conv in enumerate(self.convs):
      k = None
      if keys is not None:
        k = jax.vmap(lambda kk, i=i: jax.random.fold_in(kk, i))(keys)
      h = h + conv(h, mask, self.conv_dropout, k)
    if self.lstm is not None:
      h = self.lstm(h, mask)
    return layers.apply_mask(self.out(h).astype(jnp.float32), mask)


class AutoregressiveDecoder(nnx.Module):
  """Prenet(previous frame) + upsampled features -> LSTM -> linear."""

  def __init__(self, c: DurationTacotronConfig, in_dim: int, *, dtype=None,
               rngs: nnx.Rngs):
    """Builds the decoder."""
    self.prenet = layers.Prenet(c.num_mels, c.prenet_dims,
                                dropout_rate=c.prenet_dropout, dtype=dtype,
                                rngs=rngs)
    self.rnn = layers.LSTMCell(self.prenet.out_features + in_dim,
                               c.decoder_rnn_dim, dtype=dtype, rngs=rngs)
    self.out = nnx.Linear(c.decoder_rnn_dim + in_dim, c.num_mels, dtype=dtype,
                          rngs=rngs)
    self.m = c.num_mels

  def __call__(self, x: Array, mask: Array, keys: Array,
               teacher: Optional[Array] = None) -> Array:
    """Runs over frames; teacher-forced when ``teacher`` [B, T, M] given.

    Args:
      x: [B, T, in_dim] upsampled features.
      mask: [B, T] valid frames.
      keys: [B] per-utterance prenet keys.
      teacher: optional target frames (training); None = feed back the
        predictions (synthesis).

    Returns:
      [B, T, M] float32 frames (zero at padding).
    """
    b, t, _ = x.shape
    dt = x.dtype

    def step(carry, inp):
      state, prev = carry
      i, xt, tt = inp
      k = jax.vmap(lambda kk: jax.random.fold_in(kk, i))(keys)
      p = self.prenet(prev.astype(dt), k)
      state, h = self.rnn(state, jnp.concatenate([p, xt], -1))
      y = self.out(jnp.concatenate([h.astype(dt), xt], -1)).astype(
          jnp.float32)
      nxt = y if tt is None else tt
      return (state, nxt), y

    xs = jnp.swapaxes(x, 0, 1)
    tf = None if teacher is None else jnp.swapaxes(teacher, 0, 1)
    init = (self.rnn.initial_carry(b), jnp.zeros((b, self.m), jnp.float32))
    if tf is None:
      _, ys = jax.lax.scan(lambda c, inp: step(c, (inp[0], inp[1], None)),
                           init, (jnp.arange(t), xs))
    else:
      _, ys = jax.lax.scan(step, init, (jnp.arange(t), xs, tf))
    return layers.apply_mask(jnp.swapaxes(ys, 0, 1), mask)


class DurationTacotron(nnx.Module):
  """Duration-based Tacotron (see the module docstring).

  Top-level attributes name the parameter groups used by
  ``metatts.functional.filter_for``: ``encoder``, ``speaker``, ``aligner``,
  ``duration``, ``decoder``, ``postnet``.
  """

  # ``loss`` returns the teacher-forced post-net mel in its aux
  # (``aux["mel_after"]``): what the multitask method's speaker head pools.
  LOSS_AUX_MEL = True

  def __init__(self, config: DurationTacotronConfig, *, rngs: nnx.Rngs):
    """Builds the model.

    Args:
      config: sizes (see ``duration_tacotron_config``).
      rngs: parameter initialization keys (``nnx.Rngs(seed)``).
    """
    _check_config(config)
    self.config = config
    front = tacotron.text_side(config, rngs)
    dtype = self.dtype = front.dtype
    self.speaker_width = front.speaker_width
    memory_dim = config.encoder_dim + front.speaker_width
    self.encoder = front.encoder
    self.speaker = front.speaker
    self.aligner = aligner_lib.Aligner(
        config.embed_dim, config.num_mels, config.aligner_dim,
        temperature=config.aligner_temperature,
        prior_scaling=config.prior_scaling, dtype=dtype, rngs=rngs)
    self.duration = DurationPredictor(config, memory_dim, dtype=dtype,
                                      rngs=rngs)
    dec_in = memory_dim + _NUM_POSITION_FEATURES
    if config.decoder_type == "autoregressive":
      self.decoder = AutoregressiveDecoder(config, dec_in, dtype=dtype,
                                           rngs=rngs)
    else:
      self.decoder = ParallelDecoder(config, dec_in, dtype=dtype, rngs=rngs)
    self.postnet = tacotron.Postnet(config, dtype=dtype, rngs=rngs)

  # ---- shared pieces ------------------------------------------------------

  def encode(self, tokens: Array, token_lengths: Array, speaker_ids: Array,
             speaker_vectors: Optional[Array] = None,
             keys: Optional[Array] = None) -> Tuple[Array, Array]:
    """Encoder outputs joined with the speaker conditioning:
    ``tacotron.encode_text`` on this model's encoder and speaker parts."""
    return tacotron.encode_text(self.encoder, self.speaker, tokens,
                                token_lengths, speaker_ids, speaker_vectors,
                                keys)

  def _decode(self, memory: Array, hard: Array, frame_mask: Array,
              keys: Array, conv_keys: Optional[Array],
              teacher: Optional[Array]) -> Tuple[Array, Array]:
    c = self.config
    x = upsample(memory, hard).astype(self.dtype or jnp.float32)
    if teacher is not None:
      teacher = (teacher - c.mel_mean) / c.mel_std
    if c.decoder_type == "autoregressive":
      dec_keys = tacotron._fold(keys, _PRENET_STREAM)  # pylint: disable=protected-access
    else:
      dec_keys = (None if conv_keys is None else
                  tacotron._fold(conv_keys, _DECODER_STREAM))  # pylint: disable=protected-access
    y = self.decoder(x, frame_mask, dec_keys, teacher)
    post_keys = (None if conv_keys is None else
                 tacotron._fold(conv_keys, _POSTNET_STREAM))  # pylint: disable=protected-access
    y_after = y + self.postnet(y, frame_mask, post_keys)
    mel_before = layers.apply_mask(y * c.mel_std + c.mel_mean, frame_mask)
    mel_after = layers.apply_mask(y_after * c.mel_std + c.mel_mean,
                                  frame_mask)
    return mel_before, mel_after

  def align(self, tokens: Array, token_lengths: Array, mels: Array,
            mel_lengths: Array) -> aligner_lib.AlignerOutputs:
    """The aligner's soft / hard alignment and durations of (text, mel).

    Args:
      tokens: int [B, L].
      token_lengths: int [B].
      mels: [B, T, M] log-mel frames (natural log, as in the batches).
      mel_lengths: int [B].

    Returns:
      ``aligner.AlignerOutputs`` (durations sum to ``mel_lengths``).
    """
    c = self.config
    tmask = layers.length_mask(token_lengths, tokens.shape[1])
    fmask = layers.length_mask(mel_lengths, mels.shape[1])
    emb = self.encoder.embedding(jnp.where(tmask, tokens, 0))
    emb = layers.apply_mask(emb, tmask)
    x = layers.apply_mask((mels.astype(jnp.float32) - c.mel_mean) / c.mel_std,
                          fmask)
    return self.aligner(emb, token_lengths, x, mel_lengths)

  # ---- training -----------------------------------------------------------

  def loss(self, batch: TTSBatch, speaker_vectors: Optional[Array] = None,
           *, binarization_weight: Optional[Array] = None
           ) -> Tuple[Array, dict]:
    """Total training loss and its terms.

    ``loss = L1(before) + L1(after) + L2(before) + L2(after)
    + duration_weight * MSE(log(1 + d)) + forward_sum_weight * FS
    + binarization_weight * BIN``; mel terms are means over valid frames and
    bins, the duration MSE over valid symbols (targets: the aligner's hard
    MAS durations, gradient stopped). The decoder is trained on the hard
    alignment, so the mel loss does not train the aligner.

    Args:
      batch: a ``TTSBatch``.
      speaker_vectors: optional [B, external_speaker_dim].
      binarization_weight: scalar (may be traced) overriding
        ``config.binarization_weight``, to phase the binarization loss in.

    Returns:
      (scalar float32 loss, aux dict with 'l1_before', 'l1_after',
      'l2_before', 'l2_after', 'duration', 'forward_sum', 'binarization',
      'mel_loss', 'alignment' [B, T, L] (the hard alignment) and
      'mel_after' [B, T, M], the post-net mel of the teacher-forced decoder
      (what the ``multitask`` method's speaker head pools)).
    """
    c = self.config
    b, t, _ = batch.mels.shape
    mels = batch.mels.astype(jnp.float32)
    frame_mask = layers.length_mask(batch.mel_lengths, t)
    mels = layers.apply_mask(mels, frame_mask)
    keys = tacotron._example_keys(batch.seeds, b)  # pylint: disable=protected-access
    conv_keys = keys if (batch.seeds is not None and
                         c.conv_dropout > 0) else None
    memory, tmask = self.encode(batch.tokens, batch.token_lengths,
                                batch.speaker_ids, speaker_vectors, conv_keys)
    al = self.align(batch.tokens, batch.token_lengths, mels,
                    batch.mel_lengths)
    hard = jax.lax.stop_gradient(al.hard)
    mel_before, mel_after = self._decode(memory, hard, frame_mask, keys,
                                         conv_keys, mels)
    fm = frame_mask[..., None]
    err_b, err_a = mel_before - mels, mel_after - mels
    terms = {
        "l1_before": tacotron.masked_mean(jnp.abs(err_b), fm),
        "l1_after": tacotron.masked_mean(jnp.abs(err_a), fm),
        "l2_before": tacotron.masked_mean(jnp.square(err_b), fm),
        "l2_after": tacotron.masked_mean(jnp.square(err_a), fm),
    }
    mel_loss = sum(terms.values())
    log_pred = self.duration(memory.astype(self.dtype or jnp.float32), tmask)
    target = jax.lax.stop_gradient(
        jnp.log1p(al.durations.astype(jnp.float32)))
    terms["duration"] = tacotron.masked_mean(jnp.square(log_pred - target),
                                             tmask)
    terms["forward_sum"] = aligner_lib.forward_sum_loss(
        al.log_soft, batch.token_lengths, batch.mel_lengths, c.blank_logprob)
    terms["binarization"] = aligner_lib.binarization_loss(hard, al.soft)
    w_bin = (c.binarization_weight if binarization_weight is None else
             binarization_weight)
    total = (mel_loss + c.duration_weight * terms["duration"] +
             c.forward_sum_weight * terms["forward_sum"] +
             w_bin * terms["binarization"])
    aux = dict(terms)
    aux["mel_loss"] = mel_loss
    aux["alignment"] = hard
    aux["mel_after"] = mel_after  # the teacher-forced output (multitask)
    return total, aux

  # ---- inference ----------------------------------------------------------

  def predict_durations(self, memory: Array, mask: Array, pace: Array = 1.0,
                        min_frames: Optional[Array] = None
                        ) -> Tuple[Array, Array]:
    """Integer durations from the predictor.

    ``d = max(exp(pred) - 1, 0) * pace`` per symbol; when ``min_frames`` is
    given and the total is below ``min_frames + 1``, the durations are
    stretched (or, if all are zero, spread evenly) to that total; the
    symbol boundaries are the rounded cumulative sums.

    Args:
      memory: [B, L, D] encoder (+ speaker) outputs.
      mask: [B, L] valid symbols.
      pace: scalar or [B] duration multiplier (> 1 slower / longer).
      min_frames: optional int [B].

    Returns:
      (int32 [B, L] durations, float32 [B] unstretched predicted totals).
    """
    log_pred = self.duration(memory.astype(self.dtype or jnp.float32), mask)
    pace = jnp.asarray(pace, jnp.float32)
    d = jnp.maximum(jnp.expm1(log_pred), 0.0) * jnp.reshape(
        pace, (-1, 1) if pace.ndim else ())
    d = jnp.where(mask, d, 0.0)
    raw_total = jnp.sum(jnp.round(jnp.cumsum(d, -1))[:, -1:], -1)
    if min_frames is not None:
      want = jnp.asarray(min_frames, jnp.float32) + 1.0
      total = jnp.sum(d, -1)
      n = jnp.maximum(jnp.sum(mask, -1).astype(jnp.float32), 1.0)
      even = jnp.where(mask, (want / n)[:, None], 0.0)
      scale = jnp.where(total > 0, want / jnp.maximum(total, 1e-6), 1.0)
      stretched = jnp.where((total > 0)[:, None], d * scale[:, None], even)
      d = jnp.where((total < want)[:, None] & (want > 1.0)[:, None],
                    stretched, d)
    ends = jnp.round(jnp.cumsum(d, -1))
    durations = jnp.diff(ends, axis=-1, prepend=0.0)
    return durations.astype(jnp.int32), raw_total

  def _infer(self, tokens, token_lengths, speaker_ids, max_frames, seeds,
             speaker_vectors, min_frames, pace):
    c = self.config
    max_frames = c.max_frames if max_frames is None else int(max_frames)
    b = tokens.shape[0]
    if speaker_ids is None:
      speaker_ids = jnp.zeros((b,), jnp.int32)
    keys = tacotron._example_keys(seeds, b)  # pylint: disable=protected-access
    memory, tmask = self.encode(tokens, token_lengths, speaker_ids,
                                speaker_vectors, None)
    if min_frames is not None:
      min_frames = jnp.broadcast_to(jnp.asarray(min_frames, jnp.int32), (b,))
    durations, raw_total = self.predict_durations(memory, tmask, pace,
                                                  min_frames)
    hard = alignment_from_durations(durations, max_frames)
    lengths = jnp.minimum(jnp.sum(durations, -1), max_frames).astype(
        jnp.int32)
    frame_mask = layers.length_mask(lengths, max_frames)
    mel_before, mel = self._decode(memory, hard, frame_mask, keys, None, None)
    stop = (jnp.arange(max_frames)[None, :] == (lengths - 1)[:, None])
    return InferenceOutputs(mel, mel_before, lengths, hard,
                            stop.astype(jnp.float32)), raw_total

  def infer(self, tokens: Array, token_lengths: Array,
            speaker_ids: Optional[Array] = None, *,
            max_frames: Optional[int] = None,
            seeds: Optional[Array] = None,
            speaker_vectors: Optional[Array] = None,
            stop_threshold: float = 0.5,
            min_frames: Optional[Array] = None,
            pace: Any = 1.0) -> InferenceOutputs:
    """Synthesis from predicted durations (jittable; fixed shapes).

    Args:
      tokens: int [B, L].
      token_lengths: int [B].
      speaker_ids: int [B] (zeros if None).
      max_frames: frame budget (``config.max_frames`` if None); static. An
        utterance whose durations add up to more is cut at ``max_frames``
        (``synthesize`` raises instead).
      seeds: optional uint32 [B] (prenet dropout of the autoregressive
        decoder).
      speaker_vectors: optional [B, external_speaker_dim].
      stop_threshold: unused (there is no stop token); kept for the
        ``Tacotron`` signature.
      min_frames: optional int [B] (traced): the utterance gets at least
        ``min_frames + 1`` frames (its durations are stretched), as a
        ``Tacotron`` ignoring stops before ``min_frames`` would.
      pace: scalar or [B] duration multiplier (traced): 2.0 speaks twice as
        slowly, 0.5 twice as fast.

    Returns:
      ``tacotron.InferenceOutputs`` with ``T = max_frames``: ``alignment``
      is the [B, T, L] hard alignment of the predicted durations,
      ``stop_probs`` 1 at each utterance's last frame.
    """
    del stop_threshold
    out, _ = self._infer(tokens, token_lengths, speaker_ids, max_frames,
                         seeds, speaker_vectors, min_frames, pace)
    return out


@functools.partial(nnx.jit, static_argnames=("max_frames",))
def _infer_jit(model, tokens, token_lengths, speaker_ids, seeds,
               speaker_vectors, min_frames, pace, max_frames):
  return model._infer(tokens, token_lengths, speaker_ids, max_frames, seeds,  # pylint: disable=protected-access
                      speaker_vectors, min_frames, pace)


def synthesize(model: DurationTacotron, tokens, token_lengths,
               speaker_ids=None, *, max_frames: Optional[int] = None,
               seeds=None, speaker_vectors=None,
               stop_threshold: float = 0.5, min_frames=None,
               pace: float = 1.0) -> InferenceOutputs:
  """Public inference entry: host-side checks, then jitted ``infer``.

  Args:
    model: a ``DurationTacotron``.
    tokens: int [B, L] symbol ids (0 = padding).
    token_lengths: int [B].
    speaker_ids: optional int [B] (zeros if None).
    max_frames: frame budget (default ``config.max_frames``).
    seeds: optional uint32 [B].
    speaker_vectors: optional [B, external_speaker_dim].
    stop_threshold: unused (kept for the ``tacotron.synthesize`` signature).
    min_frames: optional int [B]: at least ``min_frames + 1`` frames.
    pace: duration multiplier (> 0); a different value does not recompile.

  Returns:
    ``InferenceOutputs``; trim ``mel[b, :lengths[b]]``.

  Raises:
    ValueError: empty text (no phonemes), unknown symbols, too long text, a
      duration prediction of zero frames for every symbol, an utterance
      longer than ``max_frames``, bad ``pace`` / ``min_frames``.
  """
  del stop_threshold
  c = model.config
  tok = np.asarray(tokens)
  lens = np.asarray(token_lengths)
  if tok.size == 0 or (lens.size and np.all(lens == 0)) or lens.size == 0:
    raise ValueError(
        "The text has no symbols (no phonemes after the text frontend); "
        "pass text with at least one speakable word.")
  tokens = jnp.asarray(tok, jnp.int32)
  token_lengths = jnp.asarray(lens, jnp.int32)
  tacotron.validate_inputs(c, tokens, token_lengths, speaker_ids,
                           speaker_vectors)
  pace_arr = np.asarray(pace, np.float32)
  if not np.all(np.isfinite(pace_arr)) or np.any(pace_arr <= 0):
    raise ValueError(f"pace={pace} must be a positive number (1.0 = the "
                     "predicted speed, 2.0 = twice as slow).")
  max_frames, min_frames, speaker_ids = tacotron.check_synthesis_args(
      c, tokens, max_frames, min_frames, speaker_ids)
  out, raw_total = _infer_jit(model, tokens, token_lengths,
                              jnp.asarray(speaker_ids, jnp.int32), seeds,
                              speaker_vectors, min_frames,
                              jnp.asarray(pace_arr), int(max_frames))
  raw_total = np.asarray(raw_total)
  zero = np.nonzero(raw_total <= 0)[0].tolist()
  if zero:
    raise ValueError(
        f"The duration predictor gave zero frames to every symbol of batch "
        f"entries {zero}: the model is untrained or broken for this text/"
        "speaker, or pace is too small. Train longer or raise pace.")
  long = np.nonzero(raw_total > int(max_frames))[0].tolist()
  if long:
    raise ValueError(
        f"Batch entries {long} need {raw_total[long].astype(int).tolist()} "
        f"frames, more than max_frames={int(max_frames)}; lower pace or split "
        "the text into shorter sentences.")
  return out
