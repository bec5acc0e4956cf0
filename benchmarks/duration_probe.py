r"""Does the duration-based Tacotron speak after minutes of CPU training?

Builds the quickstart data (``experiments/configs/quickstart.py``, with
phoneme input: ``config.data.features.symbols = "phonemes"``), trains
``metatts.models.duration_tacotron`` multi-speaker with Adam for a fixed wall
budget, adapts new speaker-table rows of held-out speakers (``heldout_seen``
and ``heldout_unseen``) on 5 support clips each (by default only the
``speaker`` group, 30 Adam steps; ``--adapt_*`` picks the quickstart's
protocol, e.g. ``--adapt_filter speaker+decoder --adapt_opt sgd --adapt_lr
0.1 --adapt_steps 5``), synthesizes other clips of those speakers with Griffin-Lim
(``metatts.audio.features.mel_to_audio``, 32 iterations, as the evaluation
does) and judges them with the evaluation's PocketSphinx WER
(``metatts.evaluation.wer``) beside the WER of Griffin-Lim resynthesis of the
same real clips. It prints steps/s, the final losses and both WERs, and
saves an alignment PNG and a mel PNG.

Usage (2-core CPU, about ``--minutes`` + 2 min)::

  .venv/bin/python benchmarks/duration_probe.py --minutes 6 \
      --out runs/duration_probe [--decoder conv] [--batch 8] [--lr 3e-3] \
      [--steps 800] [--model '{"decoder_dim": 128}'] [--bench]

``--bench`` only measures training steps/s of every decoder type.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from metatts import functional
from metatts.audio import features as afeat
from metatts.evaluation import wer as wer_lib
from metatts.experiments import tts
from metatts.models import duration_tacotron as dt
from metatts.types import TTSBatch

_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                        "experiments", "configs")


def load_data():
  sys.path.insert(0, _CONFIGS)
  import quickstart  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config()
  config.data.features.symbols = "phonemes"
  return config, tts.prepare_data(config, progress=False)


def pad(examples, slots, max_tokens, max_frames):
  b = len(examples)
  tok = np.zeros((b, max_tokens), np.int32)
  mel = np.zeros((b, max_frames, examples[0].mel.shape[1]), np.float32)
  tl = np.zeros((b,), np.int32)
  ml = np.zeros((b,), np.int32)
  for i, e in enumerate(examples):
    nt, nf = min(len(e.tokens), max_tokens), min(len(e.mel), max_frames)
    tok[i, :nt] = e.tokens[:nt]
    mel[i, :nf] = e.mel[:nf]
    tl[i], ml[i] = nt, nf
  return TTSBatch(tok, tl, mel, ml, np.asarray(slots, np.int32), None)


def make_train_step(graphdef, rest, opt, mask=None):
  loss_fn = functional.make_loss_fn(
      graphdef, rest,
      lambda m, b: m.loss(b[0], binarization_weight=b[1]))

  @jax.jit
  def step(params, opt_state, batch, w_bin):
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, (batch, w_bin))
    if mask is not None:
      grads = jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g), grads,
                           mask)
    updates, opt_state = opt.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    aux = {k: v for k, v in aux.items() if k != "alignment"}
    return params, opt_state, loss, aux

  return step


def build(config, data, args):
  n_spk = len(data.speakers) + sum(len(v) for v in data.heldout.values())
  overrides = dict(num_symbols=data.feature_config.num_symbols,
                   num_mels=data.feature_config.n_mels,
                   num_speakers=n_spk, max_frames=400,
                   max_tokens=int(config.data.max_tokens),
                   decoder_type=args.decoder)
  overrides.update(json.loads(args.model))
  cfg = dt.duration_tacotron_config("tiny", **overrides)
  return dt.DurationTacotron(cfg, rngs=nnx.Rngs(0))


def sampler(data, rng, batch, max_tokens, max_frames):
  pool = [(i, e) for i, s in enumerate(data.speakers) for e in data.train[s]
          if len(e.tokens) <= max_tokens and len(e.mel) <= max_frames]
  while True:
    idx = rng.choice(len(pool), batch, replace=False)
    yield pad([pool[i][1] for i in idx], [pool[i][0] for i in idx],
              max_tokens, max_frames)


def bench(config, data, args):
  lt, lf = int(config.data.max_tokens), int(config.data.max_frames)
  for dec in dt.DECODERS:
    args.decoder = dec
    model = build(config, data, args)
    graphdef, params, rest = functional.split(model)
    opt = optax.adam(args.lr)
    opt_state = opt.init(params)
    step = make_train_step(graphdef, rest, opt)
    it = sampler(data, np.random.default_rng(0), args.batch, lt, lf)
    t0 = time.perf_counter()
    params, opt_state, loss, _ = step(params, opt_state, next(it), 0.0)
    loss.block_until_ready()
    compile_s = time.perf_counter() - t0
    n, t0 = 10, time.perf_counter()
    for _ in range(n):
      params, opt_state, loss, _ = step(params, opt_state, next(it), 0.0)
    loss.block_until_ready()
    sps = n / (time.perf_counter() - t0)
    print(f"decoder={dec}: {sps:.2f} steps/s (batch {args.batch}, "
          f"{lt} tokens x {lf} frames), compile {compile_s:.0f} s, "
          f"params {functional.count(params)}", flush=True)


def save_pngs(out_dir, hard, soft, mel_pred, mel_real, title):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(1, 2, figsize=(10, 4))
  ax[0].imshow(soft.T, origin="lower", aspect="auto", interpolation="none")
  ax[0].set(title="aligner soft alignment", xlabel="frame", ylabel="symbol")
  ax[1].imshow(hard.T, origin="lower", aspect="auto", interpolation="none")
  ax[1].set(title="MAS hard alignment", xlabel="frame")
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "alignment.png"), dpi=80)
  plt.close(fig)
  fig, ax = plt.subplots(2, 1, figsize=(8, 6))
  ax[0].imshow(mel_pred.T, origin="lower", aspect="auto")
  ax[0].set(title="synthesized (predicted durations)")
  ax[1].imshow(mel_real.T, origin="lower", aspect="auto")
  ax[1].set(title="real")
  fig.tight_layout()
  fig.savefig(os.path.join(out_dir, "mel.png"), dpi=80)
  plt.close(fig)


def vocode(mels, lengths, mel_config, floor):
  fn = jax.jit(lambda m, k: afeat.mel_to_audio(m, k, mel_config, n_iter=32))
  mel = np.asarray(mels, np.float32)
  frames = np.arange(mel.shape[1])[None, :, None]
  lengths = np.maximum(np.asarray(lengths), 2)
  mel = np.where(frames < lengths[:, None, None], mel, floor)
  audio = np.asarray(fn(jnp.asarray(mel), jax.random.PRNGKey(0)))
  hop = mel_config.hop_length
  wavs = []
  for i in range(len(lengths)):
    w = np.nan_to_num(audio[i, :(int(lengths[i]) - 1) * hop])
    peak = float(np.max(np.abs(w))) if w.size else 0.0
    if peak > 0.99:
      w = w * (0.99 / peak)
    wavs.append(w.astype(np.float32))
  return wavs


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--minutes", type=float, default=6.0)
  p.add_argument("--steps", type=int, default=0,
                 help="train this many steps instead of --minutes (> 0)")
  p.add_argument("--out", default="runs/duration_probe")
  p.add_argument("--decoder", default="conv", choices=dt.DECODERS)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--lr", type=float, default=3e-3)
  p.add_argument("--model", default="{}", help="JSON config overrides")
  p.add_argument("--bin_start", type=float, default=0.3,
                 help="fraction of the budget before binarization starts")
  p.add_argument("--bin_weight", type=float, default=1.0)
  p.add_argument("--speakers", type=int, default=4,
                 help="held-out speakers judged per split")
  p.add_argument("--clips", type=int, default=3, help="judged clips each")
  p.add_argument("--adapt_steps", type=int, default=30)
  p.add_argument("--pace", type=float, default=1.0)
  p.add_argument("--adapt_filter", default="speaker")
  p.add_argument("--adapt_opt", default="adam", choices=("adam", "sgd"))
  p.add_argument("--adapt_lr", type=float, default=1e-2)
  p.add_argument("--bench", action="store_true")
  p.add_argument("--save", default="", help="save trained params (.npz)")
  p.add_argument("--load", default="",
                 help="skip training: load params saved with --save")
  args = p.parse_args()
  os.makedirs(args.out, exist_ok=True)
  config, data = load_data()
  lt, lf = int(config.data.max_tokens), int(config.data.max_frames)
  if args.bench:
    bench(config, data, args)
    return
  model = build(config, data, args)
  print("config:", model.config, flush=True)
  graphdef, params, rest = functional.split(model)
  opt = optax.adam(args.lr)
  opt_state = opt.init(params)
  step = make_train_step(graphdef, rest, opt)
  it = sampler(data, np.random.default_rng(0), args.batch, lt, lf)
  budget = args.minutes * 60.0
  t0 = time.perf_counter()
  n, aux, first = 0, None, None
  if args.load:
    with np.load(args.load) as z:
      leaves = [z[f"p{i}"] for i in range(len(z.files))]
    params = jax.tree.unflatten(jax.tree.structure(params), leaves)
    args.steps, args.minutes = 0, 0.0
  while not args.load:
    el = time.perf_counter() - t0
    if (n >= args.steps) if args.steps > 0 else (el > budget):
      break
    frac = n / args.steps if args.steps > 0 else el / budget
    w_bin = args.bin_weight if frac > args.bin_start else 0.0
    params, opt_state, loss, aux = step(params, opt_state, next(it),
                                        jnp.float32(w_bin))
    n += 1
    if n == 1:
      loss.block_until_ready()
      first = time.perf_counter() - t0
    if n % 50 == 0:
      print(f"step {n} t={el:.0f}s loss {float(loss):.3f} " + " ".join(
          f"{k}={float(v):.3f}" for k, v in sorted(aux.items())), flush=True)
  train_s = time.perf_counter() - t0
  if args.save:
    np.savez(args.save, **{f"p{i}": np.asarray(x) for i, x in
                           enumerate(jax.tree.leaves(params))})
  if args.load:
    n, first, loss, aux = 1, 0.0, jnp.float32(0.0), {}
  sps = (n - 1) / max(train_s - first, 1e-9)
  print(f"TRAIN {n} steps in {train_s:.0f} s (first step incl. compile "
        f"{first:.0f} s): {sps:.2f} steps/s; final loss {float(loss):.3f} "
        + " ".join(f"{k}={float(v):.3f}" for k, v in sorted(aux.items())),
        flush=True)

  # Adapt the speaker rows of held-out speakers, then synthesize.
  slot0 = len(data.speakers)
  held = []
  for split in ("heldout_seen", "heldout_unseen"):
    for spk in sorted(data.heldout[split])[:args.speakers]:
      held.append((split, spk, slot0 + len(held)))
  mask = functional.mask_from_filter(params, functional.filter_for(
      args.adapt_filter))
  aopt = (optax.adam if args.adapt_opt == "adam" else optax.sgd)(
      args.adapt_lr)
  astep = make_train_step(graphdef, rest, aopt, mask)
  support = []
  judged = []
  for split, spk, slot in held:
    exs = [e for e in data.heldout[split][spk]
           if len(e.tokens) <= lt and len(e.mel) <= lf]
    support += [(e, slot) for e in exs[:5]]
    judged += [(split, e, slot) for e in exs[5:5 + args.clips]]
  sb = pad([e for e, _ in support], [s for _, s in support], lt, lf)
  a_state = aopt.init(params)
  t1 = time.perf_counter()
  aparams = params
  for _ in range(args.adapt_steps):
    aparams, a_state, aloss, _ = astep(aparams, a_state, sb, jnp.float32(0.0))
  print(f"ADAPT {args.adapt_filter} ({args.adapt_opt} lr {args.adapt_lr}) "
        f"of {len(held)} speakers: {args.adapt_steps} "
        f"steps in {time.perf_counter() - t1:.0f} s, support loss "
        f"{float(aloss):.3f}", flush=True)
  amodel = functional.merge(graphdef, aparams, rest)
  mel_config = data.feature_config.mel_config()
  floor = float(np.log(mel_config.log_floor))
  jb = pad([e for _, e, _ in judged], [s for _, _, s in judged], lt, lf)
  from metatts.models import tacotron  # pylint: disable=g-import-not-at-top
  minf = tacotron.min_synthesis_frames(jb.token_lengths,
                                       mel_config.sample_rate,
                                       mel_config.hop_length, 400)
  out = dt.synthesize(amodel, jb.tokens, jb.token_lengths, jb.speaker_ids,
                      max_frames=400, min_frames=minf, pace=args.pace)
  wavs = vocode(out.mel, out.lengths, mel_config, floor)
  real = vocode(jb.mels, jb.mel_lengths, mel_config, floor)
  texts = [e.text for _, e, _ in judged]
  w_model, hyps = wer_lib.wer_of_clips(wavs, texts, mel_config.sample_rate)
  w_real, hyps_real = wer_lib.wer_of_clips(real, texts,
                                           mel_config.sample_rate)
  per_split = {}
  for split in ("heldout_seen", "heldout_unseen"):
    idx = [i for i, (s, _, _) in enumerate(judged) if s == split]
    if idx:
      per_split[split] = (
          wer_lib.corpus_wer([texts[i] for i in idx], [hyps[i] for i in idx]),
          wer_lib.corpus_wer([texts[i] for i in idx],
                             [hyps_real[i] for i in idx]))
  ratio = np.asarray(out.lengths) / np.asarray(jb.mel_lengths)
  print(f"LENGTH predicted/real: median {np.median(ratio):.2f} "
        f"(min {ratio.min():.2f}, max {ratio.max():.2f})")
  for i in range(min(4, len(texts))):
    print(f"  ref : {texts[i]}\n  gl  : {hyps_real[i]}\n  ours: {hyps[i]}")
  print(f"WER model {w_model:.3f} vs GL-real {w_real:.3f} "
        f"(ratio {w_model / max(w_real, 1e-9):.2f}) on {len(texts)} clips; "
        + "; ".join(f"{k}: {a:.2f} vs {b:.2f}" for k, (a, b) in
                    per_split.items()), flush=True)
  # Alignment of the first judged clip by the aligner (teacher frames).
  _, aux1 = nnx.jit(lambda m, b: m.loss(b))(amodel, jb)
  hard = np.asarray(aux1["alignment"][0])
  al = nnx.jit(lambda m, b: m.align(b.tokens, b.token_lengths, b.mels,
                                     b.mel_lengths))(amodel, jb)
  soft_all, hard_all = np.asarray(al.soft), np.asarray(al.hard)
  on_path, dev = [], []
  for i in range(len(texts)):
    t, nn = int(jb.mel_lengths[i]), int(jb.token_lengths[i])
    on_path.append(float((soft_all[i, :t] * hard_all[i, :t]).sum() / t))
    j = hard_all[i, :t, :nn].argmax(1)
    dev.append(float(np.mean(np.abs(j / max(nn - 1, 1) -
                                    np.arange(t) / max(t - 1, 1)))))
  print(f"ALIGN soft mass on the MAS path {np.mean(on_path):.2f}; mean "
        f"|symbol/N - frame/T| {np.mean(dev):.3f}")
  t, nn = int(jb.mel_lengths[0]), int(jb.token_lengths[0])
  lp = int(out.lengths[0])
  save_pngs(args.out, hard[:t, :nn], soft_all[0, :t, :nn],
            np.asarray(out.mel[0, :lp]), np.asarray(jb.mels[0, :t]),
            texts[0])
  for i, w in enumerate(wavs[:4]):
    from metatts.audio import io as aio  # pylint: disable=g-import-not-at-top
    aio.save_wav(os.path.join(args.out, f"synth_{i}.wav"), w,
                 mel_config.sample_rate)
  summary = dict(steps=n, train_s=train_s, steps_per_s=sps,
                 wer_model=w_model, wer_gl_real=w_real, per_split=per_split,
                 final={k: float(v) for k, v in aux.items()},
                 args=vars(args))
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)


if __name__ == "__main__":
  main()
