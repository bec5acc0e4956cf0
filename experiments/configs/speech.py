r"""The duration Tacotron trained long enough to speak, every quickstart method.

The measurement config of the "model that speaks" work (docs/models.md,
docs/results/adaptation.md): the quickstart's corpus, methods and protocol,
with the duration-based Tacotron (``metatts.models.duration_tacotron``: RAD-TTS
aligner, predicted durations, parallel decoder) on espeak-ng phonemes
instead of the attention Tacotron on characters, and 20x the quickstart's
training::

  .venv/bin/python experiments/main.py \
      --config experiments/configs/speech.py --workdir runs/speech

* ``transfer``: 3000 Adam steps (lr 3e-3) of 2 speakers x (4 + 4) clips;
* ``meta-fomaml``: started from the transfer export
  (``config.train.init_from``), meta-trained through the test protocol
  (5 SGD steps of lr 0.01 on ``speaker+decoder``) for the same clip
  forward/backward budget (1000 meta-steps), outer Adam lr 3e-4
  (``config.train.meta_outer_lr``: at 3e-3 meta-training diverged);
* ``zeroshot``: the speaker-encoder model, its acoustic part started from
  the transfer export too (all but the speaker table), same budget;
* then every method and ``scratch`` adapted to 8 held-out speakers per split
  (``heldout_seen``, ``heldout_unseen``) with 5 clips for 0/5/20/100 steps of
  SGD lr 0.01 (lr 0.1, the quickstart's, blows this model's decoder up:
  docs/models.md), 4 judged sentences per speaker, and judged with
  SECS, EER and PocketSphinx WER beside the real and Griffin-Lim ceilings.

Training resumes from checkpoints, so the run can be split over sessions.
Measured on 2026-12-01 (docs/results/adaptation.md) in three parts on the
2-core CPU, most of them shared with other jobs: training transfer 17 min,
meta-fomaml 21 min for its last 750 of 1000 meta-steps, zeroshot 14 min; adaptation about 10 min and
evaluation about 45 min for the three methods (most of it PocketSphinx and
Griffin-Lim); the first whole run of this config (with the settings that
diverged) took 93 min.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quickstart  # pylint: disable=g-import-not-at-top,wrong-import-position


def get_config(arg: str = ""):
  """The speech config (no size argument)."""
  if arg:
    raise ValueError(f"speech config takes no argument, got {arg!r}.")
  c = quickstart.get_config("quickstart")
  c.name = "speech"
  c.expected_minutes = 95
  c.methods = ("transfer", "meta-fomaml", "zeroshot")
  c.model = {"name": "duration_tacotron", "size": "tiny", "max_frames": 400}
  c.data.features = {"n_mels": 80, "symbols": "phonemes"}
  c.train.num_steps = 3000
  c.train.num_tasks = 2
  c.train.num_support = 4
  c.train.num_query = 4
  c.train.outer_lr = 3e-3
  # Meta-training from the transfer export diverged at 3e-3 (the support
  # loss before adaptation grew to 1e4 by meta-step 950) and held at 3e-4.
  c.train.meta_outer_lr = 3e-4
  c.train.inner_lr = 0.01
  c.train.inner_steps.fomaml = 5
  c.train.init_from = "transfer"
  c.train.checkpoint_every = 250
  c.train.log_every = 50
  c.adapt.lr = 0.01
  c.adapt.max_speakers = 8
  c.adapt.num_eval = 4
  c.eval.metrics = ("secs", "eer", "wer")
  return c
