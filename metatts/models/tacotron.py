"""Tacotron 2-style acoustic model (text -> mel) in Flax NNX.

Architecture (Shen et al. 2018, with the changes listed below):

* symbol embedding -> 3 x (conv 5 -> LayerNorm -> ReLU) -> bidirectional LSTM
  encoder;
* speaker conditioning: a speaker embedding table and/or an external speaker
  vector (e.g. from ``metatts.models.speaker_encoder``) projected to
  ``speaker_dim`` (the two are summed when both exist) and concatenated to
  every encoder output (as in Jia et al. 2018);
* location-sensitive attention (Chorowski et al. 2015) whose location
  features are a convolution of the previous and the cumulative attention
  weights;
* decoder: prenet (dropout always on) -> attention LSTM -> attention ->
  decoder LSTM -> linear projections to ``r`` mel frames and ``r`` stop
  logits per step (reduction factor ``r``, Wang et al. 2017), run as one
  ``jax.lax.scan`` (teacher forcing during training);
* 5-conv post-net predicting a residual added to the decoder mel.

Changes from the paper, and why:

* LayerNorm instead of BatchNorm in the encoder convs and post-net: batch
  statistics would need mutable running averages inside the meta-learning
  inner loop (whose ``loss_fn(params, batch)`` must be pure), would differ
  between the 1-10 clip support sets and the query sets, and would mix
  padding and other speakers into an utterance's features. LayerNorm is
  per frame and stateless.
* The zoneout of the decoder LSTMs is not used; dropout in the encoder convs
  and post-net (0.5 in the paper) is used only when ``batch.seeds`` is given
  and ``conv_dropout > 0`` (0 in the ``tiny`` and ``base`` sizes).
* A guided-attention loss (Tachibana et al. 2018) is added so that alignment
  is learned in few steps.

Randomness: the prenet dropout is always on (training and inference, as in
the paper). Its keys come from ``batch.seeds`` (``uint32 [B]``, one key per
utterance via ``jax.random.key(seed)``) when given; when ``seeds`` is None
they are derived from the fixed key ``jax.random.key(DEFAULT_DROPOUT_SEED)``
folded with the example index, so a forward pass is a deterministic function
of its inputs (the same dropout masks at every call: pass fresh seeds while
training). Each decoder step folds in its step index.

References:
  Shen et al. (2018), Natural TTS Synthesis by Conditioning WaveNet on Mel
    Spectrogram Predictions, ICASSP, arXiv:1712.05884.
  Wang et al. (2017), Tacotron: Towards end-to-end speech synthesis,
    arXiv:1703.10135.
  Chorowski et al. (2015), Attention-based models for speech recognition,
    NeurIPS, arXiv:1506.07503.
  Tachibana et al. (2018), Efficiently trainable text-to-speech system based
    on deep convolutional networks with guided attention, ICASSP,
    arXiv:1710.08969.
  Jia et al. (2018), Transfer learning from speaker verification to
    multispeaker text-to-speech synthesis, NeurIPS, arXiv:1806.04558.
  Ba et al. (2016), Layer normalization, arXiv:1607.06450.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from metatts.models import layers
# The synthesis-length rule lives with synthesis (a light module); kept here
# under its documented names.
from metatts.synthesis import SYNTH_MIN_SEC_PER_SYMBOL  # pylint: disable=unused-import
from metatts.synthesis import min_synthesis_frames  # pylint: disable=unused-import
from metatts.types import TTSBatch

Array = jax.Array

DEFAULT_DROPOUT_SEED = 0
# Sub-stream ids folded into each utterance key.
_PRENET_STREAM = 1
_ENCODER_STREAM = 2
_POSTNET_STREAM = 3


@dataclasses.dataclass(frozen=True)
class TacotronConfig:
  """Sizes and loss weights of the Tacotron-style model.

  Attributes:
    num_symbols: vocabulary size; id 0 is padding.
    num_mels: mel bins M.
    num_speakers: rows of the speaker embedding table.
    speaker_dim: width of the speaker conditioning joined to the encoder
      outputs (0 = no speaker conditioning).
    use_speaker_table: learn a ``[num_speakers, speaker_dim]`` table indexed
      by ``speaker_ids``.
    external_speaker_dim: width of an external speaker vector (e.g. from a
      speaker encoder) projected to ``speaker_dim``; 0 = none.
    embed_dim: symbol embedding width.
    encoder_dim: encoder conv channels and BiLSTM output width (even).
    encoder_num_convs: encoder convolutions (3 in the paper).
    encoder_kernel_size: encoder conv taps (5).
    attention_dim: attention hidden width (128).
    location_filters: location-feature conv filters (32).
    location_kernel_size: location-feature conv taps (31).
    prenet_dims: prenet widths ((256, 256)).
    prenet_dropout: prenet dropout, always on (0.5).
    attention_rnn_dim: first decoder LSTM width (1024).
    decoder_rnn_dim: second decoder LSTM width (1024).
    reduction_factor: frames emitted per decoder step r.
    postnet_dim: post-net channels (512).
    postnet_num_convs: post-net convolutions (5).
    postnet_kernel_size: post-net taps (5).
    conv_dropout: dropout in encoder convs and post-net when seeds given.
    max_tokens: longest accepted symbol sequence.
    max_frames: longest accepted / generated mel (frames).
    dtype: computation dtype name ('float32' or 'bfloat16'); params stay
      float32.
    stop_pos_weight: weight of the positive (stop) class in the stop BCE.
    stop_weight: weight of the stop loss in the total.
    guided_attention_g: width g of the guided-attention penalty (0.2).
    guided_attention_weight: weight of the guided-attention loss.
  """

  num_symbols: int = 64
  num_mels: int = 80
  num_speakers: int = 8
  speaker_dim: int = 16
  use_speaker_table: bool = True
  external_speaker_dim: int = 0
  embed_dim: int = 32
  encoder_dim: int = 32
  encoder_num_convs: int = 3
  encoder_kernel_size: int = 5
  attention_dim: int = 32
  location_filters: int = 8
  location_kernel_size: int = 7
  prenet_dims: Tuple[int, ...] = (32, 32)
  prenet_dropout: float = 0.5
  attention_rnn_dim: int = 64
  decoder_rnn_dim: int = 64
  reduction_factor: int = 2
  postnet_dim: int = 32
  postnet_num_convs: int = 5
  postnet_kernel_size: int = 5
  conv_dropout: float = 0.0
  max_tokens: int = 256
  max_frames: int = 1000
  dtype: str = "float32"
  stop_pos_weight: float = 5.0
  stop_weight: float = 1.0
  guided_attention_g: float = 0.2
  guided_attention_weight: float = 1.0


SIZES = {
    "tiny": {},
    "base": dict(
        embed_dim=256, encoder_dim=256, attention_dim=128, location_filters=32,
        location_kernel_size=31, prenet_dims=(128, 128),
        attention_rnn_dim=512, decoder_rnn_dim=512, postnet_dim=256,
        speaker_dim=64, reduction_factor=2),
    "full": dict(
        embed_dim=512, encoder_dim=512, attention_dim=128, location_filters=32,
        location_kernel_size=31, prenet_dims=(256, 256),
        attention_rnn_dim=1024, decoder_rnn_dim=1024, postnet_dim=512,
        speaker_dim=64, reduction_factor=1, conv_dropout=0.5),
}


def tacotron_config(size: str = "tiny", **overrides: Any) -> TacotronConfig:
  """Returns the config of a named size with field overrides.

  Args:
    size: 'tiny' (tests, CPU quickstart), 'base' (hours on a CPU) or 'full'
      (the sizes of Shen et al. 2018, for GPUs).
    **overrides: any ``TacotronConfig`` field, e.g. ``num_mels=80``.

  Returns:
    The config.

  Raises:
    ValueError: unknown size or field.
  """
  if "prenet_dims" in overrides:
    overrides["prenet_dims"] = tuple(overrides["prenet_dims"])
  config = layers.sized_config(TacotronConfig, SIZES, size, overrides, "Tacotron")
  _check_config(config)
  return config


def _check_config(c: TacotronConfig) -> None:
  if c.encoder_dim % 2:
    raise ValueError(
        f"TacotronConfig.encoder_dim={c.encoder_dim} must be even (it is "
        "split over the two LSTM directions).")
  if c.dtype not in ("float32", "bfloat16"):
    raise ValueError(
        f"TacotronConfig.dtype={c.dtype!r}; use 'float32' or 'bfloat16'.")
  if c.reduction_factor < 1:
    raise ValueError(
        f"TacotronConfig.reduction_factor={c.reduction_factor} must be >= 1.")
  for name in ("num_symbols", "num_mels", "num_speakers", "max_tokens",
               "max_frames"):
    if getattr(c, name) < 1:
      raise ValueError(f"TacotronConfig.{name}={getattr(c, name)} must be >= 1.")


class TacotronOutputs(NamedTuple):
  """Teacher-forced forward pass (S = ceil(T / r) decoder steps)."""

  mel_before: Array  # float32 [B, S * r, M]  decoder mel (zero past length)
  mel_after: Array  # float32 [B, S * r, M]   after the post-net residual
  stop_logits: Array  # float32 [B, S * r]    one logit per frame
  alignment: Array  # float32 [B, S, L]       attention weights per step


class InferenceOutputs(NamedTuple):
  """Autoregressive synthesis (S_max = ceil(max_frames / r) steps)."""

  mel: Array  # float32 [B, S_max * r, M]  post-net mel, zero past lengths
  mel_before: Array  # float32 [B, S_max * r, M]  decoder mel (pre post-net)
  lengths: Array  # int32 [B]              generated frames per utterance
  alignment: Array  # float32 [B, S_max, L]  zero after the stop step
  stop_probs: Array  # float32 [B, S_max * r]


# --------------------------------------------------------------------------
# Host-side validation (call outside jit).


def _concrete(x) -> Optional[np.ndarray]:
  if x is None or isinstance(x, jax.core.Tracer):
    return None
  return np.asarray(x)


def validate_inputs(config: TacotronConfig, tokens, token_lengths,
                    speaker_ids=None, speaker_vectors=None) -> None:
  """Checks text inputs on the host; raises ValueError naming the limit.

  Args:
    config: model config.
    tokens: int [B, L] symbol ids (0 = padding).
    token_lengths: int [B].
    speaker_ids: optional int [B].
    speaker_vectors: optional float [B, external_speaker_dim].

  Raises:
    ValueError: unknown symbols, empty or over-long inputs, bad speakers.
  """
  tok = _concrete(tokens)
  lens = _concrete(token_lengths)
  if tok is None or lens is None:
    return  # traced: cannot check values
  if tok.ndim != 2:
    raise ValueError(
        f"tokens must have shape [B, L]; got shape {tok.shape}. Add a batch "
        "axis (tokens[None]) for a single utterance.")
  if lens.shape != (tok.shape[0],):
    raise ValueError(
        f"token_lengths must have shape [B]={tok.shape[0]}; got {lens.shape}.")
  if np.any(lens <= 0):
    bad = np.nonzero(lens <= 0)[0].tolist()
    raise ValueError(
        f"Zero-length text at batch entries {bad}: every utterance needs at "
        "least 1 symbol. Drop empty texts before batching.")
  if np.any(lens > tok.shape[1]):
    raise ValueError(
        f"token_lengths {lens.tolist()} exceed the padded token axis "
        f"L={tok.shape[1]}; pad tokens to the longest length.")
  if np.any(lens > config.max_tokens):
    raise ValueError(
        f"Text of {int(lens.max())} symbols exceeds the maximum "
        f"max_tokens={config.max_tokens}; split the text or raise "
        "TacotronConfig.max_tokens.")
  valid = np.arange(tok.shape[1])[None, :] < lens[:, None]
  bad = valid & ((tok < 0) | (tok >= config.num_symbols))
  if np.any(bad):
    ids = sorted(set(tok[bad].tolist()))
    raise ValueError(
        f"Unknown symbol ids {ids[:10]}: ids must lie in [0, "
        f"num_symbols={config.num_symbols}). Use the text frontend that "
        "matches the model's symbol set.")
  spk = _concrete(speaker_ids)
  if spk is not None and config.use_speaker_table and config.speaker_dim > 0:
    if np.any((spk < 0) | (spk >= config.num_speakers)):
      raise ValueError(
          f"speaker_ids {sorted(set(spk.tolist()))[:10]} out of range [0, "
          f"num_speakers={config.num_speakers}); raise "
          "TacotronConfig.num_speakers or remap the speakers.")
  if config.external_speaker_dim > 0 and config.speaker_dim > 0:
    if speaker_vectors is None:
      raise ValueError(
          f"This model expects speaker_vectors of shape [B, "
          f"{config.external_speaker_dim}] (external_speaker_dim); pass the "
          "speaker encoder's output.")
    shape = tuple(np.shape(speaker_vectors))
    if shape != (tok.shape[0], config.external_speaker_dim):
      raise ValueError(
          f"speaker_vectors has shape {shape}; expected "
          f"[B={tok.shape[0]}, external_speaker_dim="
          f"{config.external_speaker_dim}].")


def validate_batch(config: TacotronConfig, batch: TTSBatch,
                   speaker_vectors=None) -> None:
  """Host-side checks of a training batch (call outside jit).

  Args:
    config: model config.
    batch: the batch.
    speaker_vectors: optional [B, external_speaker_dim].

  Raises:
    ValueError: naming the bad field and the limit.
  """
  validate_inputs(config, batch.tokens, batch.token_lengths,
                  batch.speaker_ids, speaker_vectors)
  mels = np.shape(batch.mels)
  if len(mels) != 3:
    raise ValueError(f"mels must have shape [B, T, M]; got {mels}.")
  if mels[-1] != config.num_mels:
    raise ValueError(
        f"mels have {mels[-1]} mel bins but the model expects "
        f"num_mels={config.num_mels}; compute features with the same mel "
        f"settings or build the model with num_mels={mels[-1]}.")
  lens = _concrete(batch.mel_lengths)
  if lens is None:
    return
  if np.any(lens <= 0):
    raise ValueError(
        f"Zero-length mel at batch entries {np.nonzero(lens <= 0)[0].tolist()};"
        " drop empty clips before batching.")
  if np.any(lens > mels[1]):
    raise ValueError(
        f"mel_lengths {lens.tolist()} exceed the padded frame axis T={mels[1]}.")
  if np.any(lens > config.max_frames):
    raise ValueError(
        f"Mel of {int(lens.max())} frames exceeds the maximum max_frames="
        f"{config.max_frames}; trim the clip or raise "
        "TacotronConfig.max_frames.")


# --------------------------------------------------------------------------
# Losses.


def masked_mean(x: Array, mask: Array) -> Array:
  """Mean of ``x`` over entries where ``mask`` (broadcast to x) is 1."""
  mask = jnp.broadcast_to(mask, x.shape).astype(jnp.float32)
  return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def guided_attention_weights(token_lengths: Array, step_lengths: Array,
                             num_steps: int, num_tokens: int,
                             g: float = 0.2) -> Tuple[Array, Array]:
  """Penalty ``W[t, n] = 1 - exp(-(n/N - t/T)^2 / (2 g^2))`` (Tachibana 2018).

  Args:
    token_lengths: int [B] valid symbols N.
    step_lengths: int [B] valid decoder steps T.
    num_steps: padded decoder axis S.
    num_tokens: padded symbol axis L.
    g: width.

  Returns:
    (W [B, S, L], mask [B, S, L] float32 of valid (t, n) pairs).
  """
  n = jnp.arange(num_tokens, dtype=jnp.float32)[None, None, :]
  t = jnp.arange(num_steps, dtype=jnp.float32)[None, :, None]
  nn = token_lengths.astype(jnp.float32)[:, None, None]
  tt = step_lengths.astype(jnp.float32)[:, None, None]
  w = 1.0 - jnp.exp(-jnp.square(n / nn - t / tt) / (2.0 * g * g))
  mask = (n < nn) & (t < tt)
  return w, mask.astype(jnp.float32)


def guided_attention_loss(alignment: Array, token_lengths: Array,
                          step_lengths: Array, g: float = 0.2) -> Array:
  """Mean of ``A * W`` over valid (step, symbol) pairs.

  Args:
    alignment: [B, S, L] attention weights.
    token_lengths: int [B].
    step_lengths: int [B] valid decoder steps.
    g: width of the penalty.

  Returns:
    Scalar loss.
  """
  _, s, l = alignment.shape
  w, mask = guided_attention_weights(token_lengths, step_lengths, s, l, g)
  return masked_mean(alignment.astype(jnp.float32) * w, mask)


def stop_bce(logits: Array, targets: Array, mask: Array,
             pos_weight: float) -> Array:
  """Masked binary cross-entropy with a weight on the positive class."""
  log_p = jax.nn.log_sigmoid(logits)
  log_not_p = jax.nn.log_sigmoid(-logits)
  per = -(pos_weight * targets * log_p + (1.0 - targets) * log_not_p)
  return masked_mean(per, mask)


# --------------------------------------------------------------------------
# Modules.


class LocationSensitiveAttention(nnx.Module):
  """Location-sensitive additive attention (Chorowski et al. 2015).

  ``e[j] = v^T tanh(W q + V h_j + U f_j + b)`` with location features
  ``f = conv([alpha_prev, alpha_cum])``; padded memory positions get zero
  weight.
  """

  def __init__(self, query_dim: int, memory_dim: int, attention_dim: int,
               filters: int, kernel_size: int, *, dtype=None,
               rngs: nnx.Rngs):
    """Builds the attention layers (widths as named)."""
    self.query_layer = nnx.Linear(query_dim, attention_dim, use_bias=False,
                                  dtype=dtype, rngs=rngs)
    self.memory_layer = nnx.Linear(memory_dim, attention_dim, use_bias=False,
                                   dtype=dtype, rngs=rngs)
    self.location_conv = layers.Conv1D(2, filters, kernel_size,
                                       use_bias=False, dtype=dtype, rngs=rngs)
    self.location_layer = nnx.Linear(filters, attention_dim, use_bias=True,
                                     dtype=dtype, rngs=rngs)
    self.v = nnx.Linear(attention_dim, 1, use_bias=False, dtype=dtype,
                        rngs=rngs)

  def process_memory(self, memory: Array) -> Array:
    """[B, L, D] -> [B, L, A] (computed once per utterance)."""
    return self.memory_layer(memory)

  def __call__(self, query: Array, processed_memory: Array, prev: Array,
               cumulative: Array, memory_mask: Array) -> Array:
    """Attention weights for one decoder step.

    Args:
      query: [B, Q] attention-LSTM output.
      processed_memory: [B, L, A].
      prev: [B, L] previous weights.
      cumulative: [B, L] sum of all previous weights.
      memory_mask: [B, L] valid symbols.

    Returns:
      [B, L] float32 weights summing to 1 over valid symbols.
    """
    dt = processed_memory.dtype
    loc = jnp.stack([prev, cumulative], axis=-1).astype(dt)  # [B, L, 2]
    loc = self.location_layer(self.location_conv(loc, memory_mask))
    q = self.query_layer(query.astype(dt))[:, None, :]  # [B, 1, A]
    energies = self.v(jnp.tanh(q + processed_memory + loc))[..., 0]
    energies = energies.astype(jnp.float32)
    energies = jnp.where(memory_mask, energies, -1e9)
    return jax.nn.softmax(energies, axis=-1)


class Encoder(nnx.Module):
  """Embedding -> conv stack -> BiLSTM (Shen et al. 2018, Sec. 2.2)."""

  def __init__(self, c: TacotronConfig, *, dtype=None, rngs: nnx.Rngs):
    """Builds the encoder from the config."""
    self.embedding = nnx.Embed(c.num_symbols, c.embed_dim, rngs=rngs)
    dims = [c.embed_dim] + [c.encoder_dim] * c.encoder_num_convs
    self.convs = nnx.List([
        layers.ConvNormBlock(dims[i], dims[i + 1], c.encoder_kernel_size,
                             activation="relu", dtype=dtype, rngs=rngs)
        for i in range(c.encoder_num_convs)
    ])
    self.lstm = layers.BiLSTM(dims[-1], c.encoder_dim // 2, dtype=dtype,
                              rngs=rngs)
    self.conv_dropout = c.conv_dropout

  def __call__(self, tokens: Array, mask: Array,
               keys: Optional[Array]) -> Array:
    """[B, L] ids -> [B, L, encoder_dim] float32 (zero at padding)."""
    x = self.embedding(jnp.where(mask, tokens, 0))
    x = layers.apply_mask(x, mask)
    for i, conv in enumerate(self.convs):
      k = None
      if keys is not None:
        k = jax.vmap(lambda kk, i=i: jax.random.fold_in(kk, i))(keys)
      x = conv(x, mask, self.conv_dropout, k)
    return self.lstm(x, mask)


class Postnet(nnx.Module):
  """5 convs (tanh except the last) predicting a mel residual."""

  def __init__(self, c: TacotronConfig, *, dtype=None, rngs: nnx.Rngs):
    """Builds the post-net from the config."""
    n = c.postnet_num_convs
    dims = [c.num_mels] + [c.postnet_dim] * (n - 1) + [c.num_mels]
    self.convs = nnx.List([
        layers.ConvNormBlock(dims[i], dims[i + 1], c.postnet_kernel_size,
                             activation="tanh" if i < n - 1 else None,
                             dtype=dtype, rngs=rngs) for i in range(n)
    ])
    self.conv_dropout = c.conv_dropout

  def __call__(self, mel: Array, mask: Array,
               keys: Optional[Array]) -> Array:
    """[B, T, M] -> residual [B, T, M] (zero at padding)."""
    x = mel
    for i, conv in enumerate(self.convs):
      k = None
      if keys is not None:
        k = jax.vmap(lambda kk, i=i: jax.random.fold_in(kk, i))(keys)
      x = conv(x, mask, self.conv_dropout, k)
    return x.astype(jnp.float32)


class Decoder(nnx.Module):
  """Prenet, attention LSTM, decoder LSTM and the frame/stop projections.

  The attention module is a sibling (``Tacotron.attention``) so that it can be
  adapted or frozen on its own; ``step`` takes it as an argument.
  """

  def __init__(self, c: TacotronConfig, memory_dim: int, *, dtype=None,
               rngs: nnx.Rngs):
    """Builds the decoder from the config and the memory width."""
    r, m = c.reduction_factor, c.num_mels
    self.prenet = layers.Prenet(m, c.prenet_dims, dropout_rate=c.prenet_dropout,
                                dtype=dtype, rngs=rngs)
    self.attention_rnn = layers.LSTMCell(
        self.prenet.out_features + memory_dim, c.attention_rnn_dim,
        dtype=dtype, rngs=rngs)
    self.decoder_rnn = layers.LSTMCell(c.attention_rnn_dim + memory_dim,
                                       c.decoder_rnn_dim, dtype=dtype,
                                       rngs=rngs)
    proj_in = c.decoder_rnn_dim + memory_dim
    self.frame_proj = nnx.Linear(proj_in, r * m, dtype=dtype, rngs=rngs)
    self.stop_proj = nnx.Linear(proj_in, r, dtype=dtype, rngs=rngs)
    self.r, self.m = r, m

  def initial_state(self, memory: Array):
    """Zero decoder state for a memory of shape [B, L, D]."""
    b, l, d = memory.shape
    return (self.attention_rnn.initial_carry(b),
            self.decoder_rnn.initial_carry(b),
            jnp.zeros((b, d), jnp.float32),  # context
            jnp.zeros((b, l), jnp.float32),  # previous weights
            jnp.zeros((b, l), jnp.float32))  # cumulative weights

  def step(self, attention: LocationSensitiveAttention, state, prev_frame,
           step_keys, memory, processed_memory, memory_mask):
    """One decoder step.

    Args:
      attention: the attention module.
      state: (att_carry, dec_carry, context [B, D], prev [B, L], cum [B, L]).
      prev_frame: [B, M] last frame of the previous step (zeros at step 0).
      step_keys: [B] prenet dropout keys for this step.
      memory: [B, L, D] float32 encoder outputs (+ speaker).
      processed_memory: [B, L, A].
      memory_mask: [B, L].

    Returns:
      (new state, (frames [B, r * M], stop logits [B, r], weights [B, L])).
    """
    att_carry, dec_carry, context, prev, cum = state
    dt = processed_memory.dtype
    x = self.prenet(prev_frame.astype(dt), step_keys)
    att_carry, att_h = self.attention_rnn(
        att_carry, jnp.concatenate([x, context.astype(dt)], -1))
    weights = attention(att_h, processed_memory, prev, cum, memory_mask)
    context = jnp.einsum("bl,bld->bd", weights, memory)
    dec_carry, dec_h = self.decoder_rnn(
        dec_carry, jnp.concatenate([att_h, context], -1).astype(dt))
    h = jnp.concatenate([dec_h, context], -1).astype(dt)
    frames = self.frame_proj(h).astype(jnp.float32)
    stop = self.stop_proj(h).astype(jnp.float32)
    return ((att_carry, dec_carry, context, weights, cum + weights),
            (frames, stop, weights))


class SpeakerConditioning(nnx.Module):
  """Speaker table and/or projection of an external speaker vector."""

  def __init__(self, c: TacotronConfig, *, rngs: nnx.Rngs):
    """Builds the table / projection from the config."""
    self.table = nnx.data(
        nnx.Embed(c.num_speakers, c.speaker_dim,
                  embedding_init=nnx.initializers.normal(0.3), rngs=rngs)
        if c.use_speaker_table else None)
    self.proj = nnx.data(
        nnx.Linear(c.external_speaker_dim, c.speaker_dim, rngs=rngs)
        if c.external_speaker_dim > 0 else None)

  def __call__(self, speaker_ids: Array,
               speaker_vectors: Optional[Array]) -> Array:
    """Returns [B, speaker_dim] float32 conditioning."""
    out = 0.0
    if self.table is not None:
      out = out + self.table(speaker_ids)
    if self.proj is not None:
      if speaker_vectors is None:
        raise ValueError(
            "This Tacotron was built with external_speaker_dim="
            f"{self.proj.in_features}; pass speaker_vectors [B, "
            f"{self.proj.in_features}].")
      out = out + self.proj(speaker_vectors.astype(jnp.float32))
    return jnp.asarray(out, jnp.float32)


def _example_keys(seeds: Optional[Array], batch_size: int) -> Array:
  """[B] per-utterance typed keys (see module docstring)."""
  if seeds is None:
    base = jax.random.key(DEFAULT_DROPOUT_SEED)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(
        jnp.arange(batch_size))
  seeds = jnp.asarray(seeds).astype(jnp.uint32)
  return jax.vmap(jax.random.key)(seeds)


def _fold(keys: Array, data: Any) -> Array:
  return jax.vmap(lambda k: jax.random.fold_in(k, data))(keys)


class TextFrontEnd(NamedTuple):
  """The text side shared by the Tacotron-style models (see ``text_side``)."""

  dtype: Any  # computation dtype (None = float32)
  speaker_width: int  # width of the speaker conditioning (0 = none)
  encoder: Any  # Encoder
  speaker: Any  # SpeakerConditioning or None


def text_side(config, rngs: nnx.Rngs) -> TextFrontEnd:
  """Builds the encoder and speaker conditioning of a Tacotron-style model.

  Args:
    config: a ``TacotronConfig`` or any config with its encoder and speaker
      fields (e.g. ``DurationTacotronConfig``).
    rngs: parameter initialization keys.

  Returns:
    ``TextFrontEnd``; assign ``encoder`` and ``speaker`` to the model's
    attributes of the same names (the parameter groups).
  """
  dtype = jnp.bfloat16 if config.dtype == "bfloat16" else None
  spk = config.speaker_dim if (config.use_speaker_table or
                               config.external_speaker_dim > 0) else 0
  encoder = Encoder(config, dtype=dtype, rngs=rngs)
  speaker = nnx.data(SpeakerConditioning(config, rngs=rngs)
                     if spk > 0 else None)
  return TextFrontEnd(dtype, spk, encoder, speaker)


def encode_text(encoder: Encoder, speaker: Optional[SpeakerConditioning],
                tokens: Array, token_lengths: Array, speaker_ids: Array,
                speaker_vectors: Optional[Array] = None,
                keys: Optional[Array] = None) -> Tuple[Array, Array]:
  """Encoder outputs joined with the speaker conditioning.

  Args:
    encoder: the model's ``Encoder``.
    speaker: its ``SpeakerConditioning`` (None = no conditioning).
    tokens: int [B, L].
    token_lengths: int [B].
    speaker_ids: int [B].
    speaker_vectors: optional [B, external_speaker_dim].
    keys: optional [B] per-utterance keys (enables conv dropout).

  Returns:
    (memory [B, L, encoder_dim + speaker_dim] float32, mask [B, L] bool).
  """
  mask = layers.length_mask(token_lengths, tokens.shape[1])
  enc_keys = None if keys is None else _fold(keys, _ENCODER_STREAM)
  memory = encoder(tokens, mask, enc_keys)
  if speaker is not None:
    s = speaker(speaker_ids, speaker_vectors)  # [B, S]
    s = jnp.broadcast_to(s[:, None, :], memory.shape[:2] + s.shape[-1:])
    memory = jnp.concatenate([memory, s], -1)
    memory = layers.apply_mask(memory, mask)
  return memory.astype(jnp.float32), mask


class Tacotron(nnx.Module):
  """Tacotron 2-style text -> mel model (see the module docstring).

  Top-level attributes name the parameter groups used by
  ``metatts.functional.filter_for``: ``encoder``, ``speaker``,
  ``attention``, ``decoder``, ``postnet``.
  """

  def __init__(self, config: TacotronConfig, *, rngs: nnx.Rngs):
    """Builds the model.

    Args:
      config: sizes (see ``tacotron_config``).
      rngs: parameter initialization keys (``nnx.Rngs(seed)``).
    """
    _check_config(config)
    self.config = config
    front = text_side(config, rngs)
    dtype = self.dtype = front.dtype
    self.speaker_width = front.speaker_width
    memory_dim = config.encoder_dim + front.speaker_width
    self.encoder = front.encoder
    self.speaker = front.speaker
    self.attention = LocationSensitiveAttention(
        config.attention_rnn_dim, memory_dim, config.attention_dim,
        config.location_filters, config.location_kernel_size, dtype=dtype,
        rngs=rngs)
    self.decoder = Decoder(config, memory_dim, dtype=dtype, rngs=rngs)
    self.postnet = Postnet(config, dtype=dtype, rngs=rngs)

  # ---- shared pieces ------------------------------------------------------

  def encode(self, tokens: Array, token_lengths: Array, speaker_ids: Array,
             speaker_vectors: Optional[Array] = None,
             keys: Optional[Array] = None) -> Tuple[Array, Array]:
    """Encoder outputs joined with the speaker conditioning: ``encode_text``
    on this model's encoder and speaker conditioning."""
    return encode_text(self.encoder, self.speaker, tokens, token_lengths,
                       speaker_ids, speaker_vectors, keys)

  # ---- training -----------------------------------------------------------

  def __call__(self, batch: TTSBatch,
               speaker_vectors: Optional[Array] = None) -> TacotronOutputs:
    """Teacher-forced forward pass.

    Args:
      batch: a ``TTSBatch``; ``mels`` [B, T, M] are the teacher frames.
      speaker_vectors: optional [B, external_speaker_dim].

    Returns:
      ``TacotronOutputs`` with S = ceil(T / r) decoder steps.
    """
    c = self.config
    r, m = c.reduction_factor, c.num_mels
    b, t, _ = batch.mels.shape
    s = -(-t // r)
    mels = jnp.pad(batch.mels.astype(jnp.float32),
                   ((0, 0), (0, s * r - t), (0, 0)))
    frame_mask = layers.length_mask(batch.mel_lengths, s * r)  # [B, S*r]
    mels = layers.apply_mask(mels, frame_mask)
    keys = _example_keys(batch.seeds, b)
    conv_keys = keys if batch.seeds is not None else None
    memory, mem_mask = self.encode(batch.tokens, batch.token_lengths,
                                   batch.speaker_ids, speaker_vectors,
                                   conv_keys)
    processed = self.attention.process_memory(
        memory.astype(self.dtype or jnp.float32))
    # Teacher frames: the last frame of each previous group of r.
    prev_frames = mels[:, r - 1::r][:, :s - 1]  # [B, S-1, M]
    prev_frames = jnp.concatenate([jnp.zeros((b, 1, m)), prev_frames], 1)
    pre_keys = _fold(keys, _PRENET_STREAM)
    step_keys = jax.vmap(lambda i: _fold(pre_keys, i))(jnp.arange(s))  # [S,B]

    def body(state, inp):
      frame, k = inp
      return self.decoder.step(self.attention, state, frame, k, memory,
                               processed, mem_mask)

    _, (frames, stops, weights) = jax.lax.scan(
        body, self.decoder.initial_state(memory),
        (jnp.swapaxes(prev_frames, 0, 1), step_keys))
    mel_before = jnp.swapaxes(frames, 0, 1).reshape(b, s * r, m)
    mel_before = layers.apply_mask(mel_before, frame_mask)
    stop_logits = jnp.swapaxes(stops, 0, 1).reshape(b, s * r)
    alignment = jnp.swapaxes(weights, 0, 1)  # [B, S, L]
    post_keys = conv_keys if conv_keys is None else _fold(keys,
                                                          _POSTNET_STREAM)
    mel_after = mel_before + self.postnet(mel_before, frame_mask, post_keys)
    mel_after = layers.apply_mask(mel_after, frame_mask)
    return TacotronOutputs(mel_before, mel_after, stop_logits, alignment)

  def loss(self, batch: TTSBatch,
           speaker_vectors: Optional[Array] = None
           ) -> Tuple[Array, dict]:
    """Total training loss and its terms.

    ``loss = L1(before) + L1(after) + L2(before) + L2(after)
    + stop_weight * BCE(stop) + guided_attention_weight * GA``; mel terms
    are means over valid frames and bins, the stop BCE over valid frames
    (target 1 on each utterance's last frame, weighted by
    ``stop_pos_weight``), GA over valid (step, symbol) pairs.

    Args:
      batch: a ``TTSBatch``.
      speaker_vectors: optional [B, external_speaker_dim].

    Returns:
      (scalar float32 loss, aux dict with 'l1_before', 'l1_after',
      'l2_before', 'l2_after', 'stop', 'guided_attention', 'mel_loss' and
      'alignment' [B, S, L]).
    """
    c = self.config
    out = self(batch, speaker_vectors)
    b, t, _ = batch.mels.shape
    r = c.reduction_factor
    s = out.alignment.shape[1]
    target = jnp.pad(batch.mels.astype(jnp.float32),
                     ((0, 0), (0, s * r - t), (0, 0)))
    frame_mask = layers.length_mask(batch.mel_lengths, s * r)
    target = layers.apply_mask(target, frame_mask)
    fm = frame_mask[..., None]
    err_b = out.mel_before - target
    err_a = out.mel_after - target
    terms = {
        "l1_before": masked_mean(jnp.abs(err_b), fm),
        "l1_after": masked_mean(jnp.abs(err_a), fm),
        "l2_before": masked_mean(jnp.square(err_b), fm),
        "l2_after": masked_mean(jnp.square(err_a), fm),
    }
    mel_loss = sum(terms.values())
    idx = jnp.arange(s * r)[None, :]
    stop_target = (idx >= batch.mel_lengths[:, None] - 1).astype(jnp.float32)
    terms["stop"] = stop_bce(out.stop_logits, stop_target, frame_mask,
                             c.stop_pos_weight)
    step_lengths = -(-batch.mel_lengths // r)
    terms["guided_attention"] = guided_attention_loss(
        out.alignment, batch.token_lengths, step_lengths,
        c.guided_attention_g)
    total = (mel_loss + c.stop_weight * terms["stop"] +
             c.guided_attention_weight * terms["guided_attention"])
    aux = dict(terms)
    aux["mel_loss"] = mel_loss
    aux["alignment"] = out.alignment
    return total, aux

  # ---- inference ----------------------------------------------------------

  def infer(self, tokens: Array, token_lengths: Array,
            speaker_ids: Optional[Array] = None, *,
            max_frames: Optional[int] = None,
            seeds: Optional[Array] = None,
            speaker_vectors: Optional[Array] = None,
            stop_threshold: float = 0.5,
            min_frames: Optional[Array] = None) -> InferenceOutputs:
    """Autoregressive synthesis (jittable; see ``synthesize`` for checks).

    Runs a ``jax.lax.while_loop`` over decoder steps until every utterance
    has a stopping frame or ``ceil(max_frames / r)`` steps were made. Frame
    ``f`` of utterance ``b`` stops it when its stop probability is
    > ``stop_threshold`` and ``f >= min_frames[b]``. An utterance's length
    is the index of its first stopping frame + 1; its frames and alignment
    after that are zero.

    Args:
      tokens: int [B, L].
      token_lengths: int [B].
      speaker_ids: int [B] (zeros if None).
      max_frames: frame budget (``config.max_frames`` if None); static.
      seeds: optional uint32 [B] prenet dropout seeds.
      speaker_vectors: optional [B, external_speaker_dim].
      stop_threshold: stop probability threshold.
      min_frames: optional int [B] (traced, not static): stops at frame
        indices below it are ignored (see
        ``metatts.synthesis.min_synthesis_frames``); None
        = 0, every stop counts. ``stop_probs`` are unaffected.

    Returns:
      ``InferenceOutputs``.
    """
    c = self.config
    r, m = c.reduction_factor, c.num_mels
    max_frames = c.max_frames if max_frames is None else int(max_frames)
    smax = -(-max_frames // r)
    b, l = tokens.shape
    if speaker_ids is None:
      speaker_ids = jnp.zeros((b,), jnp.int32)
    keys = _example_keys(seeds, b)
    memory, mem_mask = self.encode(tokens, token_lengths, speaker_ids,
                                   speaker_vectors, None)
    processed = self.attention.process_memory(
        memory.astype(self.dtype or jnp.float32))
    pre_keys = _fold(keys, _PRENET_STREAM)
    if min_frames is None:
      min_frames = jnp.zeros((b,), jnp.int32)
    min_frames = jnp.broadcast_to(jnp.asarray(min_frames, jnp.int32), (b,))

    frames0 = jnp.zeros((b, smax, r * m), jnp.float32)
    stops0 = jnp.zeros((b, smax, r), jnp.float32)
    align0 = jnp.zeros((b, smax, l), jnp.float32)
    init = (jnp.int32(0), self.decoder.initial_state(memory),
            jnp.zeros((b, m), jnp.float32), jnp.zeros((b,), bool),
            jnp.full((b,), smax * r, jnp.int32), frames0, stops0, align0)

    def cond(carry):
      i, _, _, done, *_ = carry
      return (i < smax) & ~jnp.all(done)

    def body(carry):
      i, state, prev, done, lengths, frames, stops, align = carry
      state, (fr, st, w) = self.decoder.step(
          self.attention, state, prev, _fold(pre_keys, i), memory, processed,
          mem_mask)
      probs = jax.nn.sigmoid(st)  # [B, r]
      frame_index = i * r + jnp.arange(r)  # [r]
      hit = (probs > stop_threshold) & (
          frame_index[None, :] >= min_frames[:, None])  # [B, r]
      any_hit = jnp.any(hit, axis=-1)
      first = jnp.argmax(hit, axis=-1)
      new_stop = any_hit & ~done
      lengths = jnp.where(new_stop, i * r + first + 1, lengths)
      live = ~done[:, None]
      fr = jnp.where(live, fr, 0.0)
      frames = frames.at[:, i].set(fr)
      stops = stops.at[:, i].set(jnp.where(live, probs, 0.0))
      align = align.at[:, i].set(jnp.where(live, w, 0.0))
      prev = fr.reshape(b, r, m)[:, -1]
      return (i + 1, state, prev, done | any_hit, lengths, frames, stops,
              align)

    out = jax.lax.while_loop(cond, body, init)
    lengths, frames, stops, align = out[4:]
    # An utterance that never stopped gets exactly max_frames frames.
    lengths = jnp.minimum(lengths, max_frames)
    mel_before = frames.reshape(b, smax * r, m)
    frame_mask = layers.length_mask(lengths, smax * r)
    mel_before = layers.apply_mask(mel_before, frame_mask)
    mel = mel_before + self.postnet(mel_before, frame_mask, None)
    mel = layers.apply_mask(mel, frame_mask)
    return InferenceOutputs(mel, mel_before, lengths, align,
                            stops.reshape(b, smax * r))


def check_synthesis_args(config, tokens: Array, max_frames, min_frames,
                         speaker_ids):
  """Host-side checks of the synthesis arguments shared by the models.

  Args:
    config: the model's config (``max_frames`` is read).
    tokens: int [B, L] (already validated).
    max_frames: frame budget or None (``config.max_frames``).
    min_frames: optional int [B] frame floor (see
      ``metatts.synthesis.min_synthesis_frames``).
    speaker_ids: optional int [B] (zeros if None).

  Returns:
    ``(max_frames int, min_frames int32 [B] or None, speaker_ids [B])``.

  Raises:
    ValueError: ``max_frames`` outside ``[1, config.max_frames]`` or bad
      ``min_frames``.
  """
  if max_frames is None:
    max_frames = config.max_frames
  if not 1 <= int(max_frames) <= config.max_frames:
    raise ValueError(
        f"max_frames={max_frames} must lie in [1, config.max_frames="
        f"{config.max_frames}].")
  if min_frames is not None:
    mf = np.asarray(min_frames)
    if mf.shape != tokens.shape[:1] or mf.dtype.kind not in "iu" or np.any(
        mf < 0):
      raise ValueError(
          f"min_frames must be non-negative integers of shape [B]="
          f"{tokens.shape[0]}; got {mf.tolist()} (dtype {mf.dtype}). Use "
          "metatts.synthesis.min_synthesis_frames(token_lengths, "
          "sample_rate, hop_length).")
    min_frames = jnp.asarray(mf, jnp.int32)
  if speaker_ids is None:
    speaker_ids = jnp.zeros(tokens.shape[:1], jnp.int32)
  return int(max_frames), min_frames, speaker_ids


@functools.partial(nnx.jit, static_argnames=("max_frames", "stop_threshold"))
def _infer_jit(model, tokens, token_lengths, speaker_ids, seeds,
               speaker_vectors, max_frames, stop_threshold, min_frames=None):
  return model.infer(tokens, token_lengths, speaker_ids, max_frames=max_frames,
                     seeds=seeds, speaker_vectors=speaker_vectors,
                     stop_threshold=stop_threshold, min_frames=min_frames)


def synthesize(model: Tacotron, tokens, token_lengths, speaker_ids=None, *,
               max_frames: Optional[int] = None, seeds=None,
               speaker_vectors=None,
               stop_threshold: float = 0.5,
               min_frames=None) -> InferenceOutputs:
  """Public inference entry: host-side checks, then jitted ``infer``.

  Args:
    model: a ``Tacotron``.
    tokens: int [B, L] symbol ids (0 = padding).
    token_lengths: int [B].
    speaker_ids: optional int [B] (zeros if None).
    max_frames: frame budget (default ``config.max_frames``; must not exceed
      it).
    seeds: optional uint32 [B] prenet dropout seeds.
    speaker_vectors: optional [B, external_speaker_dim].
    stop_threshold: stop probability threshold.
    min_frames: optional int [B]: ignore stops before these frame indices
      (e.g. ``min_synthesis_frames(token_lengths, sr, hop, max_frames)``);
      a different value does not recompile.

  Returns:
    ``InferenceOutputs``; trim ``mel[b, :lengths[b]]``.

  Raises:
    ValueError: bad symbols, empty or too long text, bad ``max_frames`` or
      ``min_frames``.
  """
  c = model.config
  tokens = jnp.asarray(tokens, jnp.int32)
  token_lengths = jnp.asarray(token_lengths, jnp.int32)
  validate_inputs(c, tokens, token_lengths, speaker_ids, speaker_vectors)
  max_frames, min_frames, speaker_ids = check_synthesis_args(
      c, tokens, max_frames, min_frames, speaker_ids)
  return _infer_jit(model, tokens, token_lengths,
                    jnp.asarray(speaker_ids, jnp.int32), seeds,
                    speaker_vectors, int(max_frames), float(stop_threshold),
                    min_frames)
