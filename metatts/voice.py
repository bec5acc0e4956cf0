"""The one adapt-then-synthesize path of metatts.

``metatts.load(...).adapt(...).synthesize(...)``, the command line
(``python -m metatts``) and the evaluation protocol
(``metatts.experiments.adaptation``) all adapt and speak through the
functions of this module, so the numbers in the reports are measured on
exactly what a user runs:

* :func:`start` - a new voice's starting parameters: the model's parameters
  as exported (their new-voice speaker-table row already holds what the
  method chose: the meta-learned row, the mean of the trained rows, or the
  random initialization), or, for a model conditioned on an external speaker
  vector (``zeroshot``), ``{"acoustic", "speaker_vector"}`` with the speaker
  encoder's mean vector of the support clips.
* :func:`adapt` - ``metatts.meta.adapt`` (the inner loop the meta-learners
  differentiate through) with the exported protocol, returning the
  parameters after each requested number of steps. With the stateless SGD
  inner optimizer the steps run in compiled chunks of ``CHUNK`` (one
  compilation per support shape, and the snapshots at 5, 20 and 100 steps
  cost 100 steps); a stateful optimizer (Adam) runs every step count from
  the start in one call, so its moments never restart, or, with a progress
  ``callback``, in the same chunks with its state carried over. Ctrl-C
  between chunks raises :class:`AdaptationInterrupted` with the best
  parameters seen so far.
* :func:`synthesize` - text -> sentences -> Tacotron inference (until the
  stop token, but not before ``metatts.synthesis.min_synthesis_frames`` and not past a
  budget proportional to the text) -> vocoder -> one waveform, peak-limited
  to ``PEAK_LIMIT``.
* :func:`adapt_and_synthesize` - the three in a row; what the evaluation
  calls.

The model argument is a :class:`metatts.api.TTS` (any object with its
attributes).

References:
  Finn et al. (2017), Model-agnostic meta-learning for fast adaptation of deep
    networks, ICML, arXiv:1703.03400.
  Li et al. (2017), Meta-SGD, arXiv:1707.09835 (learned inner rates).
  Arik et al. (2018), Neural voice cloning with a few samples, NeurIPS,
    arXiv:1802.06006 (speaker adaptation and speaker encoding).
  Shen et al. (2018), Natural TTS synthesis by conditioning WaveNet on mel
    spectrogram predictions, ICASSP, arXiv:1712.05884.
"""

from __future__ import annotations

import collections
import functools
from typing import (Any, Callable, Dict, List, NamedTuple, Optional,
                    Sequence, Tuple)

import jax.numpy as jnp
import numpy as np
import optax

from metatts import compile_cache
from metatts import functional
from metatts import meta
# Re-exported: synthesis is the light half of the voice path.
from metatts.synthesis import (  # pylint: disable=unused-import
    PEAK_LIMIT, SENTENCE_PAUSE_SECONDS, STOP_THRESHOLD,
    SYNTH_MIN_SEC_PER_SYMBOL, SYNTH_SEC_PER_SYMBOL, Speech, split_text,
    synthesize)

# Inner steps per compiled adaptation call (stateless optimizers).
CHUNK = 5
# Inner optimizers the export may name (config value -> optax constructor).
OPTIMIZERS = {
    "sgd": optax.sgd,
    "adam": optax.adam,
}
STATELESS = ("sgd",)

# (graphdef, filter, optimizer, lr, per_step_lrs, vector) -> times traced.
ADAPT_TRACES: "collections.Counter" = collections.Counter()


# ----------------------------------------------------------------------------
# A voice conditioned on an external speaker vector (the zeroshot method).


def vector_voice_model(graphdef, rest, params, batch_size: int):
  """The Tacotron and its speaker vectors for a vector-conditioned voice.

  Args:
    graphdef: the Tacotron's graph (``external_speaker_dim > 0``).
    rest: its non-parameter state.
    params: ``{"acoustic": Tacotron params, "speaker_vector": [D]}``.
    batch_size: B.

  Returns:
    ``(model, speaker_vectors [B, D])``: the vector broadcast over the batch.
  """
  model = functional.merge(graphdef, params["acoustic"], rest)
  v = params["speaker_vector"]
  return model, jnp.broadcast_to(v, (batch_size,) + v.shape)


def vector_voice_loss_fn(graphdef, rest):
  """``loss_fn(params, batch)`` of a vector-conditioned voice.

  ``params = {"acoustic", "speaker_vector" [D]}``: the Tacotron loss of the
  batch conditioned on the one vector; the vector is in the filter group
  ``speaker``, so ``speaker+decoder`` adapts it with the decoder.
  """

  def loss_fn(params, batch):
    model, v = vector_voice_model(graphdef, rest, params,
                                  batch.tokens.shape[0])
    return model.loss(batch, speaker_vectors=v)

  return loss_fn


def encode_speaker(encoder_graphdef, encoder_rest, encoder_params, mels,
                   mel_lengths):
  """A new voice's vector: the speaker encoder's mean over its clips.

  Args:
    encoder_graphdef, encoder_rest: the ``SpeakerEncoder``'s graph and state.
    encoder_params: its parameters.
    mels: [K, T, M] support log-mels (padded).
    mel_lengths: [K] valid frames (a zero length counts as 1).

  Returns:
    [D] float32 (``speaker_encoder.speaker_vector``, Arik et al. 2018's
    averaging over cloning samples).
  """
  from metatts.models import speaker_encoder  # pylint: disable=g-import-not-at-top
  enc = functional.merge(encoder_graphdef, encoder_params, encoder_rest)
  return speaker_encoder.speaker_vector(enc, mels,
                                        jnp.maximum(mel_lengths, 1))


# ----------------------------------------------------------------------------
# Compiled functions, shared by every model with the same graph and protocol.


@functools.lru_cache(maxsize=16)
def adapt_function(graphdef, filter_name: str, optimizer_name: str,
                   lr: float, per_step_lrs: bool, vector: bool = False,
                   resumable: bool = False):
  """Jitted ``(params, lrs, rest, batch, num_steps) -> (params, losses)``.

  With ``vector`` the params are ``{"acoustic", "speaker_vector"}`` and the
  loss is :func:`vector_voice_loss_fn`'s. With ``resumable`` the function is
  ``(params, opt_state, lrs, rest, batch, num_steps) -> (params, losses,
  opt_state)``: a stateful optimizer (Adam) continues from ``opt_state``,
  so a long run can go in chunks (:func:`adapt` with a ``callback``).
  """
  key = (graphdef, filter_name, optimizer_name, lr, per_step_lrs, vector)
  predicate = functional.filter_for(filter_name)
  inner_optimizer = OPTIMIZERS[optimizer_name](lr)

  def run(params, opt_state, lrs, rest, batch, num_steps):
    ADAPT_TRACES[key] += 1  # a Python side effect: runs only while tracing
    if vector:
      loss_fn = vector_voice_loss_fn(graphdef, rest)
    else:
      loss_fn = functional.make_loss_fn(graphdef, rest)
    return meta.adapt(params, batch, loss_fn,
                      inner_optimizer=inner_optimizer, num_steps=num_steps,
                      filter=predicate, lrs=lrs, per_step_lrs=per_step_lrs,
                      opt_state=opt_state, return_state=resumable)

  # Jitted with its trace kept in the compilation cache's folder
  # (metatts.compile_cache.stored_jit): a new process skips tracing and
  # lowering the adaptation (2-4 s of a warm `python -m metatts adapt`).
  if resumable:
    def resumable_fn(params, opt_state, lrs, rest, batch, *, num_steps):
      return run(params, opt_state, lrs, rest, batch, num_steps)
    return compile_cache.stored_jit(
        resumable_fn, name="adapt_resumable_fn", key=key + (resumable,),
        static_argnames=("num_steps",))

  def adapt_fn(params, lrs, rest, batch, *, num_steps):
    return run(params, None, lrs, rest, batch, num_steps)

  return compile_cache.stored_jit(adapt_fn, name="adapt_fn", key=key,
                                  static_argnames=("num_steps",))


def init_optimizer_state(tts, params) -> Any:
  """The inner optimizer's fresh state for ``params`` (``tts``'s filter)."""
  predicate = functional.filter_for(tts.filter_name)
  adapted, _ = meta.base.make_partition(params, predicate).split(params)
  return OPTIMIZERS[tts.optimizer_name](1.0).init(adapted)


@functools.lru_cache(maxsize=16)
def infer_function(graphdef, vector: bool = False):
  """Jitted Tacotron inference over a params pytree (``max_frames`` static).

  With ``vector`` the params are ``{"acoustic", "speaker_vector"}`` and the
  vector conditions every utterance.
  """

  def infer_fn(params, rest, tokens, token_lengths, speaker_ids, seeds,
               min_frames, *, max_frames, stop_threshold):
    if vector:
      model, vectors = vector_voice_model(graphdef, rest, params,
                                          tokens.shape[0])
    else:
      model, vectors = functional.merge(graphdef, params, rest), None
    return model.infer(tokens, token_lengths, speaker_ids,
                       max_frames=max_frames, seeds=seeds,
                       speaker_vectors=vectors,
                       stop_threshold=stop_threshold, min_frames=min_frames)

  return compile_cache.stored_jit(
      infer_fn, name="infer_fn", key=(graphdef, vector),
      static_argnames=("max_frames", "stop_threshold"))


@functools.lru_cache(maxsize=8)
def encode_function(encoder_graphdef):
  """Jitted ``(encoder_params, encoder_rest, mels, lengths) -> [D]``."""

  def encode_fn(encoder_params, encoder_rest, mels, mel_lengths):
    return encode_speaker(encoder_graphdef, encoder_rest, encoder_params,
                          mels, mel_lengths)

  return compile_cache.stored_jit(encode_fn, name="encode_fn",
                                  key=(encoder_graphdef,))


# ----------------------------------------------------------------------------
# Adaptation.


def start(tts, batch) -> Any:
  """A new voice's parameters before any step (see the module docstring).

  Args:
    tts: the loaded model.
    batch: its support ``TTSBatch`` (``tts.make_batch``).

  Returns:
    ``tts.params``, or ``{"acoustic", "speaker_vector"}`` for a model
    conditioned on an external speaker vector.
  """
  if not tts.zeroshot:
    return tts.params
  return {"acoustic": tts.params, "speaker_vector": tts.speaker_vector(batch)}


def _chunk_lrs(lrs, offset: int, n: int, per_step: bool):
  """The learned rates of steps ``offset .. offset + n - 1``."""
  if lrs is None or not per_step:
    return lrs
  out = []
  for lr in lrs:
    idx = np.minimum(np.arange(offset, offset + n), lr.shape[0] - 1)
    out.append(jnp.take(lr, jnp.asarray(idx), axis=0))
  return out


class Adapted(NamedTuple):
  """What :func:`adapt` returns."""

  params: Dict[int, Any]  # steps -> adapted parameters
  losses: Dict[int, np.ndarray]  # steps -> float32 [steps + 1] support loss


class AdaptationInterrupted(KeyboardInterrupt):
  """Ctrl-C (SIGINT) during :func:`adapt`, with the best voice seen so far.

  A ``KeyboardInterrupt``, so code that does not know it stops as usual.
  The best voice is the chunk boundary (step 0 included) with the lowest
  finite support loss among those completed before the interrupt.

  Attributes:
    steps_done: steps completed before the interrupt.
    steps_requested: the largest step count asked for.
    best_step: the step of the best chunk boundary, or None when no chunk
      finished (e.g. interrupted while compiling).
    params: the parameters at ``best_step`` (None without one).
    losses: float32 [best_step + 1] support losses up to ``best_step``.
    voice: ``metatts.api`` sets it to the :class:`metatts.api.Voice` of
      ``params`` (None without one).
  """

  def __init__(self, steps_done: int, steps_requested: int,
               best_step: Optional[int] = None, params: Any = None,
               losses: Optional[np.ndarray] = None):
    where = ("no chunk had finished" if best_step is None else
             f"best so far: step {best_step}")
    super().__init__(f"adaptation interrupted after {steps_done} of "
                     f"{steps_requested} steps ({where})")
    self.steps_done = int(steps_done)
    self.steps_requested = int(steps_requested)
    self.best_step = best_step
    self.params = params
    self.losses = (np.zeros((0,), np.float32) if losses is None else
                   np.asarray(losses, np.float32))
    self.voice = None


def adapt(tts, params, batch, steps: Sequence[int],
          callback: Optional[Callable[[int, int, float], Any]] = None
          ) -> Adapted:
  """Adapts ``params`` on ``batch`` with the model's protocol.

  The inner loop is ``metatts.meta.adapt`` with ``tts``'s filter, inner
  optimizer and rate (or learned rates: the step is then the gradient times
  the learned rate, as in Meta-SGD's meta-training). SGD runs in chunks of
  ``CHUNK`` steps that continue each other (chunk boundaries at multiples of
  ``CHUNK``), so 20 steps asked alone and 20 steps on the way to 100 are the
  same computation; without a ``callback`` Adam runs each step count from
  the start in one compiled call (what the evaluation measures), with one it
  runs in the same chunks, carrying its moments from chunk to chunk (the
  same steps; equal to the one-call run up to float32 rounding).

  Long runs: between chunks Python sees Ctrl-C (SIGINT), so a chunked run
  stops within a chunk's time (5 steps; ~0.2 s for the duration Tacotron
  on 5 clips on CPU, docs/benchmarks.md); a single compiled call (Adam
  without a callback, or the first chunk's compilation) is only interrupted
  when it returns. The interrupt is raised as :class:`AdaptationInterrupted`
  (a ``KeyboardInterrupt``) carrying the parameters of the chunk boundary
  with the lowest support loss so far.

  Args:
    tts: the loaded model (its ``_adapt_jit``, ``lrs``, ``rest``).
    params: the starting parameters (:func:`start`).
    batch: the support ``TTSBatch``.
    steps: step counts to return, e.g. ``(0, 5, 20, 100)``.
    callback: optional ``callback(steps_done, steps_total, loss)`` called
      after every chunk with the support loss at that boundary (a progress
      bar); None leaves the computation exactly as the evaluation runs it.

  Returns:
    ``Adapted``: per step count the parameters and the support loss before
    each step and after the last.

  Raises:
    AdaptationInterrupted: Ctrl-C (SIGINT) while adapting.
  """
  counts = sorted({int(s) for s in steps})
  if not counts or counts[0] < 0:
    raise ValueError(f"steps={list(steps)} must be integers >= 0.")
  fn, lrs, per_step = tts._adapt_jit, tts.lrs, tts._per_step_lrs  # pylint: disable=protected-access

  def run(p, offset, n):
    out, ls = fn(p, _chunk_lrs(lrs, offset, n, per_step), tts.rest, batch,
                 num_steps=n)
    return out, np.asarray(ls, np.float32)

  result, losses = {}, {}
  if counts[-1] == 0:
    _, ls = run(params, 0, 0)
    return Adapted({0: params}, {0: ls})
  stateful = tts.optimizer_name not in STATELESS
  if stateful and callback is None:
    try:
      for s in counts:
        if s:
          result[s], losses[s] = run(params, 0, s)
    except KeyboardInterrupt as e:
      raise AdaptationInterrupted(0, counts[-1]) from e
    if 0 in counts:
      result[0] = params
      losses[0] = losses[counts[-1]][:1]
    return Adapted(result, losses)

  if stateful:
    resumable = adapt_function(*tts._adapt_key, resumable=True)  # pylint: disable=protected-access
    opt_state = init_optimizer_state(tts, params)

  total, current, done, chain = counts[-1], params, 0, []
  best = None  # (loss, step, params), replaced as one object
  try:
    for s in counts:
      while done < s:
        n = min(CHUNK - done % CHUNK, s - done)
        if stateful:
          current, ls, opt_state = resumable(
              current, opt_state, _chunk_lrs(lrs, done, n, per_step),
              tts.rest, batch, num_steps=n)
          ls = np.asarray(ls, np.float32)
        else:
          current, ls = run(current, done, n)
        if chain:
          chain.pop()  # the boundary loss, again as the next chunk's first
        elif np.isfinite(ls[0]):
          best = (float(ls[0]), 0, params)
        chain.extend(ls)
        done += n
        last = float(ls[-1])
        if np.isfinite(last) and (best is None or last < best[0]):
          best = (last, done, current)
        if callback is not None:
          callback(done, total, last)
      result[s] = current
  except KeyboardInterrupt as e:
    if best is None:
      raise AdaptationInterrupted(max(len(chain) - 1, 0), total) from e
    # The curve a run of best[1] steps records: its last value is that
    # chunk's own final loss (the chain holds the next chunk's first).
    raise AdaptationInterrupted(
        max(len(chain) - 1, 0), total, best[1], best[2],
        np.asarray(chain[:best[1]] + [best[0]], np.float32)) from e
  chain = np.asarray(chain, np.float32)
  losses = {s: chain[:s + 1] for s in counts}
  return Adapted(result, losses)


# ----------------------------------------------------------------------------
# Synthesis.


def adapt_and_synthesize(tts, clips: Sequence[Any], texts: Sequence[str],
                         steps: Sequence[int], seed: int = 0,
                         batch_seed: Optional[int] = None
                         ) -> Tuple[Dict[int, List[Speech]], Adapted]:
  """Adapts to ``clips`` and speaks ``texts`` after each step count.

  Exactly ``tts.adapt(clips, ..., steps=S, seed=batch_seed)`` followed by
  ``voice.synthesize(text, seed=seed)`` for every ``S`` in ``steps``, with
  the snapshots of one adaptation run.

  Args:
    tts: the loaded model.
    clips: prepared ``metatts.clips.Clip`` objects (``tts.prepare_clips``).
    texts: what to say.
    steps: adaptation step counts.
    seed: the synthesis seed (prenet dropout, vocoder).
    batch_seed: the support batch's dropout seed (None: the model's fixed
      masks, the API's default).

  Returns:
    ``({S: [Speech per text]}, Adapted)``.
  """
  batch = tts.make_batch(clips, batch_seed)
  adapted = adapt(tts, start(tts, batch), batch, steps)
  speech = {s: [synthesize(tts, p, tts.speaker_slot, t, seed) for t in texts]
            for s, p in sorted(adapted.params.items())}
  return speech, adapted


__all__ = ["ADAPT_TRACES", "AdaptationInterrupted", "Adapted", "CHUNK", "OPTIMIZERS", "PEAK_LIMIT",
           "SENTENCE_PAUSE_SECONDS", "SYNTH_MIN_SEC_PER_SYMBOL",
           "SYNTH_SEC_PER_SYMBOL", "Speech", "adapt", "adapt_and_synthesize",
           "adapt_function", "encode_function", "encode_speaker",
           "infer_function", "init_optimizer_state", "split_text", "start", "synthesize",
           "vector_voice_loss_fn", "vector_voice_model"]
