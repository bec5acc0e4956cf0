r"""Word-boundary error of the learned aligner on held-out synthetic clips.

Trains the RAD-TTS aligner (``metatts.models.aligner``, Badlani et al. 2021)
of a 'tiny' duration-based Tacotron (``DurationTacotron.align``: the model's
symbol embedding and mel normalization feeding its aligner) on a synthetic
corpus's training speakers, with the aligner's losses only (forward-sum,
binarization phased in), so nothing else of the model is trained; then
takes the hard MAS durations of held-out clips, clips of speakers that are
not in the training split (``heldout_seen`` and ``heldout_unseen``) reading
sentences that no training clip reads, and scores their word ends against
the synthesizer's own timings (``metatts.evaluation.alignment``). The
uniform alignment (equal frames per token) of the same clips is printed
beside it, and so is the quantization floor (the synthesizer's word ends
snapped to frame boundaries).

With ``--export`` it instead scores the aligner inside a trained
duration-based Tacotron export (``WORKDIR/<method>/model``, e.g. of the
quickstart), through the same ``align`` method, on the same
held-out clips (features built with the export's feature config); the export
must use phoneme input. Its training may have read those sentences (only
this script's own training excludes them).

Usage (the default corpus; about ``--minutes`` + 1 min on 2 cores; measured
figures in docs/evaluation.md, "The learned aligner on held-out clips")::

  .venv/bin/python benchmarks/aligner_timings.py \
      --root ~/.cache/metatts/synth-default --minutes 5
  .venv/bin/python benchmarks/aligner_timings.py \
      --root ~/.cache/metatts/synth-default --export runs/quickstart/transfer

``tests/test_aligner_timings.py`` runs the same training on a tiny corpus.

References:
  Badlani et al. (2021), One TTS alignment to rule them all,
    arXiv:2108.10447.
  Kim et al. (2020), Glow-TTS (monotonic alignment search),
    arXiv:2005.11129.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, List, NamedTuple, Sequence

import jax
import numpy as np
import optax
from flax import nnx

from metatts import functional
from metatts.data import corpora, features
from metatts.evaluation import alignment as al
from metatts.models import aligner as aligner_lib
from metatts.models import duration_tacotron as dt

Example = features.Example


def build_model(num_symbols: int, num_mels: int, seed: int = 0,
                **overrides) -> dt.DurationTacotron:
  """A 'tiny' duration-based Tacotron whose aligner is to be trained.

  Args:
    num_symbols: symbol table size.
    num_mels: mel bins.
    seed: initialization seed.
    **overrides: ``DurationTacotronConfig`` fields (e.g.
      ``aligner_temperature``).

  Returns:
    The model (only ``align`` is used here).
  """
  config = dt.duration_tacotron_config("tiny", num_symbols=num_symbols,
                                       num_mels=num_mels, num_speakers=1,
                                       **overrides)
  return dt.DurationTacotron(config, rngs=nnx.Rngs(seed))


class Batch(NamedTuple):
  tokens: np.ndarray  # int32 [B, L]
  token_lengths: np.ndarray  # int32 [B]
  mels: np.ndarray  # float32 [B, T, M]
  mel_lengths: np.ndarray  # int32 [B]


def pad(examples: Sequence[Example], max_tokens: int,
        max_frames: int) -> Batch:
  """Pads examples into one fixed-shape batch (all must fit)."""
  b, m = len(examples), examples[0].mel.shape[1]
  tok = np.zeros((b, max_tokens), np.int32)
  mel = np.zeros((b, max_frames, m), np.float32)
  tl = np.zeros((b,), np.int32)
  ml = np.zeros((b,), np.int32)
  for i, e in enumerate(examples):
    tok[i, :len(e.tokens)] = e.tokens
    mel[i, :len(e.mel)] = e.mel
    tl[i], ml[i] = len(e.tokens), len(e.mel)
  return Batch(tok, tl, mel, ml)


def bucket(n: int, multiple: int = 16) -> int:
  return -(-n // multiple) * multiple


def split_examples(store: features.FeatureStore, max_eval: int = 0,
                   seed: int = 0):
  """(train examples, held-out timed examples), sentences disjoint.

  Held-out: timed clips of speakers outside the ``train`` split (at most
  ``max_eval``, drawn with ``seed``; 0 = all). Training: clips of ``train``
  speakers whose sentence no held-out clip reads.
  """
  split = {s: m.get("split") for s, m in store.speakers.items()}
  held = [e for e in store.examples
          if split[e.speaker] != "train" and e.timings is not None]
  if max_eval and len(held) > max_eval:
    idx = np.random.default_rng(seed).choice(len(held), max_eval,
                                             replace=False)
    held = [held[i] for i in sorted(idx)]
  texts = {e.text for e in held}
  train = [e for e in store.examples
           if split[e.speaker] == "train" and e.text not in texts]
  return train, held


def make_step(graphdef, rest, opt, blank_logprob: float):
  """Jitted Adam step on forward-sum + w * binarization of ``align``."""

  def loss_fn(params, batch, w_bin):
    model = functional.merge(graphdef, params, rest)
    out = model.align(*batch)
    fs = aligner_lib.forward_sum_loss(out.log_soft, batch.token_lengths,
                                      batch.mel_lengths, blank_logprob)
    bn = aligner_lib.binarization_loss(jax.lax.stop_gradient(out.hard),
                                       out.soft)
    return fs + w_bin * bn, (fs, bn)

  @jax.jit
  def step(params, opt_state, batch, w_bin):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, batch, w_bin)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux

  return step


def train_aligner(train: Sequence[Example], num_symbols: int, *,
                  steps: int = 0, seconds: float = 0.0, batch_size: int = 16,
                  lr: float = 3e-3, bin_start: float = 0.3,
                  bin_weight: float = 1.0, seed: int = 0,
                  log_every: int = 0, **overrides) -> dt.DurationTacotron:
  """Trains a model's aligner for ``steps`` steps or ``seconds`` wall.

  Only the aligner's losses are minimized, so only the symbol embedding and
  the aligner change (Adam leaves parameters with zero gradients as they
  are).

  Batches are drawn with ``seed`` and padded to one shape (the longest
  training clip, rounded up to 16), so one compilation serves every step.
  The binarization loss weight ramps linearly from 0 at ``bin_start`` of the
  run to ``bin_weight`` at 2 * ``bin_start`` (RAD-TTS turns it on after the
  alignment has formed).

  Args:
    train: training examples (phoneme tokens, log-mels).
    num_symbols: embedding table size.
    steps: number of steps (used when > 0).
    seconds: wall budget after compilation (used when ``steps`` is 0).
    batch_size: clips per step.
    lr: Adam learning rate.
    bin_start: fraction of the run where the binarization ramp starts.
    bin_weight: final binarization weight.
    seed: initialization and batch-order seed.
    log_every: print losses every so many steps (0: never).
    **overrides: ``DurationTacotronConfig`` fields of the 'tiny' model.

  Returns:
    The model with the trained aligner; ``model.steps_trained`` holds the
    number of steps.
  """
  if (steps > 0) == (seconds > 0):
    raise ValueError("train_aligner: give exactly one of steps > 0 or "
                     "seconds > 0.")
  lt = bucket(max(len(e.tokens) for e in train))
  lf = bucket(max(len(e.mel) for e in train))
  model = build_model(num_symbols, train[0].mel.shape[1], seed, **overrides)
  graphdef, params, rest = functional.split(model)
  opt = optax.adam(lr)
  opt_state = opt.init(params)
  step = make_step(graphdef, rest, opt, model.config.blank_logprob)
  rng = np.random.default_rng(seed)
  b = min(batch_size, len(train))

  def weight(frac):
    return float(bin_weight * np.clip((frac - bin_start) / max(bin_start,
                                                                1e-6), 0, 1))

  i, start = 0, None
  while True:
    frac = (i / steps if steps else
            (0.0 if start is None else (time.perf_counter() - start) / seconds))
    if (steps and i >= steps) or (not steps and frac >= 1.0):
      break
    idx = rng.choice(len(train), b, replace=False)
    batch = pad([train[k] for k in idx], lt, lf)
    params, opt_state, loss, (fs, bn) = step(params, opt_state, batch,
                                             weight(frac))
    if start is None:
      loss.block_until_ready()
      start = time.perf_counter()  # the wall budget excludes compilation
    i += 1
    if log_every and i % log_every == 0:
      print(f"step {i}: forward-sum {float(fs):.3f} binarization "
            f"{float(bn):.3f}", flush=True)
  jax.block_until_ready(params)
  model = functional.merge(graphdef, params, rest)
  model.steps_trained = i
  return model


def hard_durations(align_fn: Callable, examples: Sequence[Example],
                   batch_size: int = 16) -> List[np.ndarray]:
  """Per-token MAS durations of each example, batched at one padded shape.

  Args:
    align_fn: ``(tokens, token_lengths, mels, mel_lengths) ->
      AlignerOutputs``, e.g. a model's ``align``, or a model that has one.
    examples: the clips.
    batch_size: clips per call.

  Returns:
    One int ``[L]`` array per example.
  """
  lt = bucket(max(len(e.tokens) for e in examples))
  lf = bucket(max(len(e.mel) for e in examples))
  fn = jax.jit(getattr(align_fn, "align", align_fn))
  out = []
  for k in range(0, len(examples), batch_size):
    chunk = list(examples[k:k + batch_size])
    n = len(chunk)
    chunk += [chunk[-1]] * (batch_size - n)  # keep one shape
    d = np.asarray(fn(*pad(chunk, lt, lf)).durations)
    out += [d[i, :len(chunk[i].tokens)] for i in range(n)]
  return out


class Scores(NamedTuple):
  learned: al.BoundaryStats
  uniform: al.BoundaryStats
  floor: al.BoundaryStats


def score(durations: Sequence[np.ndarray], examples: Sequence[Example],
          hop_length: int, sample_rate: int) -> Scores:
  """Word-boundary errors of given, uniform and reference durations."""
  learned, uniform, floor = [], [], []
  for d, e in zip(durations, examples):
    args = (e.tokens, "phonemes", e.timings, hop_length, sample_rate)
    learned.append(al.word_boundary_errors(d, *args))
    uniform.append(al.word_boundary_errors(
        al.uniform_durations(len(e.tokens), len(e.mel)), *args))
    ref = al.durations_from_word_ends(e.tokens, "phonemes", e.timings,
                                      len(e.mel), hop_length, sample_rate)
    floor.append(None if ref is None else al.word_boundary_errors(ref, *args))
  return Scores(al.summarize(learned), al.summarize(uniform),
                al.summarize(floor))


def _row(name: str, s: al.BoundaryStats) -> str:
  return (f"| {name} | {s.median_ms:.1f} | {s.p90_ms:.1f} | {s.mean_ms:.1f} |"
          f" {s.num_boundaries} | {s.num_utterances} / {s.num_skipped} |")


def print_scores(groups) -> None:
  """Prints a markdown table of ``[(clip set name, Scores)]``."""
  print("| held-out clips | alignment | median ms | p90 ms | mean ms | word "
        "ends | clips scored / skipped |")
  print("|---|---|---|---|---|---|---|")
  for group, scores in groups:
    for name, stats in (("learned (MAS)", scores.learned),
                        ("uniform", scores.uniform),
                        ("reference (floor)", scores.floor)):
      print(f"| {group} " + _row(name, stats))


def export_align_fn(export: str):
  """The aligner of a duration-model export as an ``align_fn``.

  Returns:
    (the model's ``align`` method, the model.json dict).
  """
  from metatts.training import export as export_lib  # pylint: disable=g-import-not-at-top
  model, _, info, _ = export_lib.load_exported(export)
  if not hasattr(model, "align"):
    raise ValueError(f"{info['directory']} holds a {info['model']!r} model, "
                     "which has no learned aligner; pass the export of a "
                     "duration_tacotron run.")
  if info.get("symbols") != "phonemes":
    raise ValueError(f"{info['directory']} was trained on "
                     f"{info.get('symbols')!r} input; the word-boundary "
                     "check needs a phoneme model (data.features.symbols = "
                     "'phonemes').")

  fn = model.align
  return fn, info


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--root", default="~/.cache/metatts/synth-default")
  p.add_argument("--cache-dir", default="~/.cache/metatts/features")
  p.add_argument("--minutes", type=float, default=5.0)
  p.add_argument("--steps", type=int, default=0, help="> 0: overrides "
                 "--minutes")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--lr", type=float, default=3e-3)
  p.add_argument("--temperature", type=float, default=0.0005)
  p.add_argument("--max-eval", type=int, default=300,
                 help="held-out clips scored (0: all)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--export", default="", help="score a trained "
                 "duration-model export instead of training")
  args = p.parse_args(argv)
  t0 = time.perf_counter()
  fn = info = None
  fc = features.FeatureConfig(symbols="phonemes")
  if args.export:
    fn, info = export_align_fn(args.export)
    fc = features.FeatureConfig.from_config(info["feature_config"])
  store = features.build_features(corpora.load_generic(args.root), fc,
                                  args.cache_dir, progress=False)
  train, held = split_examples(store, args.max_eval, args.seed)
  print(f"{args.root}: {len(train)} training clips, {len(held)} held-out "
        f"timed clips (speakers outside the training split, sentences no "
        f"training clip reads); data {time.perf_counter() - t0:.0f} s",
        flush=True)
  if args.export:
    print(f"aligner of {info['directory']} ({info['model']}, method "
          f"{info['method']})")
  else:
    t1 = time.perf_counter()
    fn = train_aligner(train, fc.num_symbols, steps=args.steps,
                       seconds=0.0 if args.steps else 60.0 * args.minutes,
                       batch_size=args.batch, lr=args.lr,
                       seed=args.seed, log_every=100,
                       aligner_temperature=args.temperature)
    print(f"trained {fn.steps_trained} steps (batch {args.batch}, lr "
          f"{args.lr:g}, temperature {args.temperature:g}) in "
          f"{time.perf_counter() - t1:.0f} s wall", flush=True)
  t2 = time.perf_counter()
  durs = hard_durations(fn, held)
  split = {s: m.get("split") for s, m in store.speakers.items()}
  groups = []
  for name in ("heldout_seen", "heldout_unseen"):
    idx = [i for i, e in enumerate(held) if split[e.speaker] == name]
    if idx:
      groups.append((name, score([durs[i] for i in idx],
                                 [held[i] for i in idx], fc.hop_length,
                                 fc.sample_rate)))
  groups.append(("all", score(durs, held, fc.hop_length, fc.sample_rate)))
  print_scores(groups)
  print(f"scoring {time.perf_counter() - t2:.0f} s; total "
        f"{time.perf_counter() - t0:.0f} s wall")
  return 0


if __name__ == "__main__":
  sys.exit(main())
