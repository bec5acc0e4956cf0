r"""GPU run at paper size on a real corpus (VCTK 0.92 or LibriTTS).

Not run in this repository yet (no GPU and no corpus can be downloaded
here); expected 1-3 days on one A100/H100 for all methods. Commands::

  # VCTK 0.92 (wav48_silence_trimmed/p225/*_mic1.flac + txt/):
  python experiments/main.py --config experiments/configs/full.py:vctk \
      --workdir runs/full-vctk --config.data.root=/data/VCTK-Corpus-0.92

  # LibriTTS (<split>/<speaker>/<chapter>/*.wav + .normalized.txt; every
  # split under the root is loaded; the held-out ids are test-clean
  # speakers, so the root must hold test-clean beside train-clean-100 etc.):
  python experiments/main.py --config experiments/configs/full.py:libritts \
      --workdir runs/full-libritts --config.data.root=/data/LibriTTS

Sizes follow Tacotron 2 (Shen et al. 2018: 512-wide encoder, 1024-wide
decoder LSTMs, r=1) and the Meta-TTS protocol (Huang et al. 2022: 5-shot
tasks; 0/5/20/100 adaptation steps judged by speaker verification). Held-out
speakers: the ``heldout_unseen`` ids below never appear in training;
``heldout_seen`` are left empty on real corpora (there is no "base voice"),
override them to hold out more. The WaveNet-style vocoder ("full" size,
3 x 10 layers) is meta-trained with Reptile on speaker tasks.
"""

from metatts.experiments.tts import default_config

CORPORA = {
    # 8 VCTK speakers held out (4 female, 4 male), as in speaker-adaptation
    # papers that test on unseen VCTK speakers.
    "vctk": dict(root="~/data/VCTK-Corpus-0.92",
                 heldout_unseen=("p225", "p226", "p227", "p228", "p229",
                                 "p230", "p231", "p232")),
    "libritts": dict(root="~/data/LibriTTS",
                     heldout_unseen=("1089", "1188", "121", "1221", "1284",
                                     "1320", "1580", "1995")),
}


def get_config(arg: str = "vctk"):
  """The full config; ``arg`` is the corpus ('vctk' or 'libritts')."""
  corpus = (arg or "vctk").strip()
  if corpus not in CORPORA:
    raise ValueError(f"full config argument {arg!r}; use one of "
                     f"{sorted(CORPORA)}.")
  c = default_config()
  c.name = f"full-{corpus}"
  c.expected_minutes = 24 * 60
  c.hardware = "one A100/H100 GPU"
  c.data.corpus = corpus
  c.data.root = CORPORA[corpus]["root"]
  c.data.heldout_unseen = CORPORA[corpus]["heldout_unseen"]
  c.data.features = {"n_mels": 80}
  c.data.max_tokens = 200
  c.data.max_frames = 1000
  c.data.num_buckets = 4
  c.model = {"size": "full"}
  c.methods = ("transfer", "multitask", "meta-maml", "meta-fomaml",
               "meta-reptile", "meta-metasgd", "meta-imaml")
  c.train.num_steps = 100_000
  c.train.num_tasks = 8
  c.train.outer_lr = 1e-3
  c.train.init_from = "transfer"
  c.train.checkpoint_every = 2000
  c.train.log_every = 100
  c.train.max_to_keep = 3
  c.adapt.max_speakers = 8
  c.adapt.num_eval = 8
  c.eval.metrics = ("secs", "eer", "mcd", "wer")
  c.vocoder.enabled = True
  c.vocoder.size = "full"
  c.vocoder.num_steps = 200_000
  c.vocoder.num_tasks = 8
  c.vocoder.num_support = 4
  c.vocoder.num_query = 4
  c.vocoder.window_frames = 32
  c.vocoder.max_speakers = 0
  c.vocoder.clips_per_speaker = 50
  c.vocoder.eval_speakers = 8
  return c
