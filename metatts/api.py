"""The few-shot facade: load a trained model, adapt it to clips, speak.

    import metatts
    tts = metatts.load("WORKDIR")                     # or WORKDIR/<method>[/model]
    voice = tts.adapt(wavs=["a.wav", "b.wav"], texts=["Hello.", "Bye."])
    print(voice.losses)                               # support loss per step
    audio, sr = voice.synthesize("Any English sentence.")
    voice.save("my_voice"); voice = metatts.load_voice("my_voice")

What happens underneath, and why:

* ``load`` reads the export a training run writes (``WORKDIR/<method>/model``,
  see ``metatts.training.export``): the acoustic model (Tacotron-style, text
  -> log-mel), the feature and text settings it was trained with, and the
  adaptation protocol (parameter filter, inner optimizer, learning rate,
  default number of steps, learned inner learning rates, the speaker-table row
  reserved for a new voice). A vocoder export in ``WORKDIR/vocoder/model`` is
  used when present, Griffin-Lim otherwise.
* ``TTS.adapt`` loads and checks every clip (unreadable, silent, too short or
  long, empty transcript, a transcript whose length cannot match the clip ->
  ``ValueError`` naming the clip and the fix), computes log-mels exactly like
  the training features (``metatts.clips``), and runs ``metatts.meta.adapt``
  - the inner loop the meta-learners were trained through - with the
  exported protocol (``metatts.voice.adapt``). The clips are padded to
  bucketed lengths (frames to a multiple of ``FRAME_BUCKET``, symbols to a
  multiple of ``TOKEN_BUCKET``); padding is masked, so it does not change the
  loss, and a jitted adaptation is compiled once per (number of clips, length
  bucket). The number of clips is not padded: an empty padding clip would
  divide by zero in the guided-attention loss, and a repeated one would
  weight clips unequally.
* ``Voice.synthesize`` (``metatts.voice.synthesize``) normalizes the text with the model's symbol set, splits
  long text into sentences, runs Tacotron inference (until the stop token, but
  not before a minimum and not past a budget, both proportional to the text
  length) and a vocoder, and returns a float32 waveform at the training sample
  rate.
* The evaluation protocol (``metatts.experiments.adaptation``) loads each
  method's export with :func:`load` and adapts and speaks through the same
  ``metatts.voice`` functions, so the reported numbers are measured on what a
  user runs.
* ``Voice.save`` writes the adapted parameters with Orbax (never pickle) as an
  export of its own, plus ``voice.json`` (base model, speaker slot, steps,
  clips, losses) and a copy of the vocoder (adapted too with
  ``vocoder_steps``), so ``load_voice`` needs nothing
  else. The save is atomic (``metatts.atomic``): written into a hidden
  sibling folder and renamed into place, so an existing voice survives any
  failure, ``kill -9`` included. ``load_voice`` validates ``voice.json``
  (:func:`validate_voice_record`) and the export's ``model.json``; each
  problem is one ``ValueError`` line naming the file, the key and the fix.
* A ``zeroshot`` export (a Tacotron conditioned on a speaker encoder's vector
  instead of a speaker table; ``model.json`` holds ``speaker_encoder_config``
  and the encoder is in ``speaker_encoder/``, see
  ``metatts.methods.zeroshot``) is used through the same calls: ``adapt``
  encodes the clips' log-mels with the encoder (the mean vector over the
  clips) and runs the same inner loop on ``{"acoustic", "speaker_vector"}``
  (``steps=0`` is zero-shot cloning); the voice synthesizes with its vector and saves it in
  ``voice.json``. ``TTS.voice()`` has no speaker to offer such a model.

References:
  Finn et al. (2017), Model-agnostic meta-learning for fast adaptation of deep
    networks, ICML, arXiv:1703.03400.
  Arik et al. (2018), Neural voice cloning with a few samples, NeurIPS,
    arXiv:1802.06006 (speaker adaptation by fine-tuning a multi-speaker TTS).
  Huang et al. (2022), Meta-TTS: Meta-learning for few-shot speaker adaptive
    text-to-speech, IEEE/ACM TASLP, arXiv:2111.04040.
  Shen et al. (2018), Natural TTS synthesis by conditioning WaveNet on mel
    spectrogram predictions, ICASSP, arXiv:1712.05884.
  Griffin & Lim (1984), Signal estimation from modified short-time Fourier
    transform, IEEE TASSP.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import (Any, Callable, Dict, List, Optional, Sequence, Tuple,
                    Union)

import jax
import jax.numpy as jnp
import numpy as np

from metatts import atomic
from metatts import clips as clips_lib
from metatts import functional
from metatts import meta
from metatts import records
from metatts import vocoders
from metatts import voice as voice_lib
from metatts.audio import text as atext
from metatts.data import features as dfeat
from metatts.types import TTSBatch

PathLike = Union[str, os.PathLike]
ClipLike = clips_lib.ClipLike

MAX_STEPS = 10000
# Aliases of the voice path's settings (metatts.clips, metatts.voice,
# metatts.vocoders), kept here for the API's users.
MIN_CLIPS = clips_lib.MIN_CLIPS
MAX_CLIPS = clips_lib.MAX_CLIPS
FRAME_BUCKET = clips_lib.FRAME_BUCKET
TOKEN_BUCKET = clips_lib.TOKEN_BUCKET
MIN_SEC_PER_SYMBOL = clips_lib.MIN_SEC_PER_SYMBOL
MAX_SEC_PER_SYMBOL = clips_lib.MAX_SEC_PER_SYMBOL
SYNTH_SEC_PER_SYMBOL = voice_lib.SYNTH_SEC_PER_SYMBOL
SYNTH_MIN_SEC_PER_SYMBOL = voice_lib.SYNTH_MIN_SEC_PER_SYMBOL
SENTENCE_PAUSE_SECONDS = voice_lib.SENTENCE_PAUSE_SECONDS
GRIFFIN_LIM_ITERS = vocoders.GRIFFIN_LIM_ITERS
PEAK_LIMIT = voice_lib.PEAK_LIMIT
OPTIMIZERS = voice_lib.OPTIMIZERS
ADAPT_TRACES = voice_lib.ADAPT_TRACES
AdaptationInterrupted = voice_lib.AdaptationInterrupted
Clip = clips_lib.Clip
GriffinLimVocoder = vocoders.GriffinLimVocoder
WaveNetVocoder = vocoders.WaveNetVocoder
NSFVocoder = vocoders.NSFVocoder
_bucket = clips_lib.bucket

VOICE_FORMAT = "metatts-voice"
VOICE_VERSION = 1
VOICE_FILE = "voice.json"
MODEL_FILE = "model.json"


# ----------------------------------------------------------------------------
# Locating and loading exports.


def _export_module():
  """``metatts.training.export`` (imported late: it pulls in training code)."""
  from metatts.training import export  # pylint: disable=g-import-not-at-top
  return export


def _zeroshot_module():
  """``metatts.methods.zeroshot``: the zero-shot export (imported late, only
  for models with a speaker encoder)."""
  from metatts.methods import zeroshot  # pylint: disable=g-import-not-at-top
  return zeroshot


def _read_json(path: str, message: str) -> Any:
  """Reads a JSON file; a failure raises ValueError(message with {path} and
  {error} filled in)."""
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(message.format(path=path, error=e)) from e


def resolve_model_dir(path: PathLike) -> str:
  """Finds the acoustic-model export for a workdir, method dir or export dir.

  Args:
    path: ``WORKDIR`` (uses ``run.json``'s ``primary`` method, else the only
      method with an export), ``WORKDIR/<method>`` or
      ``WORKDIR/<method>/model``.

  Returns:
    The export directory (the one holding ``model.json``).

  Raises:
    FileNotFoundError: nothing exported there; the message says what to run.
  """
  path = os.path.abspath(os.fspath(path))
  atomic.recover(path)  # a save killed between its two renames
  if os.path.isdir(path):
    atomic.recover(os.path.join(path, "model"))
    for d in os.listdir(path):  # WORKDIR/<method>/model
      if not d.startswith(".") and os.path.isdir(os.path.join(path, d)):
        atomic.recover(os.path.join(path, d, "model"))
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"Model path {path} does not exist. Pass a training WORKDIR, "
        "WORKDIR/<method> or WORKDIR/<method>/model (run `make quickstart` or "
        "experiments/main.py to create one).")
  if os.path.isfile(os.path.join(path, MODEL_FILE)):
    return path
  if os.path.isfile(os.path.join(path, "model", MODEL_FILE)):
    return os.path.join(path, "model")
  run_json = os.path.join(path, "run.json")
  if os.path.isfile(run_json):
    run = _read_json(run_json, "Cannot read {path} ({error}); re-run training "
                     "or pass WORKDIR/<method>/model directly.")
    primary = run.get("primary")
    if primary and os.path.isfile(os.path.join(path, primary, "model",
                                               MODEL_FILE)):
      return os.path.join(path, primary, "model")
  found = sorted(
      d for d in os.listdir(path) if d != "vocoder" and
      os.path.isfile(os.path.join(path, d, "model", MODEL_FILE)))
  if len(found) == 1:
    return os.path.join(path, found[0], "model")
  if found:
    raise ValueError(
        f"{path} holds exports of several methods {found} and no run.json "
        "names a primary one; pass one of them, e.g. "
        f"{os.path.join(path, found[0])}.")
  raise FileNotFoundError(
      f"No exported model under {path}: expected {path}/{MODEL_FILE}, "
      f"{path}/model/{MODEL_FILE} or {path}/<method>/model/{MODEL_FILE}. "
      "Training writes the export when it finishes; re-run it (or wait for "
      "it to end) and point at WORKDIR/<method>/model.")


def params_hash(params: Any) -> str:
  """SHA-1 (16 hex digits) of a parameter pytree's paths, dtypes and values."""
  h = hashlib.sha1()
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    arr = np.asarray(leaf)
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str(arr.dtype).encode() + str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()[:16]




def check_steps(steps: Any) -> int:
  """``steps`` as an int in [0, ``MAX_STEPS``], else one-line ValueError."""
  if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) \
      or not 0 <= int(steps) <= MAX_STEPS:
    raise ValueError(f"steps={steps!r} must be an integer in [0, "
                     f"{MAX_STEPS}] (typical: 5-100).")
  return int(steps)


# ----------------------------------------------------------------------------
# The model.


class TTS:
  """A trained acoustic model plus vocoder, ready to adapt to a new voice.

  Build it with :func:`load`. Attributes: ``model_dir``, ``info`` (the
  export's ``model.json``), ``feature_config``, ``symbols``, ``speakers``,
  ``vocoder`` (``.name`` is 'nsf', 'wavenet' or 'griffin-lim'), ``params``.
  """

  def __init__(self, model: Any, params: Any, info: Dict[str, Any],
               extra: Any, model_dir: str, vocoder: Any = None,
               encoder: Any = None):
    """Wraps loaded export parts (use :func:`load` instead).

    ``encoder``: the ``SpeakerEncoder`` of a zeroshot export (None for a
    saved zeroshot voice, which carries its vector instead).
    """
    self.model_dir = model_dir
    self.info = info
    self.graphdef, params_split, self.rest = functional.split(model)
    self.params = params if params is not None else params_split
    self.config = model.config
    self.feature_config = dfeat.FeatureConfig.from_config(
        info["feature_config"])
    self.mel_config = self.feature_config.mel_config()
    self.symbols = atext.symbol_set(info.get("symbols",
                                             self.feature_config.symbols))
    self.speakers = list(info.get("speakers", []))
    adapt_info = dict(info.get("adapt", {}))
    self.filter_name = adapt_info.get("filter", "speaker+decoder")
    self.optimizer_name = adapt_info.get("optimizer", "sgd")
    self.lr = float(adapt_info.get("lr", 0.01))
    self.default_steps = int(adapt_info.get("default_steps", 20))
    self.speaker_slot = int(adapt_info.get("speaker_slot", 0))
    self.lr_mode = adapt_info.get("lr_mode")
    self.lrs = extra if (info.get("learned_lrs") and extra) else None
    if self.optimizer_name not in OPTIMIZERS:
      raise ValueError(
          f"{model_dir}/{MODEL_FILE}: adapt.optimizer="
          f"{self.optimizer_name!r} is not supported; use one of "
          f"{sorted(OPTIMIZERS)}.")
    if self.config.num_mels != self.mel_config.n_mels:
      raise ValueError(
          f"{model_dir}/{MODEL_FILE}: model num_mels={self.config.num_mels} "
          f"but feature_config n_mels={self.mel_config.n_mels}; re-export the "
          "model with the features it was trained on.")
    if self.config.num_symbols < self.symbols.num_symbols:
      raise ValueError(
          f"{model_dir}/{MODEL_FILE}: model num_symbols="
          f"{self.config.num_symbols} is smaller than the "
          f"{self.symbols.name} set ({self.symbols.num_symbols}); re-export "
          "with the symbol set used in training.")
    self.predicate = functional.filter_for(self.filter_name, self.params)
    # A model conditioned on an external speaker vector (the zeroshot
    # method): voices are {"acoustic", "speaker_vector"} parameter pytrees.
    self.zeroshot = bool(self.config.external_speaker_dim > 0 and
                         self.config.speaker_dim > 0)
    self.encoder = encoder
    if encoder is not None:
      ec = encoder.config
      if not self.zeroshot or ec.embed_dim != self.config.external_speaker_dim \
          or ec.n_mels != self.mel_config.n_mels:
        raise ValueError(
            f"{model_dir}: the speaker encoder (embed_dim={ec.embed_dim}, "
            f"n_mels={ec.n_mels}) does not fit the Tacotron "
            f"(external_speaker_dim={self.config.external_speaker_dim}, "
            f"n_mels={self.mel_config.n_mels}); re-export with "
            "metatts.methods.zeroshot.export_zeroshot_model.")
      (self.encoder_graphdef, self.encoder_params,
       self.encoder_rest) = functional.split(encoder)
      self._encode_jit = voice_lib.encode_function(self.encoder_graphdef)
    self._per_step_lrs = self._check_lrs()
    self.vocoder = vocoder if vocoder is not None else (
        vocoders.GriffinLimVocoder(self.mel_config))
    self.max_frames = min(self.config.max_frames,
                          self.feature_config.max_frames)
    self.max_tokens = min(self.config.max_tokens,
                          self.feature_config.max_tokens)
    self.hash = params_hash(self.params)
    self.base_model_dir = model_dir  # a loaded voice points at its origin
    self._adapt_jit = voice_lib.adapt_function(*self._adapt_key)
    self._infer_jit = voice_lib.infer_function(self.graphdef, self.zeroshot)

  # ---- protocol -----------------------------------------------------------

  def _check_lrs(self) -> bool:
    """Checks exported learned inner rates; returns whether they are per step."""
    if self.lrs is None:
      return False
    mask = meta.base.resolve_filter(self.params, self.predicate)
    adapted = [x for x, m in zip(jax.tree_util.tree_leaves(self.params), mask)
               if m]
    lrs = list(self.lrs)
    if len(lrs) != len(adapted):
      raise ValueError(
          f"{self.model_dir}: {len(lrs)} learned inner learning rates for "
          f"{len(adapted)} adapted parameters (filter {self.filter_name!r}); "
          "re-export the model with the filter it was meta-trained with.")
    self.lrs = [jnp.asarray(x, jnp.float32) for x in lrs]
    if self.lr_mode is not None:
      return self.lr_mode == "per_step_per_layer"
    if all(np.shape(r) == np.shape(a) for r, a in zip(lrs, adapted)):
      return False
    if all(np.ndim(r) == 0 for r in lrs):
      return False
    if all(np.ndim(r) == 1 for r in lrs) and len({np.shape(r) for r in lrs
                                                  }) == 1:
      return True
    raise ValueError(
        f"{self.model_dir}: cannot tell the layout of the learned inner "
        "learning rates (neither per parameter, per layer nor per step); "
        "add adapt.lr_mode to model.json.")

  @property
  def _adapt_key(self) -> Tuple[Any, ...]:
    # With learned rates the update is the gradient times the learned rate
    # (Meta-SGD, Li et al. 2017): the optimizer's own rate is then 1.
    lr = 1.0 if self.lrs is not None else self.lr
    return (self.graphdef, self.filter_name, self.optimizer_name, lr,
            self._per_step_lrs, self.zeroshot)

  @property
  def adapt_traces(self) -> int:
    """Times the adaptation of this graph and protocol was traced (compiled).

    Shared by every ``TTS`` with the same model graph and protocol in this
    process (e.g. a base model and the voices loaded from it).
    """
    return ADAPT_TRACES[self._adapt_key]

  # ---- clips --------------------------------------------------------------

  def prepare_clips(self, wavs: Sequence[ClipLike], texts: Sequence[str],
                    sample_rate: Optional[int] = None,
                    names: Optional[Sequence[str]] = None,
                    check_speech: bool = True) -> List[Clip]:
    """``metatts.clips.prepare_clips`` with this model's settings (see
    :meth:`adapt` for the rules): one :class:`Clip` per input."""
    return clips_lib.prepare_clips(
        wavs, texts, feature_config=self.feature_config,
        symbols=self.symbols, max_tokens=self.max_tokens,
        max_frames=self.max_frames, sample_rate=sample_rate, names=names,
        check_speech=check_speech)

  def make_batch(self, clips: Sequence[Clip],
                 seed: Optional[int] = None) -> TTSBatch:
    """Pads clips into a support ``TTSBatch`` with bucketed lengths.

    Args:
      clips: from :meth:`prepare_clips`.
      seed: None: ``seeds=None``, the model's fixed default prenet-dropout
        masks (what the evaluation's adaptation uses); an int: per-clip
        dropout seeds drawn from it.

    Returns:
      ``TTSBatch`` with ``tokens`` [K, L_b], ``mels`` [K, T_b, M],
      ``speaker_ids`` all equal to the new-voice slot; ``L_b`` and ``T_b`` are
      the longest clip rounded up to ``TOKEN_BUCKET`` / ``FRAME_BUCKET``.
    """
    return clips_lib.make_batch(
        clips, speaker_slot=self.speaker_slot,
        max_tokens=self.config.max_tokens, max_frames=self.config.max_frames,
        num_mels=self.config.num_mels, seed=seed)

  # ---- adaptation ---------------------------------------------------------

  def adapt(self, wavs: Sequence[ClipLike], texts: Sequence[str],
            steps: Optional[int] = None, seed: Optional[int] = None,
            sample_rate: Optional[int] = None,
            names: Optional[Sequence[str]] = None,
            progress: Union[bool, Callable[[int, int, float], Any]] = False,
            check_speech: bool = True, vocoder_steps: int = 0) -> "Voice":
    """Adapts the model to a new speaker from 1-10 transcribed clips.

    Runs ``metatts.meta.adapt`` (the meta-learners' inner loop) with the
    exported protocol: filter ``self.filter_name``, optimizer
    ``self.optimizer_name`` at ``self.lr`` (or the learned inner rates), on
    the speaker-table row ``self.speaker_slot``. For a zeroshot model
    (``self.zeroshot``) the voice starts from the speaker encoder's mean
    vector of the clips (:meth:`speaker_vector`) and the same loop adapts
    ``{"acoustic", "speaker_vector"}`` (``metatts.voice.adapt``, what the
    evaluation runs too); ``steps=0`` is zero-shot cloning. With learned
    inner rates (Meta-SGD, Li et al. 2017) the step is
    ``theta - alpha * g`` with the learned ``alpha`` replacing the
    optimizer's rate, as in meta-training.

    Ctrl-C (SIGINT) stops a run between chunks of ``metatts.voice.CHUNK``
    steps and raises :class:`AdaptationInterrupted` (a
    ``KeyboardInterrupt``); its ``voice`` is the best voice so far (the
    chunk boundary with the lowest support loss, ``voice.info["steps"]``
    its step) or None when no chunk had finished. An Adam export without
    ``progress`` runs in one compiled call (exactly what the evaluation
    measures), which Ctrl-C stops only when it returns, with no voice.

    Args:
      wavs: 1-10 clips: audio file paths (any libsndfile format, resampled to
        the model's rate) or float waveform arrays [S] (then ``sample_rate``
        is required); a 2-D array [K, S] is K clips. Clips are trimmed and loudness-normalized like the
        training features; 2-10 s of clean speech each works best.
      texts: the transcript of each clip (raw English; numbers and
        abbreviations are expanded).
      steps: gradient steps, 0 to ``MAX_STEPS`` (default: the export's
        ``default_steps``).
      seed: the prenet dropout is on while adapting (as in training); None
        uses the model's fixed default masks, exactly like the evaluation's
        adaptation; an int draws other masks. The same value gives the same
        voice.
      sample_rate: sample rate of array clips.
      names: optional clip names recorded in the voice (default: the paths).
      progress: False (the default: quiet, as a library call should be),
        True for a tqdm bar on stderr with the support loss, or a callable
        ``progress(steps_done, steps_total, loss)`` called after every chunk.
        SGD gives the same numbers either way; Adam then runs in chunks
        (equal up to float32 rounding).
      check_speech: refuse clips that do not sound like speech
        (``metatts.clips.speech_fraction`` below
        ``metatts.clips.MIN_SPEECH_FRACTION``: noise, hiss); False skips it.
      vocoder_steps: also fine-tune the trained source-filter vocoder on the
        clips for this many steps (``metatts.vocoders.NSFVocoder.adapt``:
        the vocoder study's protocol); the voice then speaks, and saves,
        its own vocoder. 0 (the default) keeps the base vocoder. Measured
        on held-out speakers in docs/results/vocoder.md.

    Returns:
      A :class:`Voice`; ``voice.losses`` is the support loss before each step
      and after the last.

    Raises:
      ValueError: wrong number of clips, mismatched lists, an unreadable,
        silent, clipped, too short or too long clip, one that is not speech,
        an empty transcript or one that cannot match its clip (the message
        names the clip), ``steps`` or ``vocoder_steps`` outside [0,
        ``MAX_STEPS``], or ``vocoder_steps`` without a trained
        source-filter vocoder.
      FileNotFoundError: a clip path does not exist.
      AdaptationInterrupted: Ctrl-C while adapting (see above).
    """
    steps = check_steps(self.default_steps if steps is None else steps)
    self._check_vocoder_steps(vocoder_steps)
    clips = self.prepare_clips(wavs, texts, sample_rate, names, check_speech)
    return self.adapt_clips(clips, steps, seed, progress, vocoder_steps)

  def _check_vocoder_steps(self, vocoder_steps: int) -> int:
    vocoder_steps = check_steps(vocoder_steps)
    if vocoder_steps and not isinstance(self.vocoder, vocoders.NSFVocoder):
      raise ValueError(
          f"vocoder_steps={vocoder_steps}: only a trained source-filter "
          f"vocoder adapts, and this model speaks with {self.vocoder.name}; "
          "load it with vocoder='WORKDIR/vocoder/model' (an nsf export, "
          "experiments/configs/vocoder.py) or leave vocoder_steps at 0.")
    return vocoder_steps

  def adapt_clips(self, clips: Sequence[Clip], steps: Optional[int] = None,
                  seed: Optional[int] = None,
                  progress: Union[bool, Callable[[int, int, float], Any]
                                  ] = False,
                  vocoder_steps: int = 0) -> "Voice":
    """:meth:`adapt` on clips already checked by :meth:`prepare_clips`.

    ``python -m metatts adapt`` prepares (and so validates) the clips first,
    says what it is about to do, then calls this.
    """
    steps = check_steps(self.default_steps if steps is None else steps)
    vocoder_steps = self._check_vocoder_steps(vocoder_steps)
    if vocoder_steps and any(c.audio is None for c in clips):
      raise ValueError(
          "vocoder_steps needs the clips' audio; prepare them with "
          "tts.prepare_clips (it keeps the audio) or pass vocoder_steps=0.")
    batch = self.make_batch(clips, seed)
    info = {
        "steps": steps, "seed": None if seed is None else int(seed),
        "clips": [c.name for c in clips], "texts": [c.text for c in clips],
        "filter": self.filter_name, "optimizer": self.optimizer_name,
        "lr": self.lr, "learned_lrs": self.lrs is not None,
    }
    if self.zeroshot:
      info["zeroshot"] = True
    bar, callback = None, None
    if callable(progress):
      callback = progress
    elif progress and steps > 0:
      from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
      bar = tqdm(total=steps, desc="adapting", unit="step", leave=True)

      def callback(done, total, loss):
        del total
        bar.update(done - bar.n)
        bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
    try:
      adapted = voice_lib.adapt(self, voice_lib.start(self, batch), batch,
                                [steps], callback=callback)
    except AdaptationInterrupted as e:
      if e.params is not None:
        e.voice = Voice(self, e.params, self.speaker_slot, dict(
            info, steps=e.best_step, losses=e.losses.tolist(),
            steps_requested=steps, interrupted=True))
      raise
    finally:
      if bar is not None:
        bar.close()
    params, losses = adapted.params[steps], adapted.losses[steps]
    if not np.all(np.isfinite(losses)):
      raise FloatingPointError(
          f"Adaptation diverged (support losses {losses.tolist()}); use fewer "
          "steps or check the clips (very loud or noisy audio).")
    voice_vocoder = None
    if vocoder_steps:
      voice_vocoder, vlosses = self.vocoder.adapt(
          [(c.mel, c.audio) for c in clips], vocoder_steps,
          seed=0 if seed is None else int(seed))
      info.update(vocoder_steps=vocoder_steps,
                  vocoder_losses=vlosses.tolist())
    return Voice(self, params, self.speaker_slot,
                 dict(info, losses=losses.tolist()), vocoder=voice_vocoder)

  def speaker_vector(self, batch: TTSBatch) -> jax.Array:
    """A zeroshot model's start vector: the encoder's mean over the clips.

    Args:
      batch: support clips from :meth:`make_batch` (``mels`` [K, T, M]).

    Returns:
      float32 [D] (``metatts.voice.encode_speaker``).

    Raises:
      ValueError: not a zeroshot model, or its speaker encoder was not loaded
        (a saved voice carries its vector but not the encoder).
    """
    if not self.zeroshot:
      raise ValueError(
          f"{self.model_dir} is not a zeroshot model (it has a speaker "
          "table); adapt it with tts.adapt(wavs, texts).")
    if self.encoder is None:
      raise ValueError(
          f"{self.model_dir} is a zeroshot model without its speaker encoder "
          "(a saved voice keeps only its vector); load the trained export "
          "with metatts.load('WORKDIR/zeroshot') to adapt to new clips.")
    return self._encode_jit(self.encoder_params, self.encoder_rest,
                            batch.mels, batch.mel_lengths)

  def voice(self, speaker: Union[int, str, None] = None) -> "Voice":
    """A voice without adaptation: a training speaker, or the new-voice slot.

    Args:
      speaker: a training speaker id (see ``self.speakers``) or table row;
        None = the new-voice slot with the trained parameters (zero steps).

    Returns:
      A :class:`Voice` with the base parameters.

    Raises:
      ValueError: an unknown speaker, or a zeroshot model (it has no speaker
        table: its voices come from clips).
    """
    if self.zeroshot:
      raise ValueError(
          f"{self.model_dir} is a zeroshot model: it has no speaker table, so "
          "a voice needs clips of the speaker. Use tts.adapt(wavs, texts, "
          "steps=0) for zero-shot cloning (the speaker encoder's vector of "
          "the clips, no training) or steps > 0 to fine-tune.")
    if speaker is None:
      slot = self.speaker_slot
    elif isinstance(speaker, str):
      if speaker not in self.speakers:
        raise ValueError(f"Unknown speaker {speaker!r}; the model knows "
                         f"{self.speakers[:20]} (self.speakers).")
      slot = self.speakers.index(speaker)
    else:
      slot = int(speaker)
    if not 0 <= slot < self.config.num_speakers:
      raise ValueError(f"Speaker row {slot} outside [0, "
                       f"{self.config.num_speakers}).")
    return Voice(self, self.params, slot,
                 {"steps": 0, "speaker": speaker, "losses": [], "clips": []})

  # ---- synthesis ----------------------------------------------------------

  def split_text(self, text: str) -> List[np.ndarray]:
    """Normalizes ``text`` and cuts it into sentence chunks of symbol ids.

    Raises:
      ValueError: not a string, empty, or nothing speakable in it.
    """
    return voice_lib.split_text(text, self.symbols, self.max_tokens)

  def synthesize(self, params: Any, speaker_slot: int, text: str,
                 seed: int = 0, return_mel: bool = False):
    """Text -> waveform with given parameters (see :meth:`Voice.synthesize`)."""
    speech = voice_lib.synthesize(self, params, speaker_slot, text, seed)
    if return_mel:
      return speech.audio, speech.sample_rate, speech.mel
    return speech.audio, speech.sample_rate


# ----------------------------------------------------------------------------
# Voices.


class Voice:
  """An adapted voice: parameters for a speaker slot of a :class:`TTS`.

  Attributes:
    tts: the base model (graph, features, vocoder).
    params: the adapted parameter pytree.
    speaker_slot: the speaker-table row the voice speaks with.
    info: what produced it (steps, clips, seed, losses, protocol).
    losses: float32 [steps + 1] support loss before each step and after the
      last (empty for a voice made without adaptation).
  """

  def __init__(self, tts: TTS, params: Any, speaker_slot: int,
               info: Dict[str, Any], vocoder: Any = None):
    self.tts = tts
    self.params = params
    self.speaker_slot = int(speaker_slot)
    self.info = dict(info)
    self.losses = np.asarray(self.info.get("losses", []), np.float32)
    self._vocoder = vocoder

  @property
  def vocoder(self) -> Any:
    """The voice's vocoder: its adapted one (``adapt(...,
    vocoder_steps=N)``), else the base model's."""
    return self.tts.vocoder if self._vocoder is None else self._vocoder

  @property
  def sample_rate(self) -> int:
    return self.tts.feature_config.sample_rate

  @property
  def speaker_vector(self) -> Optional[np.ndarray]:
    """float32 [D]: the conditioning vector of a zeroshot voice, else None."""
    if not self.tts.zeroshot:
      return None
    return np.asarray(self.params["speaker_vector"], np.float32)

  def synthesize(self, text: str, seed: int = 0,
                 return_mel: bool = False):
    """Speaks ``text`` in this voice.

    Args:
      text: English text; numbers, abbreviations and punctuation are
        normalized like the training transcripts, and long text is split into
        sentences (joined with short pauses).
      seed: seed of the prenet dropout and the vocoder's sampling / initial
        phase; the same seed gives the same waveform.
      return_mel: also return the predicted log-mel [T, M].

    Returns:
      ``(audio, sample_rate)``: float32 waveform [S] and its rate (plus the
      mel when ``return_mel``).

    Raises:
      ValueError: empty text or text with nothing speakable.
    """
    speech = voice_lib.synthesize(self.tts, self.params, self.speaker_slot,
                                  text, seed, self.vocoder)
    if return_mel:
      return speech.audio, speech.sample_rate, speech.mel
    return speech.audio, speech.sample_rate

  def save(self, directory: PathLike) -> str:
    """Writes the voice so :func:`load_voice` restores it standalone.

    Layout: ``model.json`` + ``params/`` (an export, Orbax), ``voice.json``
    and ``vocoder/model`` (a copy of the vocoder export when one is used,
    or the voice's adapted vocoder after ``adapt(..., vocoder_steps=N)``).
    A zeroshot voice's vector is stored in ``voice.json``
    (``speaker_vector``, exact float32 values); the speaker encoder is not
    needed to speak and is not copied.

    The save is atomic (``metatts.atomic.staged_dir``): everything is
    written into a hidden sibling folder that is then renamed into place, so
    a voice already at ``directory`` survives any failure, ``kill -9``
    included, and is replaced only by a complete new one.

    Args:
      directory: a new or empty directory, or a saved voice (replaced).

    Returns:
      The absolute directory.

    Raises:
      ValueError: ``directory`` is (or is inside) the folder the model or its
        vocoder was loaded from, an existing file or a non-empty folder that
        is not a saved voice, or under a folder that cannot be written.
    """
    tts, info = self.tts, self.tts.info
    voc = self.vocoder
    voc_dir = getattr(tts.vocoder, "directory", None)
    directory = check_voice_target(directory, (tts.model_dir, voc_dir))
    standard = ("format", "version", "method", "model", "model_config",
                "feature_config", "symbols", "speakers", "adapt",
                "learned_lrs", "has_extra", "directory",
                "speaker_encoder_config")  # a voice has no encoder folder
    params, vector = self.params, self.speaker_vector
    if vector is not None:
      params = self.params["acoustic"]
    record = {
        "format": VOICE_FORMAT, "version": VOICE_VERSION,
        "base_model": tts.base_model_dir, "base_model_hash": tts.hash,
        "base_method": info.get("method"),
        "speaker_slot": self.speaker_slot, "vocoder": voc.name,
        "sample_rate": self.sample_rate, **self.info,
    }
    if vector is not None:
      # float32 -> JSON float -> float32 is exact: the voice speaks the same.
      record["speaker_vector"] = [float(x) for x in vector]
    with atomic.staged_dir(directory) as tmp:
      _export_module().write_export(
          tmp, method=info.get("method", "unknown"),
          model_name=info.get("model", "tacotron"),
          model_config=info["model_config"], params=params,
          feature_config=info["feature_config"],
          symbols=info.get("symbols", tts.symbols.name),
          speakers=info.get("speakers", []), adapt=info.get("adapt", {}),
          extra=tts.lrs,
          info={k: v for k, v in info.items() if k not in standard},
          where=directory)
      if isinstance(voc, vocoders.NSFVocoder):  # a copy, or adapted params
        voc.save_to(os.path.join(tmp, "vocoder", "model"))
      elif isinstance(voc, vocoders.WaveNetVocoder):
        shutil.copytree(voc.directory, os.path.join(tmp, "vocoder", "model"))
      atomic.write_text(os.path.join(tmp, VOICE_FILE),
                        json.dumps(record, indent=1))
    return directory


def check_voice_target(directory: PathLike,
                       protected: Sequence[Optional[PathLike]] = ()) -> str:
  """Checks that a voice can be saved to ``directory``; touches nothing.

  :meth:`Voice.save` runs it first, and ``python -m metatts adapt`` runs it
  before loading and adapting, so a bad ``--out`` fails in a second.

  Args:
    directory: where the voice is to be saved.
    protected: folders the voice must not replace or land inside (the model
      it was adapted from, its vocoder, the CLI's ``--model``).

  Returns:
    The absolute directory.

  Raises:
    ValueError: one line naming the folder and the fix.
  """
  directory = os.path.abspath(os.fspath(directory))
  atomic.check_not_within(directory, [os.fspath(p) for p in protected if p],
                          "the voice")
  if os.path.lexists(directory) and not os.path.isdir(directory):
    raise ValueError(
        f"Cannot save the voice to {directory}: it is a file; choose a new "
        "folder name.")
  if os.path.isdir(directory) and os.listdir(directory) and \
      not os.path.isfile(os.path.join(directory, VOICE_FILE)):
    raise ValueError(
        f"Cannot save the voice to {directory}: the folder exists and is not "
        "a saved voice (no voice.json); choose a new or empty folder.")
  atomic.check_writable_parent(directory, "the voice folder")
  return directory


def load(path: PathLike, vocoder: Union[None, str, PathLike, Any] = None
         ) -> TTS:
  """Loads a trained model for few-shot adaptation.

  A ``zeroshot`` export (``model.json`` with ``speaker_encoder_config``) is
  loaded with its speaker encoder (``metatts.methods.zeroshot
  .load_zeroshot``); ``tts.zeroshot`` is then True.

  Args:
    path: a training ``WORKDIR`` (its primary method), ``WORKDIR/<method>``
      or ``WORKDIR/<method>/model``.
    vocoder: None (``WORKDIR/vocoder/model`` if exported, else Griffin-Lim),
      'griffin-lim', a vocoder export directory, or a vocoder object (e.g.
      ``metatts.vocoders.GriffinLimVocoder(mel_config, n_iter=8)``).

  The persistent compilation cache (``metatts.compile_cache``:
  ``~/.cache/metatts/xla``, ``METATTS_COMPILE_CACHE=off`` to opt out) is
  turned on, so adapting and synthesizing in a new process reuse the
  programs an earlier one compiled.

  Returns:
    A :class:`TTS`.

  Raises:
    FileNotFoundError: no export there (the message says what to run).
    ValueError: a corrupt or inconsistent export.
  """
  from metatts import compile_cache  # pylint: disable=g-import-not-at-top
  compile_cache.enable()
  model_dir = resolve_model_dir(path)
  head = _export_module().read_model_json(model_dir)
  fields = head.get("model_config", {})
  if not ("num_symbols" in fields and "num_mels" in fields):
    # Not a text -> mel model (e.g. the vocoder's export).
    raise ValueError(
        f"{model_dir} holds a {head.get('model')!r} model; metatts.load needs "
        "an acoustic (text -> mel) export such as WORKDIR/<method>/model.")
  encoder = None
  if "speaker_encoder_config" in head:
    model, encoder, params, info = _zeroshot_module().load_zeroshot(model_dir)
    params, extra = params["acoustic"], None
  else:
    model, params, info, extra = _export_module().load_exported(model_dir)
  fc = dfeat.FeatureConfig.from_config(info["feature_config"])
  voc = vocoders.load_vocoder(vocoder, model_dir, fc.mel_config())
  return TTS(model, params, info, extra, model_dir, voc, encoder=encoder)


def load_voice(directory: PathLike,
               vocoder: Union[None, str, PathLike] = None) -> Voice:
  """Restores a voice written by :meth:`Voice.save`.

  Args:
    directory: the voice directory.
    vocoder: as in :func:`load` (default: the copy saved with the voice).

  Returns:
    The :class:`Voice`; it synthesizes exactly like the saved one.

  Raises:
    FileNotFoundError: not a saved voice.
    ValueError: a ``voice.json`` or ``model.json`` that fails validation
      (:func:`validate_voice_record`,
      ``metatts.training.export.validate_model_info``), or damaged
      parameters; one line naming the file, the key and the fix.
  """
  directory = os.path.abspath(os.fspath(directory))
  atomic.recover(directory)  # a save killed between its two renames
  path = os.path.join(directory, VOICE_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{directory} is not a saved voice (no {VOICE_FILE}); create one with "
        "voice.save(DIR) or `python -m metatts adapt ... --out DIR`.")
  record = _read_json(path, "Corrupt {path} ({error}); adapt and save the "
                      "voice again.")
  validate_voice_record(record, path)
  model, params, info, extra = _export_module().load_exported(directory)
  fc = dfeat.FeatureConfig.from_config(info["feature_config"])
  if vocoder is None and record.get("vocoder") == "griffin-lim":
    vocoder = "griffin-lim"
  voc = vocoders.load_vocoder(vocoder, directory, fc.mel_config())
  tts = TTS(model, params, info, extra, directory, voc)
  validate_voice_record(record, path, tts)
  tts.hash = record.get("base_model_hash", tts.hash)
  tts.base_model_dir = record.get("base_model", directory)
  fields = {k: v for k, v in record.items() if k not in (
      "format", "version", "base_model", "base_model_hash", "base_method",
      "speaker_slot", "vocoder", "sample_rate", "speaker_vector")}
  params = tts.params
  if tts.zeroshot:
    params = {"acoustic": tts.params,
              "speaker_vector": jnp.asarray(np.asarray(
                  record["speaker_vector"], np.float32))}
  return Voice(tts, params, record["speaker_slot"], fields)


def validate_voice_record(record: Any, path: str,
                          tts: Optional[TTS] = None) -> None:
  """Checks a parsed ``voice.json``: required keys, types and ranges.

  Without ``tts`` only what the file alone decides is checked (run before
  the parameters are restored); with the loaded ``tts`` also the speaker
  slot against its speaker table, the sample rate and a zeroshot voice's
  vector.

  Args:
    record: the parsed JSON.
    path: the file, named in the message.
    tts: the voice folder's loaded model, or None.

  Raises:
    ValueError: one line naming the file, the key and the fix.
  """
  again = "or adapt and save the voice again"
  bad = records.one_line_error(path, ValueError, f"correct it {again}")
  records.check_header(record, bad, fmt=VOICE_FORMAT, version=VOICE_VERSION,
                       what="a metatts voice",
                       redo="adapt and save the voice again",
                       version_fix=f"set it to {VOICE_VERSION} {again}")
  if "speaker_slot" not in record:
    bad("speaker_slot", "is missing (a required key: the speaker-table row "
        "the voice speaks with)", "add it (the model's adapt.speaker_slot in "
        f"model.json) {again}")
  slot = record["speaker_slot"]
  if not records.is_int(slot) or slot < 0:
    bad("speaker_slot", f"is {slot!r}, not an integer >= 0")
  if record.get("vocoder") not in (None, "griffin-lim", "wavenet", "nsf"):
    bad("vocoder", f"is {record['vocoder']!r}",
        f"use 'griffin-lim', 'wavenet' or 'nsf' {again}")
  for key in ("sample_rate", "steps"):
    value = record.get(key)
    if value is not None and (not records.is_int(value) or value < 0 or
                              (key == "sample_rate" and value == 0)):
      bad(key, f"is {value!r}, not an integer "
          f"{'> 0' if key == 'sample_rate' else '>= 0'}")
  if record.get("seed") is not None and not records.is_int(record["seed"]):
    bad("seed", f"is {record['seed']!r}, not an integer or null")
  losses = record.get("losses")
  if losses is not None and not (isinstance(losses, list) and
                                 all(records.is_number(x) for x in losses)):
    bad("losses", "must be a list of numbers")
  for key in ("clips", "texts"):
    value = record.get(key)
    if value is not None and not (isinstance(value, list) and
                                  all(isinstance(x, str) for x in value)):
      bad(key, "must be a list of strings")
  for key in ("base_model", "base_model_hash", "base_method"):
    value = record.get(key)
    if value is not None and not isinstance(value, str):
      bad(key, f"is {value!r}, not a string")
  if tts is None:
    return
  cfg = tts.config
  if getattr(cfg, "use_speaker_table", True) and slot >= cfg.num_speakers:
    bad("speaker_slot", f"is {slot}, outside the model's speaker table [0, "
        f"{cfg.num_speakers})", f"set it to {tts.speaker_slot} (the new-voice "
        f"row, adapt.speaker_slot in model.json) {again}")
  rate = record.get("sample_rate")
  if rate is not None and rate != tts.feature_config.sample_rate:
    bad("sample_rate", f"is {rate}, but the model's feature_config has "
        f"{tts.feature_config.sample_rate}",
        f"set it to {tts.feature_config.sample_rate} {again}")
  if tts.zeroshot:
    vector = record.get("speaker_vector")
    dim = tts.config.external_speaker_dim
    if not (isinstance(vector, list) and len(vector) == dim and
            all(records.is_number(x) and np.isfinite(x) for x in vector)):
      bad("speaker_vector", f"is missing or not {dim} finite numbers (a "
          "zeroshot voice speaks with it)", "adapt and save the voice again")


__all__ = ["AdaptationInterrupted", "Clip", "GriffinLimVocoder", "TTS",
           "Voice", "NSFVocoder", "WaveNetVocoder", "check_steps", "check_voice_target", "load", "load_voice", "params_hash",
           "resolve_model_dir", "validate_voice_record"]
