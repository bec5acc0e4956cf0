r"""CPU 'base' run: every method, a base-size Tacotron, the vocoder too.

Hours on a 2-core CPU (not yet measured end to end here: the per-step cost
of the base Tacotron, 512-wide decoder LSTMs, is ~50x the quickstart's tiny
one). Command::

  .venv/bin/python experiments/main.py \
      --config experiments/configs/base.py --workdir runs/base

Trains, on the embedded ``default`` synthetic corpus: ``transfer``,
``multitask``, ``meta-maml``, ``meta-fomaml``, ``meta-reptile``,
``meta-metasgd`` and ``meta-imaml`` (MAML-family methods start from the
transfer model, ``config.train.init_from="transfer"``), plus the WaveNet-style
vocoder meta-trained with Reptile on speaker tasks of (mel, waveform)
windows; then adapts every method and ``scratch`` to 8 held-out speakers per
split with 1 and 5 clips for 0/5/20/100 steps and writes the report with
SECS, EER and MCD. Rerunning resumes from the checkpoints.

The argument selects the acoustic-model size: ``base`` (default) or
``tiny`` (the quickstart model, all methods; ~1 hour)::

  .venv/bin/python experiments/main.py \
      --config experiments/configs/base.py:tiny --workdir runs/base-tiny
"""

from metatts.experiments.tts import default_config


def get_config(arg: str = "base"):
  """The base config; ``arg`` is the Tacotron size ('base' or 'tiny')."""
  size = (arg or "base").strip()
  if size not in ("base", "tiny"):
    raise ValueError(f"base config argument {arg!r}; use 'base' or 'tiny'.")
  c = default_config()
  c.name = f"base-{size}"
  c.expected_minutes = 60 if size == "tiny" else 600
  c.model = {"size": size}
  c.methods = ("transfer", "multitask", "meta-maml", "meta-fomaml",
               "meta-reptile", "meta-metasgd", "meta-imaml")
  c.data.max_frames = 400
  c.data.max_tokens = 160
  c.data.num_buckets = 3
  c.train.num_steps = 3000 if size == "base" else 1500
  c.train.num_tasks = 8
  c.train.checkpoint_every = 250
  c.train.log_every = 25
  c.train.init_from = "transfer"
  c.adapt.max_speakers = 8
  c.adapt.num_eval = 4
  c.eval.metrics = ("secs", "eer", "mcd")
  c.vocoder.enabled = True
  c.vocoder.size = "base" if size == "base" else "tiny"
  c.vocoder.num_steps = 2000
  c.vocoder.num_tasks = 4
  c.vocoder.num_support = 4
  c.vocoder.num_query = 4
  c.vocoder.window_frames = 16
  c.vocoder.max_speakers = 64
  c.vocoder.clips_per_speaker = 10
  c.vocoder.eval_speakers = 8
  return c
