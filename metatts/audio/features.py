"""Jittable spectral features: STFT, mel filterbank, log-mel, Griffin-Lim, mu-law.

Everything that runs per clip is written in ``jax.numpy`` with static shapes,
so it can be used inside ``jax.jit`` (e.g. on-device feature extraction in a
vocoder step). The mel filterbank is built once on the host in numpy.

Conventions (Tacotron 2 scaled to 16 kHz, see ``MelConfig``):

* STFT: periodic Hann window of ``win_length`` samples, zero-padded (centered)
  to ``n_fft``; frames centered on ``t * hop_length`` with reflect padding of
  ``n_fft // 2`` on both sides, so a clip of ``S`` samples gives
  ``1 + S // hop_length`` frames. This is ``librosa.stft(..., center=True,
  pad_mode="reflect")``.
* Mel: *magnitude* (power 1) spectrogram times a Slaney-style mel filterbank
  (Slaney mel scale, area-normalized triangles), i.e.
  ``librosa.feature.melspectrogram(..., power=1.0, pad_mode="reflect")``.
* Log-mel: ``log(max(mel, 1e-5))`` (natural log), as in Tacotron 2.

References:
  Shen et al., "Natural TTS Synthesis by Conditioning WaveNet on Mel
  Spectrogram Predictions" (Tacotron 2), ICASSP 2018.
  Slaney, "Auditory Toolbox", Interval Research TR 1998-010 (mel scale).
  Griffin & Lim, "Signal estimation from modified short-time Fourier
  transform", IEEE TASSP 1984.
  van den Oord et al., "WaveNet: A Generative Model for Raw Audio", 2016
  (8-bit mu-law companding, ITU-T G.711).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np


class MelConfig(NamedTuple):
  """Parameters of the mel spectrogram.

  ``metatts.data.features.FeatureConfig`` carries the same fields (plus text
  and length limits) and converts with ``FeatureConfig.mel_config()``; the
  defaults here equal FeatureConfig's defaults.
  """

  sample_rate: int = 16000
  n_fft: int = 1024
  win_length: int = 800  # 50 ms
  hop_length: int = 200  # 12.5 ms
  n_mels: int = 80
  fmin: float = 55.0
  fmax: Optional[float] = 7600.0  # None = sample_rate / 2
  log_floor: float = 1e-5

  def validate(self) -> "MelConfig":
    """Checks the fields; returns self or raises ValueError with the fix."""
    if self.win_length > self.n_fft:
      raise ValueError(
          f"MelConfig.win_length={self.win_length} > n_fft={self.n_fft}; "
          "set win_length <= n_fft.")
    if self.hop_length <= 0 or self.n_mels <= 0:
      raise ValueError(
          f"MelConfig hop_length={self.hop_length}, n_mels={self.n_mels} must "
          "be positive.")
    fmax = self.sample_rate / 2 if self.fmax is None else self.fmax
    if not 0 <= self.fmin < fmax <= self.sample_rate / 2:
      raise ValueError(
          f"MelConfig needs 0 <= fmin ({self.fmin}) < fmax ({fmax}) <= "
          f"sample_rate/2 ({self.sample_rate / 2}); fix fmin/fmax.")
    return self

  def num_frames(self, num_samples: int) -> int:
    """Frames produced for a clip of ``num_samples`` samples (center=True)."""
    return 1 + num_samples // self.hop_length


# ---------------------------------------------------------------------------
# Host-side constants (numpy).


# The Slaney mel scale (Slaney 1998, Auditory Toolbox; librosa's htk=False
# default): linear below 1 kHz at 200/3 Hz per mel, logarithmic above with
# 27 mels per factor 6.4 of frequency.
_SLANEY_HZ_PER_MEL = 200.0 / 3
_SLANEY_BREAK_HZ = 1000.0
_SLANEY_BREAK_MEL = _SLANEY_BREAK_HZ / _SLANEY_HZ_PER_MEL  # 15 mels
_SLANEY_LOG_STEP = np.log(6.4) / 27.0  # ln(Hz) per mel above the break


def hz_to_mel(hz):
  """Hz -> Slaney mels (float64; a scalar stays a scalar).

  Equals ``librosa.hz_to_mel(hz, htk=False)`` bit for bit
  (tests/test_cli_speed.py), without importing librosa (and numba, ~1 s).
  """
  f = np.asarray(hz, np.float64)
  linear = f / _SLANEY_HZ_PER_MEL
  above = f >= _SLANEY_BREAK_HZ
  if f.ndim == 0:
    if above:
      return _SLANEY_BREAK_MEL + np.log(f / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP
    return linear
  out = linear.copy()
  out[above] = (_SLANEY_BREAK_MEL +
                np.log(f[above] / _SLANEY_BREAK_HZ) / _SLANEY_LOG_STEP)
  return out


def mel_to_hz(mels):
  """Slaney mels -> Hz, the inverse of :func:`hz_to_mel`.

  Equals ``librosa.mel_to_hz(mels, htk=False)`` bit for bit.
  """
  m = np.asarray(mels, np.float64)
  linear = _SLANEY_HZ_PER_MEL * m
  above = m >= _SLANEY_BREAK_MEL
  if m.ndim == 0:
    if above:
      return _SLANEY_BREAK_HZ * np.exp(_SLANEY_LOG_STEP *
                                       (m - _SLANEY_BREAK_MEL))
    return linear
  out = linear.copy()
  out[above] = _SLANEY_BREAK_HZ * np.exp(_SLANEY_LOG_STEP *
                                         (m[above] - _SLANEY_BREAK_MEL))
  return out


@functools.lru_cache(maxsize=32)
def _mel_filterbank_cached(sample_rate, n_fft, n_mels, fmin, fmax):
  fmax = sample_rate / 2 if fmax is None else fmax
  fft_freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
  mel_pts = np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2)
  hz_pts = mel_to_hz(mel_pts)  # [n_mels + 2]
  fdiff = np.diff(hz_pts)
  ramps = hz_pts[:, None] - fft_freqs[None, :]  # [n_mels + 2, F]
  lower = -ramps[:-2] / fdiff[:-1, None]
  upper = ramps[2:] / fdiff[1:, None]
  weights = np.maximum(0.0, np.minimum(lower, upper))  # [n_mels, F]
  # Slaney area normalization: each triangle integrates to ~constant energy.
  weights *= (2.0 / (hz_pts[2:n_mels + 2] - hz_pts[:n_mels]))[:, None]
  weights = weights.astype(np.float32)
  weights.setflags(write=False)
  return weights


def mel_filterbank(config: MelConfig) -> np.ndarray:
  """Slaney mel filterbank, float32 ``[n_mels, n_fft // 2 + 1]`` (read-only).

  Equals ``librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)`` (htk=False,
  norm="slaney").
  """
  config.validate()
  return _mel_filterbank_cached(config.sample_rate, config.n_fft,
                                config.n_mels, float(config.fmin),
                                None if config.fmax is None
                                else float(config.fmax))


@functools.lru_cache(maxsize=32)
def _window_cached(win_length, n_fft):
  n = np.arange(win_length)
  win = 0.5 - 0.5 * np.cos(2 * np.pi * n / win_length)  # periodic Hann
  left = (n_fft - win_length) // 2
  out = np.zeros(n_fft, dtype=np.float32)
  out[left:left + win_length] = win
  out.setflags(write=False)
  return out


def stft_window(config: MelConfig) -> np.ndarray:
  """Periodic Hann window of win_length, centered in n_fft zeros. ``[n_fft]``."""
  return _window_cached(config.win_length, config.n_fft)


# ---------------------------------------------------------------------------
# Jittable transforms.


def stft(audio: jax.Array, config: MelConfig, center: bool = True
        ) -> jax.Array:
  """Complex short-time Fourier transform.

  Args:
    audio: float ``[..., S]`` waveform; ``S`` must be static under jit.
    config: STFT parameters (n_fft, win_length, hop_length).
    center: if True, reflect-pad ``n_fft // 2`` samples on both sides so frame
      ``t`` is centered on sample ``t * hop``; output has ``1 + S // hop``
      frames. If False, frames start at ``t * hop`` and there are
      ``1 + (S - n_fft) // hop`` of them.

  Returns:
    complex64 ``[..., T, n_fft // 2 + 1]``.
  """
  audio = jnp.asarray(audio, jnp.float32)
  n_fft, hop = config.n_fft, config.hop_length
  if center:
    pad = n_fft // 2
    if audio.shape[-1] <= pad:
      raise ValueError(
          f"stft: clip of {audio.shape[-1]} samples is too short for reflect "
          f"padding of {pad} (n_fft={n_fft}); pad or drop clips shorter than "
          f"{pad + 1} samples.")
    widths = [(0, 0)] * (audio.ndim - 1) + [(pad, pad)]
    audio = jnp.pad(audio, widths, mode="reflect")
  num_samples = audio.shape[-1]
  if num_samples < n_fft:
    raise ValueError(
        f"stft: {num_samples} samples < n_fft={n_fft}; use a longer clip or "
        "center=True.")
  num_frames = 1 + (num_samples - n_fft) // hop
  idx = (np.arange(num_frames)[:, None] * hop
         + np.arange(n_fft)[None, :])  # [T, n_fft], static
  frames = audio[..., idx] * jnp.asarray(stft_window(config))  # [..., T, n_fft]
  return jnp.fft.rfft(frames, n=n_fft, axis=-1)


def istft(spec: jax.Array, config: MelConfig, length: Optional[int] = None
         ) -> jax.Array:
  """Inverse of ``stft(center=True)`` by weighted overlap-add.

  Args:
    spec: complex ``[..., T, n_fft // 2 + 1]``.
    config: STFT parameters.
    length: output length in samples (default ``(T - 1) * hop``).

  Returns:
    float32 ``[..., length]``.
  """
  n_fft, hop = config.n_fft, config.hop_length
  num_frames = spec.shape[-2]
  win = jnp.asarray(stft_window(config))
  frames = jnp.fft.irfft(spec, n=n_fft, axis=-1) * win  # [..., T, n_fft]
  total = n_fft + hop * (num_frames - 1)
  idx = (np.arange(num_frames)[:, None] * hop
         + np.arange(n_fft)[None, :]).reshape(-1)
  lead = frames.shape[:-2]
  out = jnp.zeros(lead + (total,), jnp.float32)
  out = out.at[..., idx].add(frames.reshape(lead + (-1,)))
  wsum = np.zeros(total, np.float64)
  np.add.at(wsum, idx, np.tile(np.asarray(stft_window(config),
                                          np.float64) ** 2, num_frames))
  wsum = np.where(wsum > 1e-8, wsum, 1.0).astype(np.float32)
  out = out / wsum
  pad = n_fft // 2
  if length is None:
    length = hop * (num_frames - 1)
  out = out[..., pad:pad + length]
  short = length - out.shape[-1]
  if short > 0:
    out = jnp.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, short)])
  return out


def mel_spectrogram(audio: jax.Array, config: MelConfig = MelConfig(),
                    center: bool = True) -> jax.Array:
  """Magnitude mel spectrogram, jittable.

  Equals ``librosa.feature.melspectrogram(y=audio, sr, n_fft, hop_length,
  win_length, window="hann", center=True, pad_mode="reflect", power=1.0,
  n_mels, fmin, fmax)`` transposed to time-major (tested to a relative error
  below 1e-4 of the spectrogram's maximum).

  Args:
    audio: float ``[..., S]`` waveform in [-1, 1].
    config: mel parameters; a static Python value (close over it or mark it
      static in ``jax.jit``), never a traced argument.
    center: see ``stft``.

  Returns:
    float32 ``[..., T, n_mels]`` with ``T = 1 + S // hop_length`` (center).
  """
  mag = jnp.abs(stft(audio, config, center=center))  # [..., T, F]
  basis = jnp.asarray(mel_filterbank(config))  # [M, F]
  return jnp.einsum("...tf,mf->...tm", mag, basis,
                    precision=jax.lax.Precision.HIGHEST)


def log_mel_spectrogram(audio: jax.Array, config: MelConfig = MelConfig(),
                        center: bool = True) -> jax.Array:
  """``log(max(mel_spectrogram, log_floor))``; float32 ``[..., T, n_mels]``."""
  return jnp.log(jnp.maximum(mel_spectrogram(audio, config, center),
                             config.log_floor))


def mel_to_linear(log_mel: jax.Array, config: MelConfig = MelConfig()
                 ) -> jax.Array:
  """Approximate magnitude spectrogram from a log-mel spectrogram.

  Uses the non-negative pseudo-inverse of the mel filterbank.

  Args:
    log_mel: float ``[..., T, n_mels]`` as returned by ``log_mel_spectrogram``.
    config: the config the log-mel was computed with.

  Returns:
    float32 ``[..., T, n_fft // 2 + 1]`` magnitudes.
  """
  inv = jnp.asarray(np.linalg.pinv(mel_filterbank(config).astype(np.float64))
                    .astype(np.float32))  # [F, M]
  mel = jnp.exp(log_mel)
  return jnp.maximum(jnp.einsum("...tm,fm->...tf", mel, inv,
                                precision=jax.lax.Precision.HIGHEST), 0.0)


@functools.partial(jax.jit, static_argnames=("config", "n_iter", "length"))
def griffin_lim(magnitude: jax.Array, key: jax.Array,
                config: MelConfig = MelConfig(), n_iter: int = 32,
                length: Optional[int] = None, momentum: float = 0.99
               ) -> jax.Array:
  """Waveform whose STFT magnitude approximates ``magnitude`` (Griffin-Lim).

  Fast Griffin-Lim (Perraudin et al., 2013) with the given momentum
  (0 gives the original algorithm of Griffin & Lim, 1984). Starts from random
  phase drawn from ``key``.

  Args:
    magnitude: float ``[..., T, n_fft // 2 + 1]`` target magnitudes.
    key: PRNG key for the initial phase.
    config: STFT parameters.
    n_iter: iterations.
    length: output length (default ``(T - 1) * hop``).
    momentum: fast Griffin-Lim momentum in [0, 1).

  Returns:
    float32 ``[..., length]`` waveform.
  """
  magnitude = jnp.asarray(magnitude, jnp.float32)
  num_frames = magnitude.shape[-2]
  if length is None:
    length = config.hop_length * (num_frames - 1)
  phase = jax.random.uniform(key, magnitude.shape, minval=0.0,
                             maxval=2 * np.pi)
  angles = jnp.exp(1j * phase).astype(jnp.complex64)

  def body(_, carry):
    angles, prev = carry
    audio = istft(magnitude * angles, config, length)
    rebuilt = stft(audio, config)
    # Frame count of the re-analysis equals num_frames when length matches.
    rebuilt = rebuilt[..., :num_frames, :]
    accel = rebuilt - momentum * prev
    angles = accel / (jnp.abs(accel) + 1e-16)
    return angles, rebuilt

  angles, _ = jax.lax.fori_loop(0, n_iter, body,
                                (angles, jnp.zeros_like(angles)))
  return istft(magnitude * angles, config, length)


def mel_to_audio(log_mel: jax.Array, key: jax.Array,
                 config: MelConfig = MelConfig(), n_iter: int = 32,
                 power: float = 1.2) -> jax.Array:
  """Quick-listening vocoder: inverse mel, then Griffin-Lim.

  Args:
    log_mel: float ``[..., T, n_mels]`` log-mel frames.
    key: PRNG key for Griffin-Lim's initial phase.
    config: the config the log-mel was computed with.
    n_iter: Griffin-Lim iterations.
    power: magnitudes are raised to this power before phase reconstruction
      (>1 reduces the metallic noise, as in Tacotron).

  Returns:
    float32 ``[..., (T - 1) * hop]`` waveform.
  """
  mag = mel_to_linear(log_mel, config) ** power
  return griffin_lim(mag, key, config=config, n_iter=n_iter)


def spectral_convergence(audio: jax.Array, magnitude: jax.Array,
                         config: MelConfig = MelConfig()) -> jax.Array:
  """``||S - |STFT(audio)| ||_F / ||S||_F``, the Griffin-Lim objective."""
  rebuilt = jnp.abs(stft(audio, config))[..., :magnitude.shape[-2], :]
  return (jnp.linalg.norm(magnitude - rebuilt)
          / jnp.maximum(jnp.linalg.norm(magnitude), 1e-12))


# ---------------------------------------------------------------------------
# Mu-law companding (8 bit, 256 classes).


def mu_law_encode(audio: jax.Array, quantization_channels: int = 256
                 ) -> jax.Array:
  """Mu-law compands and quantizes a waveform in [-1, 1].

  ``f(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu)`` with ``mu = channels - 1``,
  then ``q = floor((f + 1) / 2 * mu + 0.5)``. So ``-1 -> 0``, ``0 -> 128``,
  ``1 -> 255`` for 256 channels. Inputs are clipped to [-1, 1]. This is the
  one mu-law of the library: the WaveNet vocoder's targets use it too.

  Args:
    audio: float ``[...]`` waveform.
    quantization_channels: number of classes (256 for 8-bit WaveNet).

  Returns:
    int32 ``[...]`` class ids in ``[0, channels - 1]``.

  References:
    ITU-T Recommendation G.711, 1988.
    A. van den Oord et al., "WaveNet: A Generative Model for Raw Audio",
      2016, Sec. 2.2.
  """
  mu = quantization_channels - 1
  x = jnp.clip(jnp.asarray(audio, jnp.float32), -1.0, 1.0)
  f = jnp.sign(x) * jnp.log1p(mu * jnp.abs(x)) / np.log1p(mu)
  # f can exceed 1 by a float32 ulp; the clip keeps the id in range anyway.
  return jnp.clip(jnp.floor((f + 1.0) / 2.0 * mu + 0.5), 0, mu).astype(
      jnp.int32)


def mu_law_decode(ids: jax.Array, quantization_channels: int = 256
                 ) -> jax.Array:
  """Inverse of ``mu_law_encode``: class ids -> float32 waveform in [-1, 1].

  ``y = 2 q / mu - 1``, ``x = sign(y) ((1 + mu)^|y| - 1) / mu`` (the
  level's center), clipped to [-1, 1] because float32 rounding can overshoot
  1 by about 1e-6.
  """
  mu = quantization_channels - 1
  y = 2.0 * jnp.asarray(ids, jnp.float32) / mu - 1.0
  x = jnp.sign(y) * jnp.expm1(jnp.abs(y) * np.log1p(mu)) / mu
  return jnp.clip(x, -1.0, 1.0)
