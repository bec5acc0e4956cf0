r"""Which F0 predictor tracks WORLD's F0 from the mel (issue 15, session 10).

The source-filter vocoder (``metatts.models.nsf``) synthesizes with the F0
its predictor reads off the mel. Session 9's predictor was 411 cents off
WORLD on held-out clips and the vocoder lost to Griffin-Lim. This script
fits candidate predictors *alone* (Adam 1e-3, batches of 32 random windows
of 64 frames of the vocoder study's training clips: the study's 84 training
speakers x 10 clips) and scores them against WORLD (``nsf.analyse_f0``) on
the first 8 clips of the first 8 held-out speakers of each split:

* ``vuv``: voicing decision error rate over frames;
* ``rmse``: RMS error in cents over the frames voiced in both, pooled over
  the split's clips;
* ``gross``: fraction of those frames more than 200 cents off.

Candidates (``ARCH HEAD``):

* ``k5x2``: session 9's network (two kernel-5 convolutions);
* ``dil4`` / ``dil8``: a kernel-3 input convolution, then 4 / 8 residual
  kernel-3 convolutions with dilations 1, 2, 4, 8 (twice for ``dil8``);
* head ``reg``: L1 on log F0 + voicing BCE (session 9's loss);
* head ``bins``: cross-entropy over 128 log-spaced F0 classes (40-800 Hz)
  against a Gaussian of one bin + voicing BCE, decoded by the weighted mean
  of the log-F0 bins within 4 of the best (CREPE's decoding).

``--norm`` scales the log-mel by the training set's per-bin mean and std
(``data``), by the fixed map of the log floor that ``nsf.F0Predictor`` uses
(``fixed``), or by a learned LayerNorm over the bins (``ln``).

Usage (about 1-2 min per candidate on the 2-core CPU, after ~30 s of data)::

  .venv/bin/python -m benchmarks.f0_predictor \
      --candidates 'k5x2 reg,dil8 reg,dil8 bins,dil4 bins' --steps 3000
  .venv/bin/python -m benchmarks.f0_predictor --candidates 'dil4 bins' \
      --norm fixed --steps 1500

References:
  J. W. Kim, J. Salamon, P. Li, J. P. Bello, "CREPE: A convolutional
    representation for pitch estimation", ICASSP 2018.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from metatts.models import nsf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The classes and decoding of the library's predictor (128 bins, 40-800 Hz).
NSF = nsf.nsf_config("base")
NB = NSF.f0_bins
CENTRES = NSF.f0_bin_log_hz()
WIDTH = float(CENTRES[1] - CENTRES[0])


def study_clips():
  """(train [(mel, f0)], held {split: [(mel, f0)]}) of the vocoder study."""
  sys.path.insert(0, os.path.join(REPO, "experiments", "configs"))
  import vocoder as vocoder_config  # pylint: disable=g-import-not-at-top
  from metatts.experiments import data as data_lib  # pylint: disable=g-import-not-at-top
  from metatts.experiments import vocoder as vocoder_exp  # pylint: disable=g-import-not-at-top
  config = vocoder_config.get_config("study")
  data = data_lib.prepare_data(config, progress=False)
  fc = data.feature_config

  def pairs(examples):
    out = []
    for e in examples:
      mel = np.asarray(e.mel, np.float32)
      audio = vocoder_exp._load_audio(e, fc)  # pylint: disable=protected-access
      out.append((mel, nsf.analyse_f0(audio, mel.shape[0], fc.sample_rate,
                                      fc.hop_length)))
    return out

  train = [p for s in sorted(data.train) for p in pairs(data.train[s][:10])]
  held = {split: [p for s in sorted(m)[:8] for p in pairs(m[s][:8])]
          for split, m in data.heldout.items()}
  return train, held, math.log(fc.log_floor)


class Candidate(nnx.Module):
  """One candidate predictor: [B, F, M] -> [B, F, 1 + classes]."""

  def __init__(self, arch, head, norm, channels, n_mels, mu, sd, rngs):
    self.head_kind, self.norm = head, norm
    self.mu, self.sd = mu, sd
    self.ln = nnx.LayerNorm(n_mels, rngs=rngs) if norm == "ln" else None
    if arch == "k5x2":
      self.inp = nnx.Conv(n_mels, channels, kernel_size=(5,), padding="SAME",
                          rngs=rngs)
      self.c2 = nnx.Conv(channels, channels, kernel_size=(5,),
                         padding="SAME", rngs=rngs)
      dilations = ()
    else:
      self.inp = nnx.Conv(n_mels, channels, kernel_size=(3,), padding="SAME",
                          rngs=rngs)
      self.c2 = None
      dilations = {"dil4": (1, 2, 4, 8), "dil8": (1, 2, 4, 8) * 2}[arch]
    self.convs = nnx.List([
        nnx.Conv(channels, channels, kernel_size=(3,), kernel_dilation=(d,),
                 padding="SAME", rngs=rngs) for d in dilations])
    self.out = nnx.Linear(channels, 1 + (NB if head == "bins" else 1),
                          rngs=rngs)

  def __call__(self, x):
    x = self.ln(x) if self.ln is not None else (x - self.mu) / self.sd
    h = jax.nn.leaky_relu(self.inp(x), 0.2)
    if self.c2 is not None:
      h = jax.nn.leaky_relu(self.c2(h), 0.2)
    for conv in self.convs:
      h = h + jax.nn.leaky_relu(conv(h), 0.2)
    return self.out(h)

  def loss(self, mel, f0):
    out = self(mel)
    voiced = f0 > 0
    bce = optax.sigmoid_binary_cross_entropy(
        out[..., 0], voiced.astype(jnp.float32)).mean()
    log_f0 = jnp.log(jnp.maximum(f0, 1.0))
    if self.head_kind == "bins":
      z = (log_f0[..., None] - CENTRES) / WIDTH
      f0_loss = optax.softmax_cross_entropy(
          out[..., 1:], jax.nn.softmax(-0.5 * z * z, axis=-1))
    else:
      f0_loss = jnp.abs(out[..., 1] - (log_f0 - math.log(150.0)))
    return bce + (jnp.where(voiced, f0_loss, 0.0).sum() /
                  jnp.maximum(voiced.sum(), 1))

  def hz(self, mel):
    out = self(mel)
    if self.head_kind == "bins":
      return nsf.f0_from_prediction(out, NSF)
    log_hz = out[..., 1] + math.log(150.0)
    return jnp.where(out[..., 0] > 0, jnp.exp(log_hz), 0.0)


def score(model, clips):
  hz = nnx.jit(lambda m, x: m.hz(x))
  vuv, cents = [], []
  for mel, f0 in clips:
    p = np.asarray(hz(model, jnp.asarray(mel)[None]))[0]
    both = (f0 > 0) & (p > 0)
    vuv.append(np.mean((f0 > 0) != (p > 0)))
    cents.append(1200 * np.log2(p[both] / f0[both]))
  c = np.concatenate(cents)
  return float(np.mean(vuv)), float(np.sqrt(np.mean(c ** 2))), float(
      np.mean(np.abs(c) > 200))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--candidates", default="k5x2 reg,dil8 reg,dil8 bins,"
                  "dil4 bins")
  ap.add_argument("--norm", default="data", choices=("data", "fixed", "ln"))
  ap.add_argument("--steps", type=int, default=3000)
  ap.add_argument("--channels", type=int, default=0,
                  help="0: 128 for dil8, 64 otherwise")
  args = ap.parse_args(argv)
  start = time.perf_counter()
  train, held, floor = study_clips()
  print(f"data: {len(train)} training clips, "
        f"{ {s: len(c) for s, c in held.items()} } held-out, "
        f"{time.perf_counter() - start:.0f} s", flush=True)
  mels = np.concatenate([m for m, _ in train])
  if args.norm == "fixed":
    mu, sd = np.float32(floor / 2), np.float32(-floor / 4)
  else:
    mu, sd = mels.mean(0), mels.std(0) + 1e-3
  for cand in args.candidates.split(","):
    arch, head = cand.split()
    channels = args.channels or (128 if arch == "dil8" else 64)
    model = Candidate(arch, head, args.norm, channels, mels.shape[1], mu, sd,
                      nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, mel, f0):
      loss, grads = nnx.value_and_grad(lambda m: m.loss(mel, f0))(model)
      opt.update(model, grads)
      return loss

    rng = np.random.default_rng(0)
    tick = time.perf_counter()
    for i in range(1, args.steps + 1):
      mel_b, f0_b = [], []
      for j in rng.integers(len(train), size=32):
        m, f = train[int(j)]
        s = int(rng.integers(max(1, len(m) - 63)))
        pad = 64 - len(m[s:s + 64])
        mel_b.append(np.pad(m[s:s + 64], ((0, pad), (0, 0)),
                            constant_values=floor))
        f0_b.append(np.pad(f[s:s + 64], (0, pad)))
      step(model, opt, np.stack(mel_b), np.stack(f0_b))
      if i % (args.steps // 2) == 0:
        cells = " | ".join(
            "%s vuv %.3f rmse %.0f c gross %.3f" % ((s,) + score(model, c))
            for s, c in held.items())
        print(f"{cand} C{channels} norm {args.norm} step {i} "
              f"({time.perf_counter() - tick:.0f} s): {cells}", flush=True)


if __name__ == "__main__":
  main()
