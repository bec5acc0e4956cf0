"""Source-filter WaveNet vocoder (NSF-style) trained with a spectral loss.

The autoregressive WaveNet (``metatts.models.wavenet``) learns one sample at
a time by maximum likelihood; on a 2-core CPU its held-out likelihood never
left the uniform level within an hour. This model keeps WaveNet's filter (a
stack of gated, dilated causal convolutions with residual and skip paths,
conditioned on the upsampled mel) but removes the autoregression: the stack
turns an *excitation* signal into speech, all samples at once, as in the
neural source-filter models of Wang, Takaki and Yamagishi (2019).

* **Source.** A sum of ``harmonics`` sines at multiples of the frame F0
  (zero above Nyquist), with Gaussian noise added, merged by a learned
  linear map and ``tanh`` (NSF's source module). Unvoiced frames get noise
  only.
* **F0.** A frame-level predictor (:class:`F0Predictor`: a residual stack
  of dilated convolutions over mel frames) classifies each frame's F0 into
  ``f0_bins`` log-spaced bins (cross-entropy against a Gaussian-blurred
  target, as pitch trackers such as CREPE do) and gives a voicing logit.
  Classification replaced L1 regression on log F0: on the study's held-out
  clips it cut the RMSE against WORLD from about 150 to about 75 cents and
  the gross (> 200 cents) errors from 10% to 1.5% (docs/results/vocoder.md).
  Training excites the filter with the analysed F0 of the clip
  (``VocoderBatch.f0``, WORLD DIO + StoneMask at the mel's frame times) and
  fits the predictor to it; synthesis uses the prediction, so the vocoder
  needs nothing but a mel (a Tacotron's output works).
* **Envelope** (``envelope=True``, the default). A DSP vocoder from the
  mel alone, as LPCNet computes its linear prediction from the features:
  with ``shaping="convolution"`` (the sizes' default,
  :func:`convolved_excitation`) zero-phase pulses at F0 (every harmonic
  below Nyquist) or noise where unvoiced, of one spectral density, are
  filtered hop by hop by linear convolution with the zero-phase impulse
  response of the spectral envelope the mel gives back (the pseudo-inverse
  of the mel filterbank); with ``"stft"`` (session 10's,
  :func:`shaped_excitation`) random-phase harmonics are reshaped bin by bin
  in the STFT domain, which cost about 0.1 of speaker similarity
  (docs/results/vocoder.md). This DSP signal is both an input of the filter
  and, times a learned gain, the base of the output; the filter adds its
  correction (its last layer starts at zero, so the untrained model is the
  DSP vocoder).
* **Filter.** ``metatts.models.wavenet.ResidualLayer`` blocks (dilations
  ``1, 2, ..., 2**(L-1)`` per stack) over the source (and the shaped
  excitation), conditioned on the mel through WaveNet's transposed-
  convolution upsampler; the skip sum becomes one sample per step.
* **Loss.** Multi-resolution STFT loss (spectral convergence + log-magnitude
  L1, averaged over three resolutions; Yamamoto, Song and Kim 2020, Arik et
  al. 2019) plus the F0 predictor's loss (voicing BCE + the bins'
  cross-entropy over voiced frames), weighted by ``f0_weight``. The two
  parts share no parameter: the filter is excited by the analysed F0, so
  the predictor can also be fitted alone (:func:`fit_f0_predictor`) on
  windows longer than the filter's.

The excitation is random (initial phases and noise). Training draws it from
a key that is a function of the batch (so ``loss(params, batch)`` stays
pure, as the meta-learners need); synthesis takes an explicit key.

References:
  X. Wang, S. Takaki, J. Yamagishi, "Neural source-filter waveform models
    for statistical parametric speech synthesis", IEEE/ACM TASLP 2019.
  A. van den Oord et al., "WaveNet: A Generative Model for Raw Audio", 2016.
  R. Yamamoto, E. Song, J.-M. Kim, "Parallel WaveGAN", ICASSP 2020 (the
    multi-resolution STFT loss).
  S. O. Arik, H. Jun, G. Diamos, "Fast spectrogram inversion using
    multi-head convolutional neural networks", IEEE SPL 2019 (spectral
    convergence + log-magnitude loss).
  M. Morise, F. Yokomori, K. Ozawa, "WORLD", IEICE Trans. 2016 (F0 targets).
  J. W. Kim, J. Salamon, P. Li, J. P. Bello, "CREPE: A convolutional
    representation for pitch estimation", ICASSP 2018 (F0 as
    classification over log-spaced bins, local weighted-average decoding).
  J.-M. Valin, J. Skoglund, "LPCNet: Improving neural speech synthesis
    through linear prediction", ICASSP 2019 (the envelope from the features).
  A. V. Oppenheim, R. W. Schafer, "Discrete-Time Signal Processing"
    (overlap-add linear convolution by FFT; the Dirichlet kernel).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from metatts.audio import features as afeat
from metatts.models import layers
from metatts.models import wavenet
from metatts.types import VocoderBatch

Array = jax.Array



@dataclasses.dataclass(frozen=True)
class NSFConfig:
  """Hyperparameters of :class:`NSFWaveNet`.

  Attributes:
    n_mels, sample_rate, hop_length, upsample_factors: as in
      ``WaveNetConfig`` (``prod(upsample_factors) == hop_length``).
    harmonics: sines in the excitation (F0 and its overtones).
    sine_amp: amplitude of each sine; unvoiced noise has ``sine_amp / 3``.
    noise_std: standard deviation of the noise added to voiced excitation.
    frame_channels: width of the F0 predictor's frame convolutions.
    f0_dilations: dilations of the F0 predictor's residual kernel-3 frame
      convolutions (receptive field ``3 + 2 * sum(f0_dilations)`` frames).
    f0_bins, f0_min, f0_max: the predictor's classes: ``f0_bins``
      log-spaced F0 values from ``f0_min`` to ``f0_max`` Hz.
    f0_sigma_bins: standard deviation (in bins) of the Gaussian-blurred
      target around the analysed F0.
    stacks, layers_per_stack, kernel_size, residual_channels,
      gate_channels, skip_channels, cond_channels: the filter, as in
      ``WaveNetConfig``.
    stft_resolutions: ``(n_fft, hop, win)`` triples of the spectral loss.
    f0_weight: weight of the F0 predictor's loss.
    envelope: shape a full-band excitation with the mel's own spectral
      envelope before the filter (below); False feeds the filter the
      source alone, as NSF does.
    shaping: how the envelope shapes the excitation: ``"convolution"``
      (:func:`convolved_excitation`: density-normalized zero-phase pulses
      or noise, each hop filtered by its frame's zero-phase envelope
      response by linear convolution; the sizes' default) or ``"stft"``
      (:func:`shaped_excitation`: random-phase harmonics whitened and
      reshaped bin by bin in the STFT domain, session 10's DSP half; what
      an export without this field means).
    n_fft, win_length, fmin, fmax, log_floor: the mel features' STFT and
      filterbank (``metatts.audio.MelConfig``), used to invert the mel into
      the envelope; they must be the acoustic features'.
    max_frames: longest accepted mel (frames).
    dtype: compute dtype, ``"float32"`` or ``"bfloat16"``.
  """

  n_mels: int = 80
  sample_rate: int = 16000
  hop_length: int = 200
  upsample_factors: Tuple[int, ...] = (10, 20)
  harmonics: int = 8
  sine_amp: float = 0.1
  noise_std: float = 0.003
  frame_channels: int = 64
  f0_dilations: Tuple[int, ...] = (1, 2, 4, 8)
  f0_bins: int = 128
  f0_min: float = 40.0
  f0_max: float = 800.0
  f0_sigma_bins: float = 1.0
  stacks: int = 2
  layers_per_stack: int = 8
  kernel_size: int = 3
  residual_channels: int = 32
  gate_channels: int = 32
  skip_channels: int = 32
  cond_channels: int = 32
  stft_resolutions: Tuple[Tuple[int, int, int], ...] = (
      (512, 100, 400), (1024, 200, 800), (256, 50, 200))
  f0_weight: float = 1.0
  envelope: bool = True
  shaping: str = "stft"
  n_fft: int = 1024
  win_length: int = 800
  fmin: float = 55.0
  fmax: Optional[float] = 7600.0
  log_floor: float = 1e-5
  max_frames: int = 4000
  dtype: str = "float32"
  # Fixed: read by the voice path like WaveNet's (a voice's vocoder has no
  # speaker input; adaptation changes its weights).
  speaker_source: str = "none"

  def __post_init__(self):
    if self.speaker_source != "none":
      raise ValueError(
          f"NSFConfig.speaker_source={self.speaker_source!r}: the source-"
          "filter vocoder adapts its weights and takes no speaker input; "
          "leave it 'none'.")
    self.filter_config()  # validates the filter's fields
    self.mel_config().validate()  # and the features' STFT / filterbank
    if self.harmonics < 1:
      raise ValueError(f"NSFConfig.harmonics={self.harmonics} must be >= 1.")
    if self.shaping not in SHAPINGS:
      raise ValueError(f"NSFConfig.shaping={self.shaping!r}; use one of "
                       f"{SHAPINGS}.")
    if not 0 < self.f0_min < self.f0_max or self.f0_bins < 2:
      raise ValueError(
          f"NSFConfig F0 classes: f0_min={self.f0_min}, f0_max={self.f0_max},"
          f" f0_bins={self.f0_bins}; need 0 < f0_min < f0_max and "
          "f0_bins >= 2.")
    if self.f0_sigma_bins <= 0 or any(d < 1 for d in self.f0_dilations):
      raise ValueError(
          f"NSFConfig.f0_sigma_bins={self.f0_sigma_bins} must be > 0 and "
          f"f0_dilations={self.f0_dilations} all >= 1.")
    for n_fft, hop, win in self.stft_resolutions:
      if not 0 < hop <= win <= n_fft:
        raise ValueError(
            f"NSFConfig.stft_resolutions has (n_fft={n_fft}, hop={hop}, "
            f"win={win}); each needs 0 < hop <= win <= n_fft.")

  def mel_config(self) -> afeat.MelConfig:
    """The features' mel config (the envelope inverts it)."""
    return afeat.MelConfig(
        sample_rate=self.sample_rate, n_fft=self.n_fft,
        win_length=self.win_length, hop_length=self.hop_length,
        n_mels=self.n_mels, fmin=self.fmin, fmax=self.fmax,
        log_floor=self.log_floor)

  def filter_config(self) -> wavenet.WaveNetConfig:
    """The WaveNet config of the filter stack (shared residual layers)."""
    return wavenet.WaveNetConfig(
        n_mels=self.n_mels, sample_rate=self.sample_rate,
        hop_length=self.hop_length, upsample_factors=self.upsample_factors,
        stacks=self.stacks, layers_per_stack=self.layers_per_stack,
        kernel_size=self.kernel_size,
        residual_channels=self.residual_channels,
        gate_channels=self.gate_channels, skip_channels=self.skip_channels,
        cond_channels=self.cond_channels, max_frames=self.max_frames,
        dtype=self.dtype)

  @property
  def receptive_field(self) -> int:
    """Past excitation samples each output sees (closed form)."""
    return self.filter_config().receptive_field

  @property
  def compute_dtype(self):
    return self.filter_config().compute_dtype

  def f0_bin_log_hz(self) -> np.ndarray:
    """[f0_bins] natural log of each F0 class's frequency (Hz)."""
    return np.linspace(math.log(self.f0_min), math.log(self.f0_max),
                       self.f0_bins).astype(np.float32)


_SIZES: Dict[str, Dict[str, Any]] = {
    # Unit tests: receptive field 31 samples.
    "tiny": dict(stacks=1, layers_per_stack=4, kernel_size=2,
                 residual_channels=8, gate_channels=8, skip_channels=8,
                 cond_channels=8, frame_channels=16, harmonics=4,
                 f0_dilations=(1, 2), f0_bins=32),
    # The CPU study (docs/results/vocoder.md): 2 x 8 layers of kernel 3,
    # receptive field 1021 samples (64 ms at 16 kHz); 64 harmonics reach
    # Nyquist for F0 >= 125 Hz.
    "base": dict(harmonics=64),
    # GPU-sized: 3 x 10 layers, receptive field 6139 samples.
    "full": dict(stacks=3, layers_per_stack=10, residual_channels=64,
                 gate_channels=64, skip_channels=64, cond_channels=64,
                 frame_channels=128, harmonics=64),
}


SHAPINGS = ("convolution", "stft")


def nsf_config(size: str = "base", **overrides) -> NSFConfig:
  """The :class:`NSFConfig` of a named size (``tiny``/``base``/``full``).

  New models shape by ``"convolution"`` unless ``shaping`` is given (the
  dataclass default stays ``"stft"``, what older exports were trained with).
  """
  kw = dict(overrides)
  kw.setdefault("shaping", "convolution")
  if "upsample_factors" in kw:
    kw["upsample_factors"] = tuple(kw["upsample_factors"])
  if "stft_resolutions" in kw:
    kw["stft_resolutions"] = tuple(tuple(int(v) for v in r)
                                   for r in kw["stft_resolutions"])
  return layers.sized_config(NSFConfig, _SIZES, size, kw, "NSF")


# ----------------------------------------------------------------------------
# The source
# ----------------------------------------------------------------------------


def _sample_f0_and_cycles(f0_frames: Array, hop_length: int,
                          sample_rate: int) -> Tuple[Array, Array]:
  """Frame F0 [B, F] -> per-sample F0 [B, F * hop] and its phase in cycles.

  Each frame's F0 holds for ``hop`` samples; the phase is the running sum
  of ``F0 / sample_rate``, kept in [0, 1) so long clips keep their
  precision.
  """
  f0 = jnp.repeat(jnp.asarray(f0_frames, jnp.float32), hop_length, axis=1)
  return f0, jnp.cumsum(f0 / sample_rate, axis=1) % 1.0


def excitation(f0_frames: Array, key: Array, *, hop_length: int,
               sample_rate: int, harmonics: int, sine_amp: float,
               noise_std: float) -> Array:
  """Harmonic-plus-noise excitation at the sample rate.

  Args:
    f0_frames: [B, F] F0 in Hz per frame, 0 where unvoiced.
    key: PRNG key of the initial phases and the noise.
    hop_length: samples per frame (each frame's F0 holds for ``hop``
      samples).
    sample_rate: Hz.
    harmonics: number of sines (multiples 1..H of F0).
    sine_amp: amplitude of each sine.
    noise_std: noise standard deviation in voiced samples (unvoiced samples
      get ``sine_amp / 3``).

  Returns:
    [B, F * hop, harmonics] float32: column ``k`` is the ``(k+1)``-th
    harmonic plus noise (the noise is shared by the columns).
  """
  f0, cycles = _sample_f0_and_cycles(f0_frames, hop_length, sample_rate)
  voiced = (f0 > 0)[..., None]
  k = jnp.arange(1, harmonics + 1, dtype=jnp.float32)
  pkey, nkey = jax.random.split(key)
  phi = jax.random.uniform(pkey, (f0.shape[0], 1, harmonics))
  audible = (f0[..., None] * k) < (sample_rate / 2)
  sines = sine_amp * jnp.sin(2 * jnp.pi * (cycles[..., None] * k + phi))
  sines = jnp.where(voiced & audible, sines, 0.0)
  std = jnp.where(voiced, noise_std, sine_amp / 3)
  noise = std * jax.random.normal(nkey, f0.shape + (1,))
  return sines + noise


def pulse_excitation(f0_frames: Array, key: Array, *, hop_length: int,
                     sample_rate: int) -> Array:
  """Zero-phase pulses (voiced) or noise (unvoiced) of one spectral density.

  Voiced samples are ``sqrt(2 F0 / sr) * sum_{k=1..K} cos(2 pi k phase)``
  with every harmonic below Nyquist (``K = ceil(sr / 2F0) - 1``), a
  band-limited pulse at the start of each period, summed in closed form
  (the Dirichlet kernel ``sin((K + 1/2) t) / (2 sin(t / 2)) - 1/2``, and
  ``K - t^2 K (K + 1)(2K + 1) / 12`` within 1e-3 rad of a pulse);
  unvoiced samples are Gaussian noise of variance 1/2. Both have a one-sided
  power spectral density of ``1 / sample_rate`` whatever F0, so an envelope
  filter sets the loudness of voiced and unvoiced frames alike (as WORLD
  scales its pulses by the period).

  Returns:
    [B, F * hop] float32.
  """
  f0, cycles = _sample_f0_and_cycles(f0_frames, hop_length, sample_rate)
  voiced = f0 > 0
  safe_f0 = jnp.where(voiced, f0, 1.0)
  count = jnp.ceil(sample_rate / (2.0 * safe_f0)) - 1.0
  # The kernel is even and 2 pi-periodic: take the phase in [-pi, pi], so
  # sin(phi / 2) is accurate next to both ends of a period.
  phi = 2.0 * jnp.pi * (cycles - jnp.round(cycles))
  near = jnp.abs(phi) < 1e-3  # at the pulse: its Taylor series instead
  half = jnp.sin(0.5 * jnp.where(near, 1.0, phi))
  ratio = jnp.sin((count + 0.5) * phi) / (2.0 * half) - 0.5
  taylor = count - phi ** 2 * count * (count + 1) * (2 * count + 1) / 12.0
  pulses = jnp.where(near, taylor, ratio)
  pulses = pulses * jnp.sqrt(2.0 * safe_f0 / sample_rate)
  noise = jnp.sqrt(0.5) * jax.random.normal(key, f0.shape)
  return jnp.where(voiced, pulses, noise)


def envelope_filter(excitation: Array, mels: Array,
                    mel_config: afeat.MelConfig) -> Array:
  """Filters ``excitation`` hop by hop with the mel's envelope response.

  The envelope of each frame is the mel inverted by ``mel_to_linear`` (the
  filterbank's non-negative pseudo-inverse), divided by the STFT magnitude
  that a unit-density excitation has (``sqrt(sum(window^2) / 2)``), so the
  output's STFT magnitude follows the envelope. Its zero-phase impulse
  response (``n_fft`` taps, centred) filters the two hops of excitation
  around the frame, under a Hann window that sums to one at the hop, by
  linear convolution (FFTs of ``2 hop + n_fft`` rounded up to a power of
  two, no wrap-around); the pieces are overlap-added. Compared with
  reshaping the excitation's STFT bin by bin (``shaped_excitation``), this
  keeps each pulse's response whole: on 32 real clips of the embedded
  corpus, with their WORLD F0, the speaker similarity of the result is
  WORLD's resynthesis from the same mel envelope (0.855 vs 0.843) instead
  of 0.76 (benchmarks/excitation_probe.py, docs/results/vocoder.md).

  Args:
    excitation: [B, F * hop] (``pulse_excitation``).
    mels: [B, F, M] log-mel.
    mel_config: the features' mel config.

  Returns:
    [B, F * hop] float32.
  """
  bsz, frames = mels.shape[0], mels.shape[1]
  hop, n = mel_config.hop_length, mel_config.n_fft
  window = afeat.stft_window(mel_config)
  unit = math.sqrt(float(np.sum(np.square(window))) / 2.0)
  env = afeat.mel_to_linear(mels.astype(jnp.float32), mel_config) / unit
  h = jnp.roll(jnp.fft.irfft(env, n=n, axis=-1), n // 2, axis=-1)  # [B,F,n]
  # Two hops around each frame centre (sample t * hop), Hann-weighted.
  x = jnp.pad(excitation.astype(jnp.float32), ((0, 0), (hop, hop)))
  idx = np.arange(frames)[:, None] * hop + np.arange(2 * hop)[None]
  hann = np.sin(np.pi * np.arange(2 * hop) / (2 * hop)) ** 2
  seg = x[:, idx] * jnp.asarray(hann, jnp.float32)  # [B, F, 2 hop]
  size = 2 * hop + n
  fft_n = 1 << (size - 1).bit_length()
  y = jnp.fft.irfft(jnp.fft.rfft(seg, n=fft_n, axis=-1) *
                    jnp.fft.rfft(h, n=fft_n, axis=-1), n=fft_n, axis=-1)
  blocks = -(-size // hop)
  y = jnp.pad(y[..., :size], ((0, 0), (0, 0), (0, blocks * hop - size)))
  y = y.reshape(bsz, frames, blocks, hop)
  out = jnp.zeros((bsz, frames + blocks - 1, hop), jnp.float32)
  for j in range(blocks):  # overlap-add: piece j of frame t lands at t + j
    out = out.at[:, j:j + frames].add(y[:, :, j])
  out = out.reshape(bsz, -1)
  start = hop + n // 2  # the segment's padding and the response's centre
  return out[:, start:start + frames * hop]


def convolved_excitation(mels: Array, f0_frames: Array, key: Array,
                         mel_config: afeat.MelConfig) -> Array:
  """The DSP half by convolution: ``envelope_filter(pulse_excitation)``.

  Args:
    mels: [B, F, M] log-mel.
    f0_frames: [B, F] Hz, 0 = unvoiced.
    key: PRNG key of the unvoiced noise.
    mel_config: the features' mel config.

  Returns:
    [B, F * hop] float32.
  """
  e = pulse_excitation(f0_frames, key, hop_length=mel_config.hop_length,
                       sample_rate=mel_config.sample_rate)
  return envelope_filter(e, mels, mel_config)


def shaped_excitation(mels: Array, f0_frames: Array, key: Array,
                      mel_config: afeat.MelConfig, harmonics: int) -> Array:
  """A full-band excitation shaped by the mel's spectral envelope.

  The DSP half of the vocoder, in the spirit of LPCNet's (Valin and Skoglund
  2019) spectral envelope computed from the features: unit-amplitude
  harmonics of F0 (voiced frames) or unit Gaussian noise (unvoiced frames)
  are analysed with the features' STFT; each frame is divided by its own
  envelope and multiplied by the envelope that the mel gives back (both
  measured the same way: the mel of the magnitude, then ``mel_to_linear``,
  the non-negative pseudo-inverse of the filterbank), so the shaped frame
  has the target's mel whatever the harmonic spacing, and the result is
  overlap-added back. With the clip's own F0 this alone resynthesizes
  speech (docs/results/vocoder.md); the WaveNet filter learns what it
  misses.

  Args:
    mels: [B, F, M] log-mel.
    f0_frames: [B, F] Hz, 0 = unvoiced.
    key: PRNG key (harmonic phases, noise).
    mel_config: the features' mel config.
    harmonics: number of harmonics (those above Nyquist are dropped).

  Returns:
    [B, F * hop] float32.
  """
  hop = mel_config.hop_length
  sr = mel_config.sample_rate
  bsz, frames = f0_frames.shape
  f0, cycles = _sample_f0_and_cycles(f0_frames, hop, sr)
  k = jnp.arange(1, harmonics + 1, dtype=jnp.float32)
  pkey, nkey = jax.random.split(key)
  phi = jax.random.uniform(pkey, (bsz, 1, harmonics))
  on = (f0[..., None] * k < sr / 2) & (f0[..., None] > 0)
  harm = jnp.where(on, jnp.sin(2 * jnp.pi * (cycles[..., None] * k + phi)),
                   0.0).sum(-1)  # [B, S]
  noise = jax.random.normal(nkey, f0.shape)
  voiced = (f0_frames > 0).astype(jnp.float32)
  voiced = jnp.concatenate([voiced, voiced[:, -1:]], axis=1)[..., None]
  spec = (afeat.stft(harm, mel_config) * voiced +
          afeat.stft(noise, mel_config) * (1.0 - voiced))  # [B, F + 1, K]
  # Whiten the excitation by its own envelope, measured exactly as the
  # speech's (mel of the magnitude, then the pseudo-inverse), so that the
  # shaped signal's mel is the target mel whatever the harmonic spacing.
  fb = jnp.asarray(afeat.mel_filterbank(mel_config))  # [M, K]
  own = jnp.einsum("btk,mk->btm", jnp.abs(spec), fb,
                   precision=jax.lax.Precision.HIGHEST)
  own = afeat.mel_to_linear(jnp.log(jnp.maximum(own, mel_config.log_floor)),
                            mel_config)
  env = afeat.mel_to_linear(mels.astype(jnp.float32), mel_config)  # [B,F,K]
  env = jnp.concatenate([env, env[:, -1:]], axis=1)  # stft gives F + 1
  scale = env / (own + 1e-3 * jnp.mean(own, axis=-1, keepdims=True) + 1e-8)
  return afeat.istft(spec * scale, mel_config, length=frames * hop)


def batch_key(audio: Array) -> Array:
  """A PRNG key that is a pure function of a batch's audio (training)."""
  bits = jax.lax.bitcast_convert_type(
      jnp.sum(jnp.abs(jnp.asarray(audio, jnp.float32))), jnp.int32)
  return jax.random.fold_in(jax.random.key(0), bits)


def f0_from_prediction(pred: Array, config: NSFConfig) -> Array:
  """[..., 1 + f0_bins] predictor output -> F0 in Hz, 0 where unvoiced.

  The voicing logit (channel 0) decides voiced vs unvoiced. The F0 is the
  probability-weighted mean of the log-F0 bins within 4 bins of the most
  likely one (CREPE's local weighted average), so it is not quantized to
  the bins.
  """
  logits = pred[..., 1:]
  centres = jnp.asarray(config.f0_bin_log_hz())
  best = jnp.argmax(logits, axis=-1)[..., None]
  near = jnp.abs(jnp.arange(config.f0_bins) - best) <= 4
  w = jnp.where(near, jax.nn.softmax(logits, axis=-1), 0.0)
  log_hz = (w * centres).sum(-1) / jnp.maximum(w.sum(-1), 1e-12)
  return jnp.where(pred[..., 0] > 0, jnp.exp(log_hz), 0.0)


class F0Predictor(nnx.Module):
  """Mel frames -> voicing logit and F0-class logits, [B, F, 1 + f0_bins].

  A kernel-3 input convolution, then residual kernel-3 convolutions with
  ``config.f0_dilations`` (leaky ReLU), then a per-frame linear head. The
  log-mel is first scaled by a fixed affine map of the features' log floor
  (silence -> -2, 0 dB -> +2), so that the initial activations have unit
  scale whatever the data.
  """

  def __init__(self, config: NSFConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = config
    kw = dict(dtype=c.compute_dtype, rngs=rngs)
    self.inp = nnx.Conv(c.n_mels, c.frame_channels, kernel_size=(3,),
                        padding="SAME", **kw)
    self.convs = nnx.List([
        nnx.Conv(c.frame_channels, c.frame_channels, kernel_size=(3,),
                 kernel_dilation=(d,), padding="SAME", **kw)
        for d in c.f0_dilations])
    self.head = nnx.Linear(c.frame_channels, 1 + c.f0_bins, **kw)

  def __call__(self, mels: Array) -> Array:
    floor = math.log(self.config.log_floor)
    x = (mels.astype(jnp.float32) - floor / 2) / (-floor / 4)
    h = jax.nn.leaky_relu(self.inp(x.astype(self.config.compute_dtype)), 0.2)
    for conv in self.convs:
      h = h + jax.nn.leaky_relu(conv(h), 0.2)
    return self.head(h).astype(jnp.float32)

  def loss(self, mels: Array, f0: Array, frame_mask: Array
           ) -> Tuple[Array, Dict[str, Array]]:
    """Voicing BCE + F0-class cross-entropy over the frames of ``frame_mask``.

    Args:
      mels: [B, F, M] log-mel; frames outside ``frame_mask`` are set to the
        log floor (silence) first, so padding never changes the loss.
      f0: [B, F] analysed F0 in Hz, 0 = unvoiced.
      frame_mask: [B, F] bool, the real frames.

    Returns:
      ``(bce + ce, aux)``; aux has ``f0_ce`` (nats over voiced frames),
      ``vuv_error`` (voicing decision error rate) and ``f0_cents`` (mean
      absolute error of the decoded F0 over frames voiced in both, cents).
    """
    c = self.config
    floor = math.log(c.log_floor)
    pred = self(jnp.where(frame_mask[..., None], mels, floor))
    voiced = (f0 > 0) & frame_mask
    nframes = jnp.maximum(frame_mask.sum(), 1)
    nvoiced = jnp.maximum(voiced.sum(), 1)
    logit = pred[..., 0]
    bce = (jnp.maximum(logit, 0.0) - logit * voiced +
           jnp.log1p(jnp.exp(-jnp.abs(logit))))  # sigmoid cross-entropy
    bce = jnp.where(frame_mask, bce, 0.0).sum() / nframes
    log_f0 = jnp.log(jnp.maximum(f0, 1.0))
    centres = jnp.asarray(c.f0_bin_log_hz())
    width = (centres[-1] - centres[0]) / (c.f0_bins - 1)
    z = (log_f0[..., None] - centres) / (width * c.f0_sigma_bins)
    target = jax.nn.softmax(-0.5 * z * z, axis=-1)
    ce = -(target * jax.nn.log_softmax(pred[..., 1:], axis=-1)).sum(-1)
    ce = jnp.where(voiced, ce, 0.0).sum() / nvoiced
    hz = jax.lax.stop_gradient(f0_from_prediction(pred, c))
    both = voiced & (hz > 0)
    cents = 1200.0 / math.log(2.0) * jnp.abs(
        jnp.log(jnp.maximum(hz, 1.0)) - log_f0)
    aux = {"f0_ce": ce,
           "vuv_error": jnp.where(frame_mask, (logit > 0) != voiced,
                                  False).sum() / nframes,
           "f0_cents": jnp.where(both, cents, 0.0).sum() /
                       jnp.maximum(both.sum(), 1)}
    return bce + ce, aux


def multi_resolution_stft_loss(pred: Array, target: Array,
                               resolutions: Sequence[Tuple[int, int, int]],
                               sample_rate: int
                              ) -> Tuple[Array, Dict[str, Array]]:
  """Mean over resolutions of spectral convergence + log-magnitude L1.

  Args:
    pred, target: [B, S] waveforms (padding already zeroed in both).
    resolutions: ``(n_fft, hop, win)`` triples.
    sample_rate: Hz (only builds the STFT config).

  Returns:
    ``(loss, {"sc": ..., "log_mag": ...})`` averaged over resolutions.
  """
  sc_sum, mag_sum = 0.0, 0.0
  for n_fft, hop, win in resolutions:
    cfg = afeat.MelConfig(sample_rate=sample_rate, n_fft=n_fft,
                          win_length=win, hop_length=hop)
    mp = jnp.sqrt(jnp.abs(afeat.stft(pred, cfg)) ** 2 + 1e-7)
    mt = jnp.sqrt(jnp.abs(afeat.stft(target, cfg)) ** 2 + 1e-7)
    sc_sum = sc_sum + (jnp.linalg.norm((mt - mp).reshape(-1)) /
                       jnp.linalg.norm(mt.reshape(-1)))
    mag_sum = mag_sum + jnp.mean(jnp.abs(jnp.log(mt) - jnp.log(mp)))
  n = len(resolutions)
  return (sc_sum + mag_sum) / n, {"sc": sc_sum / n, "log_mag": mag_sum / n}


# ----------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------


class NSFWaveNet(nnx.Module):
  """Mel -> waveform: harmonic source filtered by a gated dilated stack.

  Args:
    config: an :class:`NSFConfig` (see :func:`nsf_config`).
    rngs: ``nnx.Rngs`` for parameter initialization.
  """

  def __init__(self, config: NSFConfig, *, rngs: nnx.Rngs):
    self.config = config
    c = config
    fc = c.filter_config()
    dt = c.compute_dtype
    kw = dict(dtype=dt, kernel_init=layers.normal_init(), rngs=rngs)
    self.f0 = F0Predictor(c, rngs=rngs)
    # Source module: harmonics -> one excitation channel.
    self.merge = nnx.Linear(c.harmonics, 1, **kw)
    # Filter: WaveNet's residual layers over the excitation.
    self.upsampler = wavenet.ConditionUpsampler(fc, rngs=rngs)
    self.input_proj = nnx.Linear(2 if c.envelope else 1, c.residual_channels,
                                 **kw)
    self.layers = nnx.List([
        wavenet.ResidualLayer(fc, 2 ** i, rngs=rngs)
        for _ in range(c.stacks) for i in range(c.layers_per_stack)])
    self.out1 = nnx.Linear(c.skip_channels, c.skip_channels, **kw)
    if c.envelope:
      # The output is gain * shaped + the filter's correction, which starts
      # at zero: before training the model is the DSP vocoder.
      self.out2 = nnx.Linear(c.skip_channels, 1, dtype=dt,
                             kernel_init=nnx.initializers.zeros_init(),
                             rngs=rngs)
      self.gain = nnx.Param(jnp.ones((), jnp.float32))
    else:
      self.out2 = nnx.Linear(c.skip_channels, 1, **kw)
      self.gain = None

  def check_mels(self, mels: Any) -> None:
    c = self.config
    layers.check_mel_input(
        mels, n_mels=c.n_mels, max_frames=c.max_frames, owner="NSFWaveNet",
        batch_axis="batch", config_name="NSFConfig",
        too_long_fix="cut the input into windows or raise "
        "NSFConfig.max_frames")

  def predict_f0(self, mels: Array) -> Array:
    """[B, F, M] -> [B, F] F0 in Hz, 0 where unvoiced (synthesis's F0)."""
    return f0_from_prediction(self.f0(mels), self.config)

  def filter(self, mels: Array, f0_frames: Array, key: Array,
             frame_mask: Optional[Array] = None) -> Array:
    """Excites the filter with ``f0_frames`` [B, F] -> audio [B, F * hop]."""
    c = self.config
    e = excitation(f0_frames, key, hop_length=c.hop_length,
                   sample_rate=c.sample_rate, harmonics=c.harmonics,
                   sine_amp=c.sine_amp, noise_std=c.noise_std)
    dense = wavenet.dense
    source = jnp.tanh(dense(self.merge, e.astype(c.compute_dtype)))
    cond = self.upsampler(mels, frame_mask)
    shaped = None
    if c.envelope:
      floor = math.log(c.log_floor)
      env_mels = mels if frame_mask is None else jnp.where(
          frame_mask[..., None], mels, floor)
      dsp_key = jax.random.fold_in(key, 1)
      if c.shaping == "convolution":
        shaped = convolved_excitation(env_mels, f0_frames, dsp_key,
                                      c.mel_config())
      else:
        shaped = shaped_excitation(env_mels, f0_frames, dsp_key,
                                   c.mel_config(), c.harmonics)
      source = jnp.concatenate([shaped[..., None].astype(source.dtype),
                                source], axis=-1)
    x = dense(self.input_proj, source)  # [B, S, R]
    skips = None
    for layer in self.layers:
      x, s = layer(x, cond, None)
      skips = s if skips is None else skips + s
    h = jax.nn.relu(dense(self.out1, jax.nn.relu(skips)))
    out = dense(self.out2, h)[..., 0].astype(jnp.float32)
    if shaped is not None:
      out = out + self.gain[...] * shaped
    return out

  def __call__(self, mels: Array, key: Array) -> Array:
    """Synthesis: [B, F, M] -> [B, F * hop] with the predicted F0."""
    self.check_mels(mels)
    return self.filter(mels, self.predict_f0(mels), key)

  def loss(self, batch: VocoderBatch) -> Tuple[Array, Dict[str, Array]]:
    """Spectral loss of the F0-excited output + ``f0_weight`` x F0 loss.

    Args:
      batch: a :class:`metatts.types.VocoderBatch` with ``f0`` [B, F] (Hz, 0
        unvoiced); samples at or after ``audio_lengths`` are zeroed in both
        the output and the target, frames past it leave the F0 loss, so
        padding never changes the loss (the filter is causal in the
        excitation, and the excitation's key is drawn from the masked audio).

    Returns:
      ``(loss, aux)``; aux has ``stft`` (the spectral loss), ``sc``,
      ``log_mag`` and the F0 predictor's ``f0_ce``, ``vuv_error`` and
      ``f0_cents`` (:meth:`F0Predictor.loss`).
    """
    c = self.config
    self.check_mels(batch.mels)
    if batch.f0 is None:
      raise ValueError(
          "NSFWaveNet.loss needs VocoderBatch.f0 [B, F] (Hz, 0 = unvoiced); "
          "build batches with metatts.models.wavenet.make_vocoder_batch from "
          "(mel, audio, f0) clips (metatts.models.nsf.analyse_f0).")
    audio = jnp.asarray(batch.audio, jnp.float32)
    bsz, n = audio.shape
    frames = batch.mels.shape[1]
    if n != frames * c.hop_length:
      raise ValueError(
          f"VocoderBatch.audio has {n} samples but mels have {frames} frames "
          f"x hop_length {c.hop_length}; cut aligned windows with "
          "make_vocoder_batch.")
    lengths = jnp.asarray(batch.audio_lengths, jnp.int32)
    mask = jnp.arange(n)[None, :] < lengths[:, None]
    frame_mask = jnp.arange(frames)[None, :] * c.hop_length < lengths[:, None]
    f0 = jnp.where(frame_mask, jnp.asarray(batch.f0, jnp.float32), 0.0)
    target = jnp.where(mask, audio, 0.0)
    out = self.filter(batch.mels, f0, batch_key(target), frame_mask)
    stft, parts = multi_resolution_stft_loss(
        jnp.where(mask, out, 0.0), target, c.stft_resolutions, c.sample_rate)
    f0_loss, f0_aux = self.f0.loss(batch.mels, f0, frame_mask)
    loss = stft + c.f0_weight * f0_loss
    aux = {"stft": stft, "sc": parts["sc"], "log_mag": parts["log_mag"],
           **f0_aux}
    return loss, aux


def nsf_loss(model: NSFWaveNet, batch: VocoderBatch
            ) -> Tuple[Array, Dict[str, Array]]:
  """``loss_fn(model, batch) -> (loss, aux)`` for ``metatts.functional``."""
  return model.loss(batch)


@nnx.jit
def synthesize_jit(model: NSFWaveNet, mels: Array, key: Array) -> Array:
  """Jitted :meth:`NSFWaveNet.__call__` (one compile per mel shape)."""
  return model(mels, key)


def f0_windows(clips: Sequence[Tuple[np.ndarray, np.ndarray]], count: int,
               frames: int, rng: np.random.Generator, log_floor: float
               ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """``count`` random windows of ``frames`` frames from ``(mel, f0)`` clips.

  Returns:
    ``(mels [count, frames, M], f0 [count, frames], frame_mask)``; a clip
    shorter than the window is padded with silence (the log floor, F0 0)
    and masked.
  """
  n_mels = clips[0][0].shape[-1]
  mels = np.full((count, frames, n_mels), math.log(log_floor), np.float32)
  f0 = np.zeros((count, frames), np.float32)
  mask = np.zeros((count, frames), bool)
  for row, i in enumerate(rng.integers(len(clips), size=count)):
    mel, f = clips[int(i)]
    start = int(rng.integers(max(1, len(mel) - frames + 1)))
    m = min(frames, len(mel) - start)
    mels[row, :m] = mel[start:start + m]
    f0[row, :m] = f[start:start + m]
    mask[row, :m] = True
  return mels, f0, mask


def fit_f0_predictor(model: NSFWaveNet,
                     clips: Sequence[Tuple[np.ndarray, np.ndarray]], *,
                     steps: int, window_frames: int = 64,
                     batch_size: int = 32, learning_rate: float = 1e-3,
                     seed: int = 0, log_every: int = 0,
                     log: Optional[Any] = None) -> Dict[str, float]:
  """Trains ``model.f0`` alone (Adam) on WORLD F0; the filter is untouched.

  The predictor and the filter share no parameter (the filter is excited by
  the analysed F0 in training), so fitting the predictor on its own, on
  windows long enough for its receptive field, is the same objective as its
  share of :meth:`NSFWaveNet.loss`, with more frames per step.

  Args:
    model: the vocoder; ``model.f0`` is updated in place.
    clips: ``(mel [F, M], f0 [F])`` pairs (``analyse_f0``).
    steps: Adam steps.
    window_frames, batch_size: each step's windows.
    learning_rate: Adam's rate.
    seed: the windows' numpy seed.
    log_every, log: ``log(step, loss, aux)`` every ``log_every`` steps.

  Returns:
    The last step's loss and aux (floats).
  """
  import optax  # pylint: disable=g-import-not-at-top
  if not clips:
    raise ValueError("fit_f0_predictor needs at least one (mel, f0) clip.")
  opt = nnx.Optimizer(model.f0, optax.adam(learning_rate), wrt=nnx.Param)

  @nnx.jit
  def step(pred, opt, mels, f0, mask):
    def loss_fn(p):
      return p.loss(mels, f0, mask)
    (loss, aux), grads = nnx.value_and_grad(loss_fn, has_aux=True)(pred)
    opt.update(pred, grads)
    return loss, aux

  rng = np.random.default_rng(seed)
  out: Dict[str, float] = {}
  for i in range(1, int(steps) + 1):
    loss, aux = step(model.f0, opt, *f0_windows(
        clips, batch_size, window_frames, rng, model.config.log_floor))
    if (log is not None and log_every and i % log_every == 0) or i == steps:
      out = {"loss": float(loss), **{k: float(v) for k, v in aux.items()}}
      if log is not None:
        log(i, out)
  return out


# ----------------------------------------------------------------------------
# F0 targets
# ----------------------------------------------------------------------------


def analyse_f0(audio: np.ndarray, num_frames: int, sample_rate: int,
               hop_length: int, f0_floor: float = 50.0,
               f0_ceil: float = 800.0) -> np.ndarray:
  """F0 in Hz (0 = unvoiced) at the mel's frame times ``t * hop``.

  WORLD's DIO followed by StoneMask refinement (pyworld, the ``audio``
  extra), with a frame period of ``hop / sample_rate`` so that frame ``t``
  is centred on sample ``t * hop``, like ``log_mel_spectrogram``'s centred
  frames; cut or zero-padded to ``num_frames``.

  Args:
    audio: [S] float waveform.
    num_frames: frames of the clip's mel.
    sample_rate: Hz.
    hop_length: samples per mel frame.
    f0_floor, f0_ceil: DIO's search range (Hz).

  Returns:
    float32 [num_frames].
  """
  try:
    import pyworld  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "metatts.models.nsf.analyse_f0 needs pyworld for its F0 targets; "
        "install the audio extra: pip install -e '.[audio]'.") from e
  x = np.ascontiguousarray(np.asarray(audio, np.float64))
  period = 1000.0 * hop_length / sample_rate
  f0, t = pyworld.dio(x, sample_rate, f0_floor=f0_floor, f0_ceil=f0_ceil,
                      frame_period=period)
  f0 = pyworld.stonemask(x, f0, t, sample_rate)
  out = np.zeros(num_frames, np.float32)
  m = min(num_frames, f0.shape[0])
  out[:m] = f0[:m]
  return out


__all__ = ["F0Predictor", "NSFConfig", "NSFWaveNet", "analyse_f0",
           "excitation", "f0_from_prediction", "f0_windows", "fit_f0_predictor",
           "multi_resolution_stft_loss",
           "nsf_config", "nsf_loss", "synthesize_jit"]
