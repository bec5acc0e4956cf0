"""WaveNet-style neural vocoder (mel -> waveform) in Flax NNX.

The model is an autoregressive stack of dilated causal convolutions with gated
``tanh * sigmoid`` units, residual and skip connections (van den Oord et al.
2016). It is locally conditioned on a log-mel spectrogram that is upsampled to
the audio sample rate by a frame-level convolution and a chain of transposed
convolutions (one per upsampling factor, product = hop length), and optionally
globally conditioned on a speaker (an embedding table or an external vector,
e.g. from ``metatts.models.speaker_encoder``).

Two output distributions are available:

* ``"mu_law"``: a 256-way softmax over 8-bit mu-law companded samples
  (van den Oord et al. 2016, Sec. 2.2).
* ``"mol"``: a discretized mixture of logistics over ``mol_bins`` uniform bins
  in [-1, 1] (Salimans et al. 2017, PixelCNN++; used for audio by Parallel
  WaveNet, van den Oord et al. 2018).

Generation comes in two forms that take the same random draws (one key per
sample, ``jax.random.fold_in(key, t)``) and therefore produce the same samples:

* :func:`generate` ("Fast WaveNet", Paine et al. 2016): every residual layer
  keeps a queue (ring buffer) of its past ``(kernel_size - 1) * dilation``
  inputs, so one step costs one matrix product per tap and layer; the loop is a
  batched ``jax.lax.scan``.
* :func:`generate_naive`: each step re-runs the whole convolution stack on the
  last ``receptive_field`` inputs. It is the reference for the fast path.

Conventions. Audio is float in [-1, 1], shape ``[B, S]`` with ``S = F * hop``
for ``F`` mel frames ``[B, F, M]``. The network input at time ``t`` is the
(quantized) sample ``t - 1`` (zero at ``t = 0``), so the output at ``t`` is a
distribution over sample ``t`` given samples ``< t`` and the whole mel.
Parameters are float32; ``WaveNetConfig.dtype`` sets the compute dtype
(``"bfloat16"`` runs the convolutions in bf16, the loss in float32). The module
keeps no mutable state besides its ``nnx.Param`` s, so it can be split with
``nnx.split`` into ``(graphdef, params, rest)`` by ``metatts.functional``.

References:
  A. van den Oord et al., "WaveNet: A Generative Model for Raw Audio", 2016.
  T. L. Paine et al., "Fast Wavenet Generation Algorithm", 2016.
  T. Salimans et al., "PixelCNN++: Improving the PixelCNN with Discretized
    Logistic Mixture Likelihood and Other Modifications", ICLR 2017.
  A. van den Oord et al., "Parallel WaveNet: Fast High-Fidelity Speech
    Synthesis", ICML 2018.
  J. Shen et al., "Natural TTS Synthesis by Conditioning WaveNet on Mel
    Spectrogram Predictions" (Tacotron 2), ICASSP 2018.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from metatts.audio.features import mu_law_decode, mu_law_encode
from metatts.models import layers
from metatts.types import VocoderBatch

Array = jax.Array

_OUTPUTS = ("mu_law", "mol")
_SPEAKER_SOURCES = ("none", "table", "vector")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
_LOG_SCALE_MIN = -7.0  # PixelCNN++ lower bound on the logistic log-scale.


# ----------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WaveNetConfig:
  """Hyperparameters of :class:`WaveNet`.

  Attributes:
    n_mels: number of mel bins of the conditioning spectrogram.
    sample_rate: audio sample rate in Hz (documentation and RTF only).
    hop_length: audio samples per mel frame; must equal
      ``prod(upsample_factors)``.
    upsample_factors: factors of the transposed-convolution upsampler.
    stacks: number of dilation cycles.
    layers_per_stack: layers per cycle; layer ``i`` has dilation ``2**i``.
    kernel_size: taps of each dilated causal convolution (2 or 3).
    residual_channels: width of the residual stream.
    gate_channels: width of each half of the gated unit.
    skip_channels: width of the skip connections and the output head.
    cond_channels: width of the upsampled mel conditioning.
    output: ``"mu_law"`` (256-way softmax) or ``"mol"`` (mixture of
      logistics).
    quantization_channels: mu-law classes (256 = 8 bit).
    num_mixtures: logistic components of the ``"mol"`` output.
    mol_bins: number of discretization bins of the ``"mol"`` output
      (256 = 8 bit, 65536 = 16 bit).
    speaker_source: ``"none"``, ``"table"`` (embedding of ``speaker_ids``) or
      ``"vector"`` (an external speaker vector per example).
    n_speakers: rows of the speaker table (``speaker_source="table"``).
    speaker_dim: width of the speaker embedding / external vector.
    max_frames: longest accepted mel (frames); longer inputs raise.
    dtype: compute dtype, ``"float32"`` or ``"bfloat16"`` (params stay f32).
  """

  n_mels: int = 80
  sample_rate: int = 16000
  hop_length: int = 200
  upsample_factors: Tuple[int, ...] = (10, 20)
  stacks: int = 2
  layers_per_stack: int = 4
  kernel_size: int = 2
  residual_channels: int = 16
  gate_channels: int = 16
  skip_channels: int = 32
  cond_channels: int = 16
  output: str = "mu_law"
  quantization_channels: int = 256
  num_mixtures: int = 4
  mol_bins: int = 256
  speaker_source: str = "none"
  n_speakers: int = 0
  speaker_dim: int = 0
  max_frames: int = 2000
  dtype: str = "float32"

  def __post_init__(self):
    layers.check_choice(self, "output", _OUTPUTS)
    layers.check_choice(self, "speaker_source", _SPEAKER_SOURCES)
    layers.check_choice(self, "dtype", _DTYPES)
    if int(np.prod(self.upsample_factors)) != self.hop_length:
      raise ValueError(
          f"WaveNetConfig.upsample_factors={self.upsample_factors} multiply "
          f"to {int(np.prod(self.upsample_factors))}, but hop_length="
          f"{self.hop_length}; choose factors whose product is the hop.")
    if self.kernel_size < 2:
      raise ValueError(
          f"WaveNetConfig.kernel_size={self.kernel_size} must be >= 2 for a "
          "dilated causal convolution.")
    if self.speaker_source == "table" and self.n_speakers <= 0:
      raise ValueError(
          "WaveNetConfig.speaker_source='table' needs n_speakers > 0 (got "
          f"{self.n_speakers}); set n_speakers to the number of speakers.")
    if self.speaker_source != "none" and self.speaker_dim <= 0:
      raise ValueError(
          f"WaveNetConfig.speaker_source={self.speaker_source!r} needs "
          f"speaker_dim > 0 (got {self.speaker_dim}).")
    if self.output == "mol" and self.mol_bins < 2:
      raise ValueError(f"WaveNetConfig.mol_bins={self.mol_bins} must be >= 2.")

  @property
  def receptive_field(self) -> int:
    """Number of past samples the output at ``t`` sees (closed form).

    Each dilated layer with dilation ``d`` adds ``(kernel_size - 1) * d``
    samples; summing ``d = 2**i`` over a stack gives ``2**L - 1``. The input
    projection is a 1x1 convolution of the previous sample, so the prediction
    of sample ``t`` depends on samples ``t - R, ..., t - 1`` with ``R`` the
    value returned here.
    """
    return ((self.kernel_size - 1) * self.stacks *
            (2 ** self.layers_per_stack - 1) + 1)

  @property
  def out_channels(self) -> int:
    if self.output == "mu_law":
      return self.quantization_channels
    return 3 * self.num_mixtures

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]


_SIZES: Dict[str, Dict[str, Any]] = {
    # Unit tests and the CPU quickstart: receptive field 31 samples.
    "tiny": dict(stacks=2, layers_per_stack=4, kernel_size=2,
                 residual_channels=16, gate_channels=16, skip_channels=32,
                 cond_channels=16, num_mixtures=4),
    # Hours on a CPU: receptive field 511 samples (32 ms at 16 kHz).
    "base": dict(stacks=2, layers_per_stack=8, kernel_size=2,
                 residual_channels=32, gate_channels=32, skip_channels=64,
                 cond_channels=32, num_mixtures=10),
    # Paper-like (van den Oord et al. 2016; Tacotron 2 used 3 x 10 layers):
    # receptive field 3070 samples (192 ms at 16 kHz).
    "full": dict(stacks=3, layers_per_stack=10, kernel_size=2,
                 residual_channels=64, gate_channels=64, skip_channels=128,
                 cond_channels=80, num_mixtures=10),
}


def wavenet_config(size: str = "tiny", **overrides) -> WaveNetConfig:
  """Returns the :class:`WaveNetConfig` of a named size with overrides.

  Args:
    size: ``"tiny"``, ``"base"`` or ``"full"``.
    **overrides: any :class:`WaveNetConfig` field.

  Returns:
    The config.
  """
  return layers.sized_config(WaveNetConfig, _SIZES, size, overrides, "WaveNet")


# ----------------------------------------------------------------------------
# Quantization: the uniform bin grid of the mixture of logistics (mu-law is
# metatts.audio.features.mu_law_encode / mu_law_decode)
# ----------------------------------------------------------------------------


def quantize_to_bins(audio: Array, bins: int) -> Array:
  """Rounds audio in [-1, 1] to the nearest of ``bins`` uniform bin centers.

  The centers are ``-1 + 2 i / (bins - 1)``, ``i = 0 .. bins - 1``.
  """
  x = jnp.clip(audio.astype(jnp.float32), -1.0, 1.0)
  idx = jnp.round((x + 1.0) / 2.0 * (bins - 1))
  return jnp.clip(idx / (bins - 1) * 2.0 - 1.0, -1.0, 1.0)


def _log_sigmoid(x: Array) -> Array:
  return -jax.nn.softplus(-x)


def discretized_mol_log_prob(params: Array, x: Array, bins: int) -> Array:
  """Log-probability of bin centers under a discretized logistic mixture.

  Each component ``k`` is a logistic with mean ``mu_k`` and scale
  ``s_k = exp(log_s_k)`` (``log_s_k >= -7``); bin ``i`` with center ``c_i``
  and half-width ``h = 1 / (bins - 1)`` gets the mass
  ``sigma((c_i + h - mu)/s) - sigma((c_i - h - mu)/s)``; the first bin
  extends to ``-inf`` and the last to ``+inf``, so the masses telescope to
  exactly 1 (Salimans et al. 2017, eq. 2). The difference of sigmoids is
  evaluated as ``log sigma(a) + log sigma(-b) + log(1 - exp(b - a))``, an
  identity that avoids the cancellation of ``sigma(a) - sigma(b)``.

  Args:
    params: ``[..., 3 K]`` = mixture logits, means, log-scales.
    x: ``[...]`` values on the bin grid (see :func:`quantize_to_bins`).
    bins: number of bins.

  Returns:
    ``[...]`` float32 log-probabilities.
  """
  params = params.astype(jnp.float32)
  logit_pi, mu, log_s = jnp.split(params, 3, axis=-1)
  log_s = jnp.maximum(log_s, _LOG_SCALE_MIN)
  inv_s = jnp.exp(-log_s)
  half = 1.0 / (bins - 1)
  xc = x.astype(jnp.float32)[..., None] - mu
  a = (xc + half) * inv_s  # upper edge
  b = (xc - half) * inv_s  # lower edge
  log_cdf_upper = _log_sigmoid(a)  # first bin: P(X <= c + h)
  log_sf_lower = _log_sigmoid(-b)  # last bin: P(X > c - h)
  width = 2.0 * half * inv_s  # a - b > 0, computed without cancellation
  log_mid = (log_cdf_upper + log_sf_lower +
             jnp.log(-jnp.expm1(-width)))
  is_first = x[..., None] <= -1.0 + 0.5 * half
  is_last = x[..., None] >= 1.0 - 0.5 * half
  log_p = jnp.where(is_first, log_cdf_upper,
                    jnp.where(is_last, log_sf_lower, log_mid))
  return jax.nn.logsumexp(log_p + jax.nn.log_softmax(logit_pi, axis=-1),
                          axis=-1)


# ----------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------


def dense(linear: nnx.Linear, x: Array) -> Array:
  """``linear(x)`` with the leading axes flattened into one.

  The same products, but the weight gradient becomes one 2-D matrix product
  contracting a single axis. On XLA CPU, the gradient of a ``[B, T, C]``
  input's product contracts ``B`` and ``T`` together and ran 4x slower than
  the forward pass (docs/benchmarks.md, "The source-filter vocoder").
  """
  if x.ndim <= 2:
    return linear(x)
  return linear(x.reshape(-1, x.shape[-1])).reshape(x.shape[:-1] + (-1,))


class CausalConv1d(nnx.Module):
  """Dilated causal 1-D convolution written as a sum of shifted matmuls.

  ``y[t] = b + sum_k x[t - (K - 1 - k) d] @ W[k]`` with zeros before ``t=0``.
  :meth:`step` evaluates the same expression, in the same order, from cached
  past inputs, which is what lets fast generation reproduce the full forward.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int,
               dilation: int, *, dtype, rngs: nnx.Rngs):
    self.kernel_size = kernel_size
    self.dilation = dilation
    self.dtype = dtype
    # LeCun-normal over the fan-in of all taps.
    self.kernel = nnx.Param(layers.normal_init()(
        rngs.params(), (kernel_size, in_features, out_features)))
    self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))

  def __call__(self, x: Array) -> Array:
    """``x`` [B, T, Cin] -> [B, T, Cout]."""
    k_size, d = self.kernel_size, self.dilation
    t = x.shape[1]
    w = self.kernel[...].astype(self.dtype)
    pad = (k_size - 1) * d
    xp = jnp.pad(x.astype(self.dtype), ((0, 0), (pad, 0), (0, 0)))
    y = self.bias[...].astype(self.dtype)
    b, cin = x.shape[0], x.shape[-1]
    for k in range(k_size):  # 2-D products: see ``dense``
      y = y + (xp[:, k * d:k * d + t].reshape(b * t, cin) @ w[k]).reshape(
          b, t, -1)
    return y

  def step(self, taps: Sequence[Array]) -> Array:
    """One time step from ``K`` inputs [B, Cin], oldest first -> [B, Cout]."""
    w = self.kernel[...].astype(self.dtype)
    y = self.bias[...].astype(self.dtype)
    for k, x in enumerate(taps):
      y = y + x.astype(self.dtype) @ w[k]
    return y


class ResidualLayer(nnx.Module):
  """Gated residual block of WaveNet (van den Oord et al. 2016, Sec. 2.3-2.5).

  ``z = tanh(W_f * x + V_f c + U_f g) * sigmoid(W_g * x + V_g c + U_g g)``;
  residual output ``(x + R z) / sqrt(2)``, skip output ``S z``.
  """

  def __init__(self, config: WaveNetConfig, dilation: int, *,
               rngs: nnx.Rngs):
    c = config
    dt = c.compute_dtype
    kw = dict(dtype=dt, kernel_init=layers.normal_init(), rngs=rngs)
    self.gate_channels = c.gate_channels
    self.conv = CausalConv1d(c.residual_channels, 2 * c.gate_channels,
                             c.kernel_size, dilation, dtype=dt, rngs=rngs)
    self.cond = nnx.Linear(c.cond_channels, 2 * c.gate_channels,
                           use_bias=False, **kw)
    if c.speaker_source != "none":
      self.speaker = nnx.Linear(c.speaker_dim, 2 * c.gate_channels,
                                use_bias=False, **kw)
    else:
      self.speaker = None
    self.res = nnx.Linear(c.gate_channels, c.residual_channels, **kw)
    self.skip = nnx.Linear(c.gate_channels, c.skip_channels, **kw)

  def _finish(self, pre: Array, x: Array, c: Array,
              g: Optional[Array]) -> Tuple[Array, Array]:
    pre = pre + dense(self.cond, c)
    if self.speaker is not None:
      s = self.speaker(g)
      pre = pre + (s[:, None, :] if pre.ndim == 3 else s)
    gch = self.gate_channels
    z = jnp.tanh(pre[..., :gch]) * jax.nn.sigmoid(pre[..., gch:])
    out = (x.astype(z.dtype) + dense(self.res, z)) * math.sqrt(0.5)
    return out, dense(self.skip, z)

  def __call__(self, x: Array, c: Array,
               g: Optional[Array]) -> Tuple[Array, Array]:
    """``x`` [B,T,R], ``c`` [B,T,Cc], ``g`` [B,D] -> ([B,T,R], [B,T,Sk])."""
    return self._finish(self.conv(x), x, c, g)

  def step(self, taps: Sequence[Array], c: Array,
           g: Optional[Array]) -> Tuple[Array, Array]:
    """``taps`` K x [B,R] (last = current input) -> ([B,R], [B,Sk])."""
    return self._finish(self.conv.step(taps), taps[-1], c, g)


class ConditionUpsampler(nnx.Module):
  """Mel frames [B, F, M] -> conditioning at sample rate [B, F * hop, Cc].

  A kernel-3 convolution over frames, then one transposed convolution per
  upsampling factor ``f`` with kernel size = stride = ``f`` (each frame emits
  ``f`` learned linear maps of itself), each followed by a leaky ReLU; a
  simplification of the Tacotron 2 vocoder's transposed-conv upsampler
  (Shen et al. 2018).
  """

  def __init__(self, config: WaveNetConfig, *, rngs: nnx.Rngs):
    c = config
    dt = c.compute_dtype
    self.dtype = dt
    self.pre = nnx.Conv(c.n_mels, c.cond_channels, kernel_size=(3,),
                        padding="SAME", dtype=dt,
                        kernel_init=layers.normal_init(), rngs=rngs)
    self.factors = tuple(c.upsample_factors)
    kernels, biases = [], []
    for f in self.factors:
      kernels.append(nnx.Param(layers.block_normal(
          rngs.params(), (f, c.cond_channels, c.cond_channels),
          1.0 / math.sqrt(c.cond_channels))))
      biases.append(nnx.Param(jnp.zeros((f, c.cond_channels), jnp.float32)))
    self.up_kernels = nnx.List(kernels)
    self.up_biases = nnx.List(biases)

  def __call__(self, mels: Array, frame_mask: Optional[Array] = None) -> Array:
    h = mels.astype(self.dtype)
    if frame_mask is not None:
      h = jnp.where(frame_mask[..., None], h, 0)
    h = jax.nn.leaky_relu(self.pre(h), 0.4)  # [B, F, Cc]
    for f, w, b in zip(self.factors, self.up_kernels, self.up_biases):
      bsz, t, ch = h.shape
      h = jnp.einsum("nc,fcd->nfd", h.reshape(bsz * t, ch),
                     w[...].astype(self.dtype)).reshape(bsz, t, f, ch)
      h = h + b[...].astype(self.dtype)
      h = jax.nn.leaky_relu(h.reshape(bsz, t * f, ch), 0.4)
    return h


# ----------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------


class WaveNet(nnx.Module):
  """WaveNet vocoder conditioned on mel frames (and optionally a speaker).

  Args:
    config: a :class:`WaveNetConfig` (see :func:`wavenet_config`).
    rngs: ``nnx.Rngs`` for parameter initialization.
  """

  def __init__(self, config: WaveNetConfig, *, rngs: nnx.Rngs):
    self.config = config
    c = config
    dt = c.compute_dtype
    kw = dict(dtype=dt, kernel_init=layers.normal_init(), rngs=rngs)
    self.input_proj = nnx.Linear(1, c.residual_channels, **kw)
    self.upsampler = ConditionUpsampler(c, rngs=rngs)
    if c.speaker_source == "table":
      self.speaker_table = nnx.Embed(c.n_speakers, c.speaker_dim,
                                     embedding_init=layers.normal_init(1.0),
                                     rngs=rngs)
    else:
      self.speaker_table = None
    self.layers = nnx.List([
        ResidualLayer(c, 2 ** i, rngs=rngs)
        for _ in range(c.stacks) for i in range(c.layers_per_stack)])
    self.out1 = nnx.Linear(c.skip_channels, c.skip_channels, **kw)
    self.out2 = nnx.Linear(c.skip_channels, c.out_channels, **kw)

  # -- input checks (static shapes, raise at trace time) ---------------------

  def check_mels(self, mels: Any) -> None:
    """Raises ``ValueError`` unless ``mels`` is ``[B, F, n_mels]``."""
    c = self.config
    layers.check_mel_input(
        mels, n_mels=c.n_mels, max_frames=c.max_frames, owner="WaveNet",
        batch_axis="batch", config_name="WaveNetConfig",
        too_long_fix="cut the input into windows (random_window) or raise "
        "WaveNetConfig.max_frames")

  def global_condition(self, batch_size: int,
                       speaker_ids: Optional[Array],
                       speaker_vectors: Optional[Array]) -> Optional[Array]:
    """The speaker vector [B, D] in the compute dtype, or None.

    Args:
      batch_size: B.
      speaker_ids: [B] ids (``speaker_source="table"``).
      speaker_vectors: [B, speaker_dim] (``speaker_source="vector"``).
    """
    c = self.config
    if c.speaker_source == "none":
      return None
    if c.speaker_source == "table":
      if speaker_ids is None:
        raise ValueError(
            "WaveNetConfig.speaker_source='table' needs speaker_ids [B]; pass "
            "speaker_ids=batch.speaker_ids.")
      return self.speaker_table(jnp.asarray(speaker_ids, jnp.int32)).astype(
          c.compute_dtype)
    if speaker_vectors is None or np.shape(speaker_vectors) != (
        batch_size, c.speaker_dim):
      raise ValueError(
          "WaveNetConfig.speaker_source='vector' needs speaker_vectors of "
          f"shape [{batch_size}, speaker_dim={c.speaker_dim}], got "
          f"{None if speaker_vectors is None else np.shape(speaker_vectors)}.")
    return jnp.asarray(speaker_vectors).astype(c.compute_dtype)

  # -- building blocks shared by training and both generators ----------------

  def condition(self, mels: Array, frame_mask: Optional[Array] = None
               ) -> Array:
    """Upsampled local conditioning ``[B, F * hop, cond_channels]``."""
    self.check_mels(mels)
    return self.upsampler(mels, frame_mask)

  def input_value(self, audio: Array) -> Array:
    """The network's view of a sample: the value that generation feeds back.

    ``"mu_law"``: the companded level ``2 q / (Q - 1) - 1`` of the mu-law
    class ``q``; ``"mol"``: the sample rounded to the bin grid.
    """
    c = self.config
    if c.output == "mu_law":
      q = mu_law_encode(audio, c.quantization_channels)
      return 2.0 * q.astype(jnp.float32) / (c.quantization_channels - 1) - 1.0
    return quantize_to_bins(audio, c.mol_bins)

  def stack(self, inputs: Array, cond: Array, g: Optional[Array]) -> Array:
    """Runs the network on already-shifted inputs.

    Args:
      inputs: [B, T] network inputs (``input_value`` of samples ``t - 1``).
      cond: [B, T, Cc] upsampled conditioning aligned with ``inputs``.
      g: [B, D] speaker vector or None.

    Returns:
      [B, T, out_channels] float32 logits / mixture parameters.
    """
    x = self.input_proj(inputs[..., None].astype(self.config.compute_dtype))
    skips = None
    for layer in self.layers:
      x, s = layer(x, cond, g)
      skips = s if skips is None else skips + s
    h = self.out1(jax.nn.relu(skips))
    return self.out2(jax.nn.relu(h)).astype(jnp.float32)

  def __call__(self, inputs: Array, mels: Array,
               speaker_ids: Optional[Array] = None,
               speaker_vectors: Optional[Array] = None,
               frame_mask: Optional[Array] = None) -> Array:
    """Teacher-forced forward pass.

    Args:
      inputs: [B, S] shifted network inputs (see :meth:`shift_inputs`).
      mels: [B, F, M] conditioning with ``S = F * hop``.
      speaker_ids: [B] ids for ``speaker_source="table"``.
      speaker_vectors: [B, D] for ``speaker_source="vector"``.
      frame_mask: optional [B, F] bool, False frames are zeroed.

    Returns:
      [B, S, out_channels] float32.
    """
    c = self.config
    cond = self.condition(mels, frame_mask)
    if inputs.shape[:2] != cond.shape[:2]:
      raise ValueError(
          f"WaveNet inputs have shape {inputs.shape} but the mels give "
          f"{cond.shape[1]} = frames * hop_length ({c.hop_length}) samples; "
          "cut aligned windows with random_window.")
    g = self.global_condition(inputs.shape[0], speaker_ids, speaker_vectors)
    return self.stack(inputs, cond, g)

  def shift_inputs(self, audio: Array) -> Array:
    """[B, S] audio -> [B, S] inputs: ``input_value(audio[t-1])``, 0 at t=0."""
    v = self.input_value(audio)
    return jnp.pad(v[:, :-1], ((0, 0), (1, 0)))

  def log_prob(self, out: Array, audio: Array) -> Array:
    """Per-sample log-likelihood [B, S] of ``audio`` under outputs ``out``."""
    c = self.config
    if c.output == "mu_law":
      target = mu_law_encode(audio, c.quantization_channels)
      logp = jax.nn.log_softmax(out, axis=-1)
      return jnp.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
    return discretized_mol_log_prob(out, quantize_to_bins(audio, c.mol_bins),
                                    c.mol_bins)

  def loss(self, batch: VocoderBatch,
           speaker_vectors: Optional[Array] = None
          ) -> Tuple[Array, Dict[str, Array]]:
    """Mean negative log-likelihood (nats per sample) over valid samples.

    Args:
      batch: a :class:`metatts.types.VocoderBatch`; samples at or after
        ``audio_lengths`` are masked out (padding never changes the loss:
        mel frames starting after the last valid sample are zeroed, and the
        network is causal in the audio).
      speaker_vectors: [B, D] when ``speaker_source="vector"``.

    Returns:
      ``(loss, aux)`` with aux ``nll`` (= loss), ``num_samples`` and, for
      ``"mu_law"``, teacher-forced ``accuracy``.
    """
    c = self.config
    self.check_mels(batch.mels)
    audio = jnp.asarray(batch.audio, jnp.float32)
    bsz, n = audio.shape
    frames = batch.mels.shape[1]
    if n != frames * c.hop_length:
      raise ValueError(
          f"VocoderBatch.audio has {n} samples but mels have {frames} frames "
          f"x hop_length {c.hop_length} = {frames * c.hop_length}; cut "
          "aligned windows with random_window / make_vocoder_batch.")
    lengths = jnp.asarray(batch.audio_lengths, jnp.int32)
    mask = jnp.arange(n)[None, :] < lengths[:, None]  # [B, S]
    frame_mask = (jnp.arange(frames)[None, :] * c.hop_length <
                  lengths[:, None])  # [B, F]
    out = self(self.shift_inputs(audio), batch.mels, batch.speaker_ids,
               speaker_vectors, frame_mask)
    logp = self.log_prob(out, audio)
    count = jnp.maximum(mask.sum(), 1)
    nll = -jnp.where(mask, logp, 0.0).sum() / count
    aux = {"nll": nll, "num_samples": mask.sum()}
    if c.output == "mu_law":
      hit = jnp.argmax(out, -1) == mu_law_encode(audio,
                                                 c.quantization_channels)
      aux["accuracy"] = jnp.where(mask, hit, False).sum() / count
    return nll, aux


def wavenet_loss(model: WaveNet, batch: VocoderBatch
                ) -> Tuple[Array, Dict[str, Array]]:
  """``loss_fn(model, batch) -> (loss, aux)`` for ``metatts.functional``."""
  return model.loss(batch)


# ----------------------------------------------------------------------------
# Sampling (shared by both generators: same key -> same draw)
# ----------------------------------------------------------------------------


def _categorical(key: Array, logits: Array) -> Array:
  """One categorical draw per row of ``logits`` [B, C] by inverse CDF.

  Uses a single uniform number per row (``jax.random.categorical`` draws
  ``C`` Gumbel numbers per row, which dominated the cost of a generation
  step on CPU for C = 256).
  """
  u = jax.random.uniform(key, logits.shape[:-1])  # [B]
  cdf = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)  # [B, C]
  idx = jnp.sum(cdf < u[..., None] * cdf[..., -1:], axis=-1)
  return jnp.minimum(idx, logits.shape[-1] - 1).astype(jnp.int32)


def _sample(config: WaveNetConfig, out: Array, key: Array,
            temperature: float) -> Tuple[Array, Array]:
  """Draws one sample per row of ``out`` [B, C].

  Returns:
    (audio sample [B] float32, next network input [B] float32).
  """
  if config.output == "mu_law":
    q = _categorical(key, out / temperature)
    sample = mu_law_decode(q, config.quantization_channels)
    nxt = 2.0 * q.astype(jnp.float32) / (config.quantization_channels - 1) - 1.
    return sample, nxt
  k_pi, k_u = jax.random.split(key)
  logit_pi, mu, log_s = jnp.split(out, 3, axis=-1)
  comp = _categorical(k_pi, logit_pi)  # [B]
  mu = jnp.take_along_axis(mu, comp[:, None], -1)[:, 0]
  log_s = jnp.maximum(jnp.take_along_axis(log_s, comp[:, None], -1)[:, 0],
                      _LOG_SCALE_MIN)
  u = jax.random.uniform(k_u, mu.shape, minval=1e-5, maxval=1.0 - 1e-5)
  x = mu + temperature * jnp.exp(log_s) * (jnp.log(u) - jnp.log1p(-u))
  sample = quantize_to_bins(x, config.mol_bins)
  return sample, sample


def _generation_setup(model: WaveNet, mels: Array,
                      speaker_ids: Optional[Array],
                      speaker_vectors: Optional[Array]):
  cond = model.condition(jnp.asarray(mels))  # [B, S, Cc]
  g = model.global_condition(cond.shape[0], speaker_ids, speaker_vectors)
  return cond, g


def generate(model: WaveNet, mels: Array, key: Array,
             speaker_ids: Optional[Array] = None,
             speaker_vectors: Optional[Array] = None,
             temperature: float = 1.0) -> Array:
  """Fast autoregressive generation with per-layer queues (Paine et al. 2016).

  Each residual layer with dilation ``d`` keeps a ring buffer of its last
  ``(K - 1) d`` inputs [B, (K-1) d, R]; at step ``t`` it reads the taps
  ``t - (K-1) d, ..., t - d`` from the buffer, adds the current input,
  and overwrites slot ``t mod (K-1) d`` (the oldest entry, no longer needed).
  One step is therefore O(layers) instead of O(receptive field).

  Args:
    model: a :class:`WaveNet`.
    mels: [B, F, M] conditioning frames.
    key: PRNG key; sample ``t`` uses ``jax.random.fold_in(key, t)``.
    speaker_ids: [B] for ``speaker_source="table"``.
    speaker_vectors: [B, D] for ``speaker_source="vector"``.
    temperature: softmax temperature (mu-law) / scale multiplier (MoL).

  Returns:
    [B, F * hop] float32 waveform in [-1, 1].
  """
  c = model.config
  cond, g = _generation_setup(model, mels, speaker_ids, speaker_vectors)
  bsz, n, _ = cond.shape
  dt = c.compute_dtype
  sizes = [(c.kernel_size - 1) * layer.conv.dilation for layer in model.layers]
  queues0 = tuple(jnp.zeros((bsz, q, c.residual_channels), dt) for q in sizes)

  def body(carry, xs):
    prev, queues = carry
    t, c_t = xs
    x = model.input_proj(prev[:, None].astype(dt))  # [B, R]
    skips = None
    new_queues = []
    for layer, buf, q in zip(model.layers, queues, sizes):
      d = layer.conv.dilation
      taps = []
      for j in range(c.kernel_size - 1, 0, -1):  # delays (K-1)d ... d
        slot = jnp.mod(t - j * d, q)
        taps.append(jax.lax.dynamic_index_in_dim(buf, slot, 1, False))
      taps.append(x)
      buf = jax.lax.dynamic_update_index_in_dim(buf, x.astype(dt),
                                                jnp.mod(t, q), 1)
      new_queues.append(buf)
      x, s = layer.step(taps, c_t, g)
      skips = s if skips is None else skips + s
    h = model.out1(jax.nn.relu(skips))
    out = model.out2(jax.nn.relu(h)).astype(jnp.float32)
    sample, nxt = _sample(c, out, jax.random.fold_in(key, t), temperature)
    return (nxt, tuple(new_queues)), sample

  init = (jnp.zeros((bsz,), jnp.float32), queues0)
  xs = (jnp.arange(n), jnp.swapaxes(cond, 0, 1))
  _, samples = jax.lax.scan(body, init, xs)
  return samples.T  # [B, S]


def generate_naive(model: WaveNet, mels: Array, key: Array,
                   speaker_ids: Optional[Array] = None,
                   speaker_vectors: Optional[Array] = None,
                   temperature: float = 1.0) -> Array:
  """Reference generation: each step re-runs the stack on its receptive field.

  Step ``t`` runs :meth:`WaveNet.stack` on the ``W = min(R, S)`` inputs
  ``t - W + 1 .. t`` (or ``0 .. W - 1`` while ``t < W``, where causality makes
  the not-yet-generated zeros irrelevant) and samples from the output at ``t``
  with the same key as :func:`generate`. Cost O(S * R * layers).

  Args and returns: as :func:`generate`.
  """
  c = model.config
  cond, g = _generation_setup(model, mels, speaker_ids, speaker_vectors)
  bsz, n, _ = cond.shape
  w = min(c.receptive_field, n)

  def body(carry, t):
    inputs, samples = carry  # [B, S], [B, S]
    start = jnp.clip(t - w + 1, 0, n - w)
    win_in = jax.lax.dynamic_slice_in_dim(inputs, start, w, 1)
    win_c = jax.lax.dynamic_slice_in_dim(cond, start, w, 1)
    out = model.stack(win_in, win_c, g)  # [B, W, C]
    out_t = jax.lax.dynamic_index_in_dim(out, t - start, 1, False)
    sample, nxt = _sample(c, out_t, jax.random.fold_in(key, t), temperature)
    samples = samples.at[:, t].set(sample)
    inputs = jnp.where(t + 1 < n, inputs.at[:, jnp.minimum(t + 1, n - 1)]
                       .set(nxt), inputs)
    return (inputs, samples), None

  zeros = jnp.zeros((bsz, n), jnp.float32)
  (_, samples), _ = jax.lax.scan(body, (zeros, zeros), jnp.arange(n))
  return samples


generate_jit = nnx.jit(generate, static_argnames=("temperature",))
generate_naive_jit = nnx.jit(generate_naive, static_argnames=("temperature",))


# ----------------------------------------------------------------------------
# Training windows
# ----------------------------------------------------------------------------


def random_window(rng: Union[np.random.Generator, Array], mel: Any,
                  audio: Any, num_frames: int, hop_length: int
                 ) -> Tuple[Any, Any, Any]:
  """Cuts one aligned (mel frames, audio) training window from a clip.

  Audio is first padded / truncated to ``F * hop_length`` samples (frame
  ``f`` covers samples ``f * hop .. (f + 1) * hop - 1``). The start frame is
  uniform in ``[0, F - num_frames]``; clips shorter than the window are
  zero-padded at the end and the returned length counts the real samples.

  Args:
    rng: a ``numpy.random.Generator`` (host side, returns numpy) or a JAX
      PRNG key (jittable, returns jax arrays).
    mel: [F, M] frames of one clip.
    audio: [S] waveform of the same clip.
    num_frames: window length in frames.
    hop_length: samples per frame.

  Returns:
    ``(mel_window [num_frames, M], audio_window [num_frames * hop],
    length)`` with ``length`` the number of valid samples.
  """
  if num_frames <= 0:
    raise ValueError(f"random_window num_frames={num_frames} must be > 0.")
  f_total = int(np.shape(mel)[0])
  if f_total == 0 or np.shape(audio)[0] == 0:
    raise ValueError(
        f"random_window got an empty clip (mel {np.shape(mel)}, audio "
        f"{np.shape(audio)}); drop zero-length clips before batching.")
  use_np = isinstance(rng, np.random.Generator)
  xp = np if use_np else jnp
  audio = xp.asarray(audio, xp.float32)
  mel = xp.asarray(mel, xp.float32)
  want = f_total * hop_length
  valid = min(int(audio.shape[0]), want)
  audio = xp.pad(audio[:want], (0, want - valid))
  if f_total < num_frames:
    pad_f = num_frames - f_total
    mel = xp.pad(mel, ((0, pad_f), (0, 0)))
    audio = xp.pad(audio, (0, pad_f * hop_length))
    return mel, audio, valid
  n_starts = f_total - num_frames + 1
  if use_np:
    f0 = int(rng.integers(0, n_starts))
    s0 = f0 * hop_length
    length = int(np.clip(valid - s0, 0, num_frames * hop_length))
    return (mel[f0:f0 + num_frames],
            audio[s0:s0 + num_frames * hop_length], length)
  f0 = jax.random.randint(rng, (), 0, n_starts)
  s0 = f0 * hop_length
  length = jnp.clip(valid - s0, 0, num_frames * hop_length)
  return (jax.lax.dynamic_slice_in_dim(mel, f0, num_frames, 0),
          jax.lax.dynamic_slice_in_dim(audio, s0, num_frames * hop_length, 0),
          length)


def make_vocoder_batch(rng: np.random.Generator,
                       clips: Sequence[Tuple[Any, ...]], num_frames: int,
                       hop_length: int,
                       speaker_ids: Optional[Sequence[int]] = None
                      ) -> VocoderBatch:
  """Host-side :class:`VocoderBatch` of one random window per clip.

  Args:
    rng: numpy Generator (the same seed gives the same windows).
    clips: sequence of ``(mel [F, M], audio [S])`` or ``(mel, audio,
      f0 [F])``; with F0 (all clips or none) the batch's ``f0`` holds the
      same frames as its mels (zero = unvoiced in padding).
    num_frames: window length in frames.
    hop_length: samples per frame.
    speaker_ids: one id per clip (default zeros).

  Returns:
    A numpy-backed ``VocoderBatch`` with ``B = len(clips)``.
  """
  if not clips:
    raise ValueError("make_vocoder_batch got no clips; pass at least one.")
  with_f0 = {len(c) for c in clips}
  if with_f0 not in ({2}, {3}):
    raise ValueError(
        "make_vocoder_batch needs every clip as (mel, audio) or every clip "
        f"as (mel, audio, f0); got tuples of lengths {sorted(with_f0)}.")
  mels, audios, lengths, f0s = [], [], [], []
  for clip in clips:
    mel = np.asarray(clip[0], np.float32)
    if len(clip) == 3:  # the F0 track rides along as one more mel column
      f0 = np.asarray(clip[2], np.float32).reshape(-1)
      if f0.shape[0] != mel.shape[0]:
        raise ValueError(
            f"make_vocoder_batch: F0 has {f0.shape[0]} frames but the mel "
            f"has {mel.shape[0]}; analyse F0 at the mel's frames "
            "(metatts.models.nsf.analyse_f0).")
      mel = np.concatenate([mel, f0[:, None]], axis=1)
    m, a, n = random_window(rng, mel, clip[1], num_frames, hop_length)
    if len(clip) == 3:
      m, f = m[:, :-1], m[:, -1]
      f0s.append(f)
    mels.append(m)
    audios.append(a)
    lengths.append(n)
  ids = np.zeros(len(clips), np.int32) if speaker_ids is None else (
      np.asarray(speaker_ids, np.int32))
  return VocoderBatch(mels=np.stack(mels), audio=np.stack(audios),
                      audio_lengths=np.asarray(lengths, np.int32),
                      speaker_ids=ids,
                      f0=np.stack(f0s) if f0s else None)
