"""Vocoders of the voice path: log-mel -> waveform.

``GriffinLimVocoder`` needs no training; ``WaveNetVocoder`` runs an exported
autoregressive WaveNet and ``NSFVocoder`` an exported source-filter WaveNet
(``WORKDIR/vocoder/model``). ``load_vocoder`` picks one for a model:
an explicit vocoder object or export path, ``'griffin-lim'``, or the
workdir's vocoder export when there is one.

References:
  Griffin & Lim (1984), Signal estimation from modified short-time Fourier
    transform, IEEE TASSP.
  van den Oord et al. (2016), WaveNet: A generative model for raw audio,
    arXiv:1609.03499.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from metatts.audio import features as afeat
from metatts.clips import FRAME_BUCKET
from metatts.clips import round_up as _round_up

PathLike = Union[str, os.PathLike]
GRIFFIN_LIM_ITERS = 32
MODEL_FILE = "model.json"
# Few-shot adaptation of the source-filter vocoder (NSFVocoder.adapt) uses
# the vocoder study's protocol (docs/results/vocoder.md): one random window
# of this many frames per clip, SGD at the export's adapt lr.
ADAPT_WINDOW_FRAMES = 16


def vocoder_dir_for(model_dir: str) -> Optional[str]:
  """``WORKDIR/vocoder/model`` next to ``WORKDIR/<method>/model``, if any."""
  candidates = [
      os.path.join(model_dir, "vocoder", "model"),  # a saved voice
      os.path.join(os.path.dirname(os.path.dirname(model_dir)), "vocoder",
                   "model"),  # a training workdir
  ]
  for c in candidates:
    if os.path.isfile(os.path.join(c, MODEL_FILE)):
      return c
  return None


def _bucketed(mel: np.ndarray, pad_value: float, hop: int, run) -> np.ndarray:
  """Runs ``run(mels [1, P, M]) -> audio [1, P * hop]`` on ``mel`` [T, M]
  padded with ``pad_value`` to ``P``, a multiple of ``FRAME_BUCKET`` frames
  (one compile per bucket), and returns the clip's ``T * hop`` samples."""
  t = mel.shape[0]
  padded = _round_up(t, FRAME_BUCKET)
  mel = np.pad(mel, ((0, padded - t), (0, 0)), constant_values=pad_value)
  return np.asarray(run(jnp.asarray(mel)[None]))[0, :t * hop]


class GriffinLimVocoder:
  """Log-mel -> waveform by mel inversion and Griffin-Lim (no training).

  The mel is padded with silence (``log(log_floor)``) to a multiple of
  ``FRAME_BUCKET`` frames so the jitted reconstruction compiles once per
  bucket, and the waveform is cut back to the clip.
  """

  name = "griffin-lim"

  def __init__(self, mel_config: afeat.MelConfig,
               n_iter: int = GRIFFIN_LIM_ITERS):
    self.mel_config = mel_config
    self.n_iter = int(n_iter)
    self._fn = _griffin_lim_function(mel_config, self.n_iter)

  def __call__(self, mel: np.ndarray, key: jax.Array) -> np.ndarray:
    """mel: float32 [T, M] -> float32 [T * hop] waveform."""
    t = mel.shape[0]
    hop = self.mel_config.hop_length
    padded = _round_up(t + 1, FRAME_BUCKET)
    floor = math.log(self.mel_config.log_floor)
    mel = np.pad(mel, ((0, padded - t), (0, 0)), constant_values=floor)
    audio = np.asarray(self._fn(jnp.asarray(mel), key))  # [(P - 1) * hop]
    return audio[:t * hop]


class WaveNetVocoder:
  """Log-mel -> waveform with an exported WaveNet (fast queued generation).

  References:
    van den Oord et al. (2016), WaveNet: A generative model for raw audio,
      arXiv:1609.03499.
    Paine et al. (2016), Fast WaveNet generation algorithm, arXiv:1611.09482.
  """

  name = "wavenet"

  def __init__(self, model: Any, info: Dict[str, Any], directory: str):
    from metatts.models import wavenet  # pylint: disable=g-import-not-at-top
    self.model = model
    self.info = info
    self.directory = directory
    self._generate = wavenet.generate_jit
    c = model.config
    self.speaker_ids = None
    if c.speaker_source == "table":
      slot = int(info.get("adapt", {}).get("speaker_slot", 0))
      self.speaker_ids = np.asarray([slot], np.int32)

  def __call__(self, mel: np.ndarray, key: jax.Array) -> np.ndarray:
    """mel: float32 [T, M] -> float32 [T * hop] waveform."""
    spk = None if self.speaker_ids is None else jnp.asarray(self.speaker_ids)
    # Zeros, as the upsampler's SAME convolution pads: the real frames'
    # conditioning, and so every real sample, equals the unpadded run's.
    return _bucketed(mel, 0.0, self.model.config.hop_length,
                     lambda m: self._generate(self.model, m, key, spk))


class NSFVocoder:
  """Log-mel -> waveform with an exported source-filter WaveNet (NSF-style).

  One parallel pass (no autoregression): the F0 the model predicts from the
  mel excites its gated dilated-convolution filter (``metatts.models.nsf``).

  References:
    Wang, Takaki, Yamagishi (2019), Neural source-filter waveform models for
      statistical parametric speech synthesis, IEEE/ACM TASLP.
  """

  name = "nsf"

  def __init__(self, model: Any, info: Dict[str, Any],
               directory: Optional[str], adapted_steps: int = 0):
    from metatts.models import nsf  # pylint: disable=g-import-not-at-top
    self.model = model
    self.info = info
    # The export it was loaded from; None for an adapted copy (in memory).
    self.directory = directory
    self.adapted_steps = int(adapted_steps)
    self._synthesize = nsf.synthesize_jit

  def __call__(self, mel: np.ndarray, key: jax.Array) -> np.ndarray:
    """mel: float32 [T, M] -> float32 [T * hop] waveform."""
    # Padded with the clip's quietest level: silence, predicted unvoiced.
    # The frame convolutions and the envelope's STFT window (n_fft samples)
    # let the last few real frames see that silence, as at any clip's end.
    floor = float(np.min(mel)) if mel.size else 0.0
    return _bucketed(mel, floor, self.model.config.hop_length,
                     lambda m: self._synthesize(self.model, m, key))

  def adapt(self, clips: Sequence[Tuple[np.ndarray, np.ndarray]],
            steps: int, seed: int = 0) -> Tuple["NSFVocoder", np.ndarray]:
    """Fine-tunes a copy of the vocoder on a new speaker's clips.

    The vocoder study's protocol (``metatts.experiments.vocoder``): the
    clips' WORLD F0 (``nsf.analyse_f0``), one random window of
    ``ADAPT_WINDOW_FRAMES`` frames per clip (drawn from ``seed``), and
    ``steps`` SGD steps on all parameters at the export's ``adapt.lr`` with
    the training loss (``metatts.meta.adapt``). This vocoder is unchanged.

    Args:
      clips: ``(mel [T, M], audio [T * hop or about])`` per clip, the mel
        computed from that audio with the model's features.
      steps: SGD steps (> 0).
      seed: the windows' seed.

    Returns:
      ``(adapted vocoder, support losses [steps + 1])``.
    """
    from metatts import functional  # pylint: disable=g-import-not-at-top
    from metatts.models import nsf  # pylint: disable=g-import-not-at-top
    from metatts.models import wavenet  # pylint: disable=g-import-not-at-top
    c = self.model.config
    if not clips:
      raise ValueError("NSFVocoder.adapt needs at least one (mel, audio) "
                       "clip.")
    pairs = [(np.asarray(m, np.float32), np.asarray(a, np.float32),
              nsf.analyse_f0(a, np.shape(m)[0], c.sample_rate, c.hop_length))
             for m, a in clips]
    batch = jax.tree.map(jnp.asarray, wavenet.make_vocoder_batch(
        np.random.default_rng(seed), pairs, ADAPT_WINDOW_FRAMES,
        c.hop_length))
    graphdef, params, rest = functional.split(self.model)
    lr = float(self.info.get("adapt", {}).get("lr", 1e-3))
    params, losses = _nsf_adapt_function(graphdef, rest, lr, int(steps))(
        params, batch)
    losses = np.asarray(losses, np.float32)
    if not np.all(np.isfinite(losses)):
      raise FloatingPointError(
          f"Vocoder adaptation diverged (support losses {losses.tolist()}); "
          "use fewer vocoder steps.")
    model = functional.merge(graphdef, params, rest)
    return NSFVocoder(model, self.info, None,
                      self.adapted_steps + int(steps)), losses

  def save_to(self, folder: str) -> None:
    """Writes the vocoder as an export into ``folder`` (must not exist):
    a copy of the loaded export, or the adapted parameters."""
    if not self.adapted_steps and self.directory:
      shutil.copytree(self.directory, folder)
      return
    from metatts import functional  # pylint: disable=g-import-not-at-top
    from metatts.training import export  # pylint: disable=g-import-not-at-top
    i = self.info
    os.makedirs(folder)
    export.write_export(
        folder, method=i.get("method", "vocoder"), model_name="nsf",
        model_config=self.model.config,
        params=functional.split(self.model)[1],
        feature_config=i["feature_config"], symbols=i.get("symbols", ""),
        speakers=[], adapt=i.get("adapt", {}),
        info={"adapted_steps": self.adapted_steps}, where=folder)


def _nsf_adapt_function(graphdef, rest, lr: float, steps: int):
  import optax  # pylint: disable=g-import-not-at-top
  from metatts import functional  # pylint: disable=g-import-not-at-top
  from metatts import meta  # pylint: disable=g-import-not-at-top
  loss_fn = functional.make_loss_fn(graphdef, rest)
  return jax.jit(lambda p, b: meta.adapt(
      p, b, loss_fn, inner_optimizer=optax.sgd(lr), num_steps=steps,
      filter=functional.filter_for("all")))


def load_vocoder(vocoder: Union[None, str, PathLike, Any], model_dir: str,
                  mel_config: afeat.MelConfig):
  """Picks the vocoder: an export path, 'griffin-lim', or auto (None).

  A vocoder object (anything callable as ``vocoder(mel [T, M], key) ->
  audio`` with a ``name``, e.g. ``GriffinLimVocoder(mel_config, n_iter=4)``)
  is used as is.
  """
  if callable(vocoder) and hasattr(vocoder, "name"):
    return vocoder
  if isinstance(vocoder, str) and vocoder == "griffin-lim":
    return GriffinLimVocoder(mel_config)
  if vocoder is None:
    directory = vocoder_dir_for(model_dir)
    if directory is None:
      return GriffinLimVocoder(mel_config)
  else:
    directory = os.path.abspath(os.fspath(vocoder))
    if os.path.isfile(os.path.join(directory, "model", MODEL_FILE)):
      directory = os.path.join(directory, "model")
  model, _, info, _ = _load_exported(directory)
  c = model.config
  if getattr(c, "n_mels", None) != mel_config.n_mels or getattr(
      c, "hop_length", None) != mel_config.hop_length:
    raise ValueError(
        f"Vocoder {directory} expects n_mels={c.n_mels}, hop_length="
        f"{c.hop_length} but the acoustic model uses n_mels="
        f"{mel_config.n_mels}, hop_length={mel_config.hop_length}; pass "
        "vocoder='griffin-lim' or a vocoder trained on the same features.")
  if c.speaker_source == "vector":
    warnings.warn(
        f"Vocoder {directory} needs an external speaker vector, which a "
        "voice does not have; using Griffin-Lim instead.", UserWarning,
        stacklevel=3)
    return GriffinLimVocoder(mel_config)
  if info.get("model") == "nsf":
    return NSFVocoder(model, info, directory)
  return WaveNetVocoder(model, info, directory)


@functools.lru_cache(maxsize=8)
def _griffin_lim_function(mel_config: afeat.MelConfig, n_iter: int):
  from metatts import compile_cache  # pylint: disable=g-import-not-at-top
  return compile_cache.stored_jit(
      functools.partial(afeat.mel_to_audio, config=mel_config, n_iter=n_iter),
      name="mel_to_audio", key=(mel_config, n_iter))




def _load_exported(directory: str):
  from metatts.training import export  # pylint: disable=g-import-not-at-top
  return export.load_exported(directory)


__all__ = ["GRIFFIN_LIM_ITERS", "GriffinLimVocoder", "NSFVocoder",
           "WaveNetVocoder",
           "load_vocoder", "vocoder_dir_for"]
