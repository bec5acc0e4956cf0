r"""CPU quickstart: few-shot speaker adaptation of a tiny Tacotron, end to end.

What ``make quickstart`` runs (2-core CPU, no GPU, nothing downloaded)::

  .venv/bin/python experiments/main.py \
      --config experiments/configs/quickstart.py --workdir runs/quickstart

It builds the embedded synthetic corpus (``metatts.data.synth`` preset
``default``: 116 speakers from Debian's flite/festival/espeak-ng voices,
WORLD-perturbed) into ``~/.cache/metatts/synth-default`` if it is missing,
computes its log-mel features, trains a multi-speaker ``transfer`` baseline,
a first-order MAML model (``meta-fomaml``, meta-trained through the test
protocol: 5 SGD steps of lr 0.1) and a speaker-encoder model
(``zeroshot``: the vector of the support clips, 0 steps = zero-shot) for the
same number of clip forward/backward passes, adapts them and an untrained
(``scratch``) model to held-out speakers of seen voices (``heldout_seen``)
and of an unseen voice (``heldout_unseen``) with 5 clips for 0/5/20/100 steps
(``--config.adapt.shots='(1,5)'`` adds 1-clip adaptation), writes
``runs/quickstart/samples`` and the report ``runs/quickstart/report/
index.html`` (speaker similarity and verification EER with Resemblyzer).

Measured run time on this 2-core machine: 11.0 min wall (17.5 CPU-min) on
2026-12-01 with the corpus and features already cached (three methods +
scratch; training 84 / 80 / 113 s, adaptation 312 s, evaluation 46 s);
building the corpus and features from nothing adds about 4 min, so about
15 min on a fresh machine, plus the install step (4-6 min). Before the
evaluation moved onto the one voice path (metatts.voice) it was 6.4 min.
On a machine shared with other jobs it is proportionally slower (29.8 min
with five other jobs on the 2 cores). Details and results:
docs/results/adaptation.md. Rerunning reuses the corpus and feature caches
and resumes training from its checkpoints.

The argument picks a size: ``quickstart.py`` (default) or
``quickstart.py:smoke`` (a 5-speaker corpus, a microscopic model, a few
steps; tests use it). Any key can be overridden, e.g. ``--config.train.num_steps=50``
or ``--config.methods='("transfer","meta-maml")'``; unknown keys are an error.
"""

from metatts.experiments.tts import default_config

SIZES = ("quickstart", "smoke")


def get_config(arg: str = "quickstart"):
  """Returns the quickstart config; ``arg`` is ``quickstart`` or ``smoke``."""
  size = (arg or "quickstart").strip()
  if size not in SIZES:
    raise ValueError(f"quickstart config argument {arg!r}; use one of {SIZES}"
                     " (e.g. experiments/configs/quickstart.py:smoke).")
  c = default_config()
  c.name = f"quickstart-{size}"
  c.expected_minutes = 20
  c.methods = ("transfer", "meta-fomaml", "zeroshot")
  # Sized so that the whole run fits 20 minutes on an idle 2-core CPU:
  # reduction factor 4 (a quarter of the decoder steps), clips up to 256
  # frames (3.2 s), 150 steps per method, 5-clip adaptation of 4 speakers per
  # held-out split.
  # The attention Tacotron on characters. The duration Tacotron
  # (--config.model.name=duration_tacotron, with phonemes) runs through the
  # same pipeline (tests/test_tts_experiment.py) but its quickstart setting
  # is not settled yet: see docs/models.md.
  c.model = {"name": "tacotron", "size": "tiny", "reduction_factor": 4,
             "max_frames": 400}
  c.data.max_frames = 256
  c.data.max_tokens = 96
  c.train.num_steps = 150
  c.train.checkpoint_every = 50
  c.adapt.shots = (5,)
  c.adapt.max_speakers = 4
  if size == "quickstart":
    # What the 1500-step runs of docs/results/adaptation.md found to work
    # best for the meta-learner: train through the test protocol itself
    # (5 SGD steps of lr 0.1, also the adaptation protocol of every method).
    # With equal_budget the 5-inner-step meta-learner makes 50 meta-steps
    # for the 150 steps of transfer (same clip forward/backward passes).
    c.train.inner_lr = 0.1
    c.train.inner_steps.fomaml = 5
    c.adapt.lr = 0.1
  if size == "smoke":
    c.expected_minutes = 2
    c.methods = ("transfer", "meta-fomaml")  # zeroshot: test_tts_zeroshot
    c.data.root = "~/.cache/metatts/synth-smoke"
    # Smaller than the "tiny" preset: 2 voices, 5 speakers x 5 clips (3
    # training speakers, 1 heldout_seen, 1 heldout_unseen).
    c.data.synth_preset = "tiny"
    c.data.synth_overrides = dict(
        name="synth-smoke", voices=("flite-awb", "flite-slt"),
        heldout_voice="flite-slt", n_sentences=20, sentences_per_voice=10,
        min_words=3, max_words=6, train_per_voice=3,
        heldout_seen_per_voice=1, unseen_speakers=1, utts_per_speaker=(5, 5))
    c.data.max_tokens = 64
    c.data.max_frames = 256
    # tests/test_tts_experiment.py also runs this size with the duration
    # Tacotron on phonemes, started from the transfer export.
    c.data.features = {"n_mels": 20, "n_fft": 512, "win_length": 400}
    c.model = {"name": "tacotron", "size": "tiny", "embed_dim": 16,
               "encoder_dim": 16, "attention_dim": 16,
               "attention_rnn_dim": 32, "decoder_rnn_dim": 32,
               "postnet_dim": 16, "postnet_num_convs": 2,
               "encoder_num_convs": 1, "prenet_dims": (16, 16),
               "speaker_dim": 8, "reduction_factor": 4, "max_frames": 320}
    c.train.init_from = ""
    c.train.num_steps = 4
    c.train.num_tasks = 2
    c.train.num_support = 2
    c.train.num_query = 2
    c.train.log_every = 2
    c.train.checkpoint_every = 2
    c.adapt.steps = (0, 2)
    c.adapt.shots = (1, 2)
    c.adapt.num_eval = 1
    c.adapt.max_speakers = 1
    c.adapt.griffin_lim_iters = 4
    c.eval.enabled = False
    # The vocoder path too (WaveNet-style, Reptile over speaker tasks).
    c.vocoder.enabled = True
    c.vocoder.num_steps = 2
    c.vocoder.num_tasks = 2
    c.vocoder.num_support = 1
    c.vocoder.num_query = 1
    c.vocoder.window_frames = 4
    c.vocoder.max_speakers = 3
    c.vocoder.clips_per_speaker = 2
    c.vocoder.eval_speakers = 1
    c.vocoder.eval_clips = 1
  return c
