"""Reference speaker encoder: a few mel clips of a speaker -> a speaker vector.

The encoder is the audio half of the cross-modal text/audio autoencoder: the
acoustic model (Tacotron-style) is conditioned on its output and both are
trained together through the mel reconstruction loss, so the vector lives in
the latent space the synthesizer uses. It gives zero-shot adaptation (encode
the support clips, 0 gradient steps) and a starting point for few-shot steps.

Architecture (per clip): masked 1-D convolutions over frames, each followed by
LayerNorm and ReLU (Ba et al. 2016; no BatchNorm, hence no running statistics
that a meta-learning inner loop would have to carry), a unidirectional masked
LSTM, a masked mean over the valid frames, and a linear projection. With
``normalize=True`` (default) the clip vector is L2-normalized (d-vector style,
Wan et al. 2018), the clip vectors of a speaker are averaged and the average
is L2-normalized again; with ``normalize=False`` the raw projections are
averaged. Padding never changes a vector: padded frames are zeroed before
every convolution, the LSTM holds its state over them and the mean divides by
the clip's own length.

Training data rule: the encoder is trained only through the reconstruction
losses of the models it conditions (and, optionally, a speaker-classification
head, see ``metatts.models.multitask``); it must never be trained on the
outputs or embeddings of a speaker-verification model used as an evaluation
judge, which would make the speaker-similarity metric circular.

References:
  Y. Jia et al., "Transfer Learning from Speaker Verification to Multispeaker
    Text-To-Speech Synthesis", NeurIPS 2018.
  S. Arik et al., "Neural Voice Cloning with a Few Samples", NeurIPS 2018
    (speaker encoding with averaging over cloning samples).
  L. Wan et al., "Generalized End-to-End Loss for Speaker Verification",
    ICASSP 2018 (L2-normalized d-vectors averaged over utterances).
  R. Skerry-Ryan et al., "Towards End-to-End Prosody Transfer for Expressive
    Speech Synthesis with Tacotron", ICML 2018 (reference encoder).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from metatts.models import layers
from metatts.models.layers import LSTM, Conv1D, apply_mask, length_mask

Array = jax.Array
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class SpeakerEncoderConfig:
  """Hyperparameters of :class:`SpeakerEncoder`.

  Attributes:
    n_mels: mel bins of the input clips.
    conv_channels: output channels of each convolution layer.
    kernel_size: taps of the convolutions.
    lstm_units: width of the LSTM.
    embed_dim: size of the speaker vector.
    normalize: L2-normalize clip vectors and their average.
    max_frames: longest accepted clip (frames).
    dtype: compute dtype ``"float32"`` or ``"bfloat16"`` (params f32).
  """

  n_mels: int = 80
  conv_channels: Tuple[int, ...] = (32, 32)
  kernel_size: int = 3
  lstm_units: int = 32
  embed_dim: int = 16
  normalize: bool = True
  max_frames: int = 2000
  dtype: str = "float32"

  def __post_init__(self):
    layers.check_choice(self, "dtype", _DTYPES)
    if not self.conv_channels:
      raise ValueError("SpeakerEncoderConfig.conv_channels must not be empty.")


_SIZES: Dict[str, Dict[str, Any]] = {
    "tiny": dict(conv_channels=(32, 32), lstm_units=32, embed_dim=16),
    "base": dict(conv_channels=(128, 128, 128), lstm_units=128,
                 embed_dim=64),
    # Close to Jia et al. 2018's encoder width (3 x 768 LSTM -> 256); one
    # LSTM layer on top of a convolutional front end here.
    "full": dict(conv_channels=(256, 256, 256), lstm_units=512,
                 embed_dim=256),
}


def speaker_encoder_config(size: str = "tiny",
                           **overrides) -> SpeakerEncoderConfig:
  """Returns the :class:`SpeakerEncoderConfig` of a named size.

  Args:
    size: ``"tiny"``, ``"base"`` or ``"full"``.
    **overrides: any config field.

  Returns:
    The config.
  """
  return layers.sized_config(SpeakerEncoderConfig, _SIZES, size, overrides,
                             "speaker encoder")


def _l2_normalize(x: Array) -> Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True),
                                       1e-12))


class SpeakerEncoder(nnx.Module):
  """Mel clips [B, T, M] (+ lengths) -> speaker vectors [B, D].

  Args:
    config: a :class:`SpeakerEncoderConfig`.
    rngs: ``nnx.Rngs`` for initialization.
  """

  def __init__(self, config: SpeakerEncoderConfig, *, rngs: nnx.Rngs):
    self.config = config
    c = config
    dt = _DTYPES[c.dtype]
    convs, norms = [], []
    width = c.n_mels
    for ch in c.conv_channels:
      convs.append(Conv1D(width, ch, c.kernel_size, padding="same", dtype=dt,
                          kernel_init=layers.normal_init(), rngs=rngs))
      norms.append(nnx.LayerNorm(ch, dtype=jnp.float32, rngs=rngs))
      width = ch
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms)
    self.lstm = LSTM(width, c.lstm_units, dtype=dt, rngs=rngs)
    self.proj = nnx.Linear(c.lstm_units, c.embed_dim, dtype=dt,
                           kernel_init=layers.normal_init(), rngs=rngs)

  def check_inputs(self, mels: Any, lengths: Any) -> None:
    """Raises ``ValueError`` on malformed clips (static checks)."""
    c = self.config
    shape = layers.check_mel_input(
        mels, n_mels=c.n_mels, max_frames=c.max_frames,
        owner="SpeakerEncoder", batch_axis="clips",
        config_name="SpeakerEncoderConfig",
        too_long_fix="crop the clips or raise max_frames")
    if tuple(np.shape(lengths)) != shape[:1]:
      raise ValueError(
          f"SpeakerEncoder lengths must have shape [{shape[0]}], got "
          f"{tuple(np.shape(lengths))}.")
    try:
      lens = np.asarray(lengths)
    except (jax.errors.TracerArrayConversionError,
            jax.errors.ConcretizationTypeError):
      lens = None  # traced under jit: values are not known here
    if lens is not None:
      if lens.min() <= 0 or lens.max() > shape[1]:
        raise ValueError(
            f"SpeakerEncoder lengths {lens.tolist()} must be in [1, "
            f"{shape[1]}] (the padded number of frames); drop zero-length "
            "clips.")

  def __call__(self, mels: Array, lengths: Array) -> Array:
    """Encodes each clip.

    Args:
      mels: [B, T, M] log-mel clips, right-padded.
      lengths: [B] valid frames per clip (>= 1).

    Returns:
      [B, D] float32 clip vectors (unit norm when ``normalize``).
    """
    self.check_inputs(mels, lengths)
    lengths = jnp.asarray(lengths, jnp.int32)
    mask = length_mask(lengths, mels.shape[1])  # [B, T]
    h = jnp.asarray(mels)
    for conv, norm in zip(self.convs, self.norms):
      h = conv(h, mask)  # zeroes padded inputs first
      h = jax.nn.relu(norm(h.astype(jnp.float32)))
      h = apply_mask(h, mask)
    h = self.lstm(h, mask)  # [B, T, H], zero at padding
    pooled = h.sum(1) / lengths[:, None].astype(h.dtype)  # masked mean
    e = self.proj(pooled).astype(jnp.float32)
    return _l2_normalize(e) if self.config.normalize else e

  def embed_speakers(self, mels: Array, lengths: Array,
                     clip_mask: Optional[Array] = None) -> Array:
    """Speaker vectors from several clips per speaker.

    Args:
      mels: [N, K, T, M] K clips for each of N speakers.
      lengths: [N, K] valid frames per clip.
      clip_mask: optional [N, K] bool, False for missing clips (their
        ``lengths`` must still be >= 1, e.g. a repeated clip).

    Returns:
      [N, D]: the mean of each speaker's clip vectors (order-invariant),
      re-normalized when ``normalize``.
    """
    n, k = np.shape(mels)[:2]
    if tuple(np.shape(lengths)) != (n, k):
      raise ValueError(
          f"embed_speakers lengths must have shape [{n}, {k}] like mels "
          f"[N, K, T, M], got {tuple(np.shape(lengths))}.")
    flat = self(jnp.reshape(mels, (n * k,) + tuple(np.shape(mels)[2:])),
                jnp.reshape(jnp.asarray(lengths), (n * k,)))
    vecs = flat.reshape(n, k, -1)
    if clip_mask is None:
      mean = vecs.mean(1)
    else:
      w = jnp.asarray(clip_mask, jnp.float32)[..., None]
      mean = (vecs * w).sum(1) / jnp.maximum(w.sum(1), 1.0)
    return _l2_normalize(mean) if self.config.normalize else mean


def speaker_vector(encoder: SpeakerEncoder, mels: Array,
                   lengths: Array) -> Array:
  """The speaker vector [D] of one speaker from K clips [K, T, M] (+ [K]).

  This is the zero-shot entry point: pass the support clips of a new
  speaker and condition the synthesizer on the result.
  """
  return encoder.embed_speakers(jnp.asarray(mels)[None],
                                jnp.asarray(lengths)[None])[0]
