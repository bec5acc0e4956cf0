r"""The base study: does meta-learning beat what a user would do otherwise?

The meta-learning claim of metatts measured on speech on a 2-core CPU
(docs/results/adaptation.md, "The base study"; issue 12). Command::

  .venv/bin/python experiments/main.py \
      --config experiments/configs/base.py --workdir runs/base

The model is the duration Tacotron on espeak-ng phonemes that speaks
(``experiments/configs/speech.py``, docs/models.md). The corpus is the
embedded synthetic one (``metatts.data.synth`` preset ``default``) with 12
speakers of the unseen voice instead of 8 (``synth-base``, built into
``~/.cache/metatts/synth-base`` on the first run). Methods, all for the same
clip forward/backward budget (3000 pre-training steps of 2 speakers x
(4 + 4) clips):

* ``transfer``: multi-speaker pre-training, then fine-tuning a new voice
  from the average speaker row;
* ``multitask``: the same with a shared trunk, a speaker-classification head
  and its regulariser (λ = ``config.train.multitask_weight``);
* ``zeroshot``: a speaker encoder trained with the acoustic model (0 steps =
  zero-shot; then fine-tuned like the others);
* ``meta-maml`` (second order), ``meta-fomaml`` and ``meta-reptile``:
  meta-learned through the test protocol (5 SGD steps of lr 0.01 on
  ``speaker+decoder``; Reptile 3 steps);
* ``scratch``: the random initialization, adapted the same way.

``zeroshot`` and the meta-learners start from ``transfer`` after 2/3 of its
steps (``config.train.init_from_fraction``) and train for the other third of
the budget, so that every method's total budget is the same. Two processes
train: ``transfer`` beside ``multitask``, then the others in pairs
(``config.train.workers``). Every method is
then adapted to 12 held-out speakers per split (new speakers of seen voices,
``heldout_seen``; speakers of an unseen voice, ``heldout_unseen``) with 1 and
5 clips for 0/5/10/20/50/100 steps of SGD (lr 0.01) by the one protocol
(``metatts.experiments.adaptation``, two processes), and 2 held-out
sentences per speaker and cell are judged with SECS, EER, MCD and
PocketSphinx WER beside the real and Griffin-Lim ceilings.

Training, adaptation and judging resume: a rerun continues every training
from its newest checkpoint and adapts only the methods whose samples are
missing, so the study can run in parts. Measured end to end on an idle
2-core CPU with nothing cached (session 14, docs/results/adaptation.md,
"Results: the whole study by one command"): **86.5 min wall** (146
CPU-min), of which corpus and features 3.6 min, training 45 min (transfer
beside multitask 24.3, zeroshot beside meta-maml 15.5, meta-fomaml 5.3,
meta-reptile 4.7), adaptation 18 min and judging 18.6 min; peak memory
3.3 GB. Since session 16 the equal budget counts Reptile's pass over the
query clips (500 meta-steps instead of 667, whose clip passes were 1.33x
the others') and the meta-gradients are clipped at norm 5; the end-to-end
time was measured before these changes (Reptile now trains a quarter less).

``base.py:large`` is the earlier GPU-sized variant: the attention Tacotron
at its ``base`` size (512-wide decoder LSTMs, ~50x the quickstart's), every
method and the WaveNet-style vocoder; many hours on a CPU::

  .venv/bin/python experiments/main.py \
      --config experiments/configs/base.py:large --workdir runs/base-large
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import speech  # pylint: disable=g-import-not-at-top,wrong-import-position

ARGS = ("study", "large")
METHODS = ("transfer", "multitask", "zeroshot", "meta-maml", "meta-fomaml",
           "meta-reptile")


def get_config(arg: str = "study"):
  """The base study (``study``) or its GPU-sized variant (``large``)."""
  arg = (arg or "study").strip()
  if arg not in ARGS:
    raise ValueError(f"base config argument {arg!r}; use one of {ARGS} "
                     "(e.g. experiments/configs/base.py:large).")
  c = speech.get_config()
  c.name = f"base-{arg}"
  c.methods = METHODS
  # 12 speakers of the unseen voice (the default corpus has 8).
  c.data.root = "~/.cache/metatts/synth-base"
  c.data.synth_overrides = {"name": "synth-base", "unseen_speakers": 12}
  c.train.init_from = "transfer"
  c.train.init_from_fraction = 2 / 3
  c.train.inner_steps.maml = 5
  c.train.inner_steps.fomaml = 5
  c.train.inner_steps.reptile = 3
  # Reptile's outer step through Adam at meta_outer_lr, like the MAML family:
  # with SGD at epsilon 0.5, the parameters outside the filter got their raw
  # query gradient at rate 0.5 and the run diverged (44 of its first 50
  # meta-steps skipped for NaN/Inf, support loss 2e14; docs/results/
  # adaptation.md).
  c.train.reptile_outer = "adam"
  # Meta-gradients clipped to global norm 5 (their norm is 1-3 on most
  # meta-steps): second-order MAML's spiked to 4e5-6e5 in a session-16 run
  # and ended below transfer@5; with the clip it had its best run
  # (docs/results/adaptation.md, session 16).
  c.train.meta_clip_norm = 5.0
  c.adapt.shots = (1, 5)
  c.adapt.steps = (0, 5, 10, 20, 50, 100)
  c.adapt.max_speakers = 12
  c.adapt.num_eval = 2
  c.adapt.workers = 2
  c.train.workers = 2  # transfer beside multitask, then the rest in pairs
  c.eval.metrics = ("secs", "eer", "mcd", "wer")
  # PocketSphinx is the slowest judge; WER is read at 0 steps, meta@5 and
  # transfer@100, the cells the study compares.
  c.eval.wer_steps = (0, 5, 100)
  # 86.5 min measured end to end on an idle 2-core CPU (see the docstring).
  c.expected_minutes = 90
  if arg == "large":
    c.expected_minutes = 600
    c.hardware = "a GPU (many hours on a 2-core CPU)"
    c.methods = ("transfer", "multitask", "meta-maml", "meta-fomaml",
                 "meta-reptile", "meta-metasgd", "meta-imaml")
    c.model = {"name": "tacotron", "size": "base"}
    c.data.features = {"n_mels": 80}
    c.data.max_frames = 400
    c.data.max_tokens = 160
    c.data.num_buckets = 3
    c.train.num_tasks = 8
    c.train.num_support = 5
    c.train.num_query = 5
    c.train.init_from_fraction = 0.0
    c.train.workers = c.adapt.workers = 1  # one process per accelerator
    c.train.meta_outer_lr = 0.0
    c.train.outer_lr = 1e-3
    c.train.inner_lr = 0.01
    c.train.inner_steps.fomaml = 1
    c.train.inner_steps.maml = 1
    c.train.checkpoint_every = 250
    c.train.log_every = 25
    c.adapt.shots = (1, 5)
    c.adapt.steps = (0, 5, 20, 100)
    c.adapt.max_speakers = 8
    c.adapt.num_eval = 4
    c.eval.metrics = ("secs", "eer", "mcd")
    c.vocoder.enabled = True
    c.vocoder.size = "base"
    c.vocoder.num_steps = 2000
    c.vocoder.num_tasks = 4
    c.vocoder.num_support = 4
    c.vocoder.num_query = 4
    c.vocoder.window_frames = 16
    c.vocoder.max_speakers = 64
    c.vocoder.clips_per_speaker = 10
    c.vocoder.eval_speakers = 8
  return c
