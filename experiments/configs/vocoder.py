r"""The vocoder study: a WaveNet-style vocoder that learns on a 2-core CPU.

Issue 15 and docs/results/vocoder.md. Command::

  .venv/bin/python experiments/main.py \
      --config experiments/configs/vocoder.py --workdir runs/vocoder

The corpus, features and held-out speakers are the quickstart's (the
embedded synthetic corpus, 16 kHz, 80 mels, hop 200). Only the tts
experiment's vocoder stage runs (``experiment = "vocoder"``):

1. the source-filter WaveNet (``metatts.models.nsf``, size ``base``: 2 x 8
   gated dilated causal layers of kernel 3 over a harmonic-plus-noise
   source and the DSP half, zero-phase pulses filtered by the mel
   envelope's response; F0 predicted from the mel) is pre-trained on windows of all
   training speakers with the multi-resolution STFT loss (method
   ``transfer``: Adam, pooled speaker tasks), resuming from checkpoints;
   then its F0 predictor is fitted alone on longer windows
   (``vocoder.f0_steps``);
2. its held-out loss after 1- and 5-clip adaptation is measured;
3. the real evaluation clips of the held-out speakers are resynthesized from
   their mels into ``samples/vocoded`` and judged (SECS, EER, MCD,
   PocketSphinx WER) beside the real clips and Griffin-Lim.

Measured (docs/results/vocoder.md): session 9, the 4000 steps took about
48 min with the data and F0 analysis, the held-out adaptation table about
10 min, the resynthesis 24 s and the judges about 4 min. Session 10, on a
machine shared with other runs, the whole run (with the F0 predictor's own
27-s stage and the table's MCD) took 82 min, 57 of them training. Session
11 (the DSP half by convolution), shared with the test suite most of the
time, with ``--config.adapt.shots=(5,)``: 90 min, 64 of them training.

``vocoder.py:meta`` meta-learns the vocoder for speaker adaptation
(Reptile over speaker tasks of windows, 5 inner SGD steps) starting from
the study's export, ``runs/vocoder/vocoder/model``, so run the study first::

  .venv/bin/python experiments/main.py \
      --config experiments/configs/vocoder.py:meta --workdir runs/vocoder-meta

Its held-out loss and MCD after 5 steps are compared, speaker by speaker,
with the pre-trained vocoder's after 100 and with an equal-budget
``transfer`` control's, all adapted by one SGD protocol::

  .venv/bin/python experiments/main.py \
      --config experiments/configs/vocoder.py --workdir runs/vocoder-control \
      --config.vocoder.init_from=runs/vocoder/vocoder/model \
      --config.vocoder.num_steps=1500 --config.vocoder.f0_steps=0 \
      --config.eval.enabled=False
  .venv/bin/python benchmarks/vocoder_adaptation.py --resample \
      --vocoder meta=runs/vocoder-meta/vocoder/model \
      --vocoder fine-tuned=runs/vocoder/vocoder/model \
      --vocoder control=runs/vocoder-control/vocoder/model \
      --out runs/vocoder-adaptation.json

``vocoder.py:smoke`` is the same path on the smoke corpus with the tiny
model and a few steps (tests use it).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quickstart  # pylint: disable=g-import-not-at-top,wrong-import-position

ARGS = ("study", "meta", "smoke")


def get_config(arg: str = "study"):
  """The vocoder study (``study``) or its test-sized path (``smoke``)."""
  arg = (arg or "study").strip()
  if arg not in ARGS:
    raise ValueError(f"vocoder config argument {arg!r}; use one of {ARGS} "
                     "(e.g. experiments/configs/vocoder.py:smoke).")
  c = quickstart.get_config("smoke" if arg == "smoke" else "quickstart")
  c.experiment = "vocoder"
  c.name = f"vocoder-{arg}"
  v = c.vocoder
  v.enabled = True
  v.model = "nsf"
  v.method = "transfer"
  v.size = "base"
  v.num_steps = 4000
  v.num_tasks = 4
  v.num_support = 1
  v.num_query = 1
  v.window_frames = 16
  v.outer_lr = 1e-3
  v.inner_lr = 1e-3
  v.max_speakers = 0  # every training speaker
  v.clips_per_speaker = 10
  v.eval_speakers = 8
  v.eval_clips = 2
  # Tasks one after another (lax.map): on XLA CPU the vmapped tasks' weight
  # gradients ran this model's step at 1.05 s against 0.54 s
  # (docs/benchmarks.md, "The source-filter vocoder").
  c.train.task_map = "map"
  # The F0 predictor's own stage after the filter: 2000 Adam steps on
  # 32 windows of 64 frames (about a minute). In the joint loss alone it
  # sees only the 16-frame windows and was 411 cents off WORLD (session 9);
  # fitted alone, about 60-80 cents (docs/results/vocoder.md).
  v.f0_steps = 2000
  v.f0_window_frames = 64
  v.f0_batch = 32
  v.f0_lr = 1e-3
  c.train.checkpoint_every = 250
  c.train.log_every = 50
  c.adapt.max_speakers = 8
  c.adapt.num_eval = 4
  c.adapt.shots = (1, 5)
  c.adapt.steps = (0, 5, 20, 100)
  c.eval.enabled = True
  c.eval.metrics = ("secs", "eer", "mcd", "wer")
  c.expected_minutes = 65
  if arg == "meta":
    v.method = "meta-reptile"
    v.init_from = "runs/vocoder/vocoder/model"
    v.inner_steps = 5
    v.num_tasks = 2
    v.num_support = 2
    v.num_query = 2
    v.num_steps = 600
    v.f0_steps = 0  # the export's predictor is already fitted
    c.train.checkpoint_every = 100
    c.train.log_every = 25
    c.eval.enabled = False
  if arg == "smoke":
    c.expected_minutes = 2
    v.size = "tiny"
    v.num_steps = 2
    v.window_frames = 4
    v.num_tasks = 2  # the smoke corpus has 3 training speakers
    v.clips_per_speaker = 2
    v.eval_speakers = 1
    v.eval_clips = 1
    v.f0_steps = 2
    v.f0_window_frames = 8
    v.f0_batch = 2
    c.adapt.max_speakers = 1
    c.adapt.num_eval = 1
    c.adapt.shots = (1,)
    c.adapt.steps = (0, 2)
    c.train.checkpoint_every = 2
    c.train.log_every = 1
    c.eval.enabled = False
  return c
