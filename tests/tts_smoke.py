"""The quickstart ``:smoke`` config redirected into a test's temporary folder.

Shared by the TTS experiment tests (pytest puts tests/ on sys.path).
"""

import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "quickstart.py")


def smoke_config(tmp):
  """quickstart.get_config("smoke") with corpus and caches under ``tmp``."""
  sys.path.insert(0, os.path.dirname(CONFIG))
  try:
    import quickstart  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  c = quickstart.get_config("smoke")
  c.data.root = os.path.join(tmp, "corpus")
  c.data.cache_dir = os.path.join(tmp, "features")
  c.progress = False
  return c


def final_params(method_dir):
  """The exported params and model.json of ``WORKDIR/<method>``."""
  from metatts.training import export  # pylint: disable=g-import-not-at-top
  _, params, info, _ = export.load_exported(os.path.join(method_dir,
                                                         "model"))
  return params, info


def check_evaluation_equals_api(c, w, tmp_path, methods):
  """The samples the evaluation judged for ``methods`` are what
  ``metatts.load(...).adapt(...).synthesize(...)`` gives, sample for
  sample."""
  import metatts  # pylint: disable=g-import-not-at-top
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  from metatts import vocoders  # pylint: disable=g-import-not-at-top
  from metatts import voice  # pylint: disable=g-import-not-at-top
  from metatts import clips  # pylint: disable=g-import-not-at-top
  from metatts.audio import io as aio  # pylint: disable=g-import-not-at-top
  from metatts.experiments import tts  # pylint: disable=g-import-not-at-top
  data = tts.prepare_data(c, progress=False)
  examples = {e.utt_id: e for split in data.heldout.values()
              for exs in split.values() for e in exs}
  protocol = json.load(open(os.path.join(w, "samples", "protocol.json")))
  checked = 0
  for method in methods:
    model = metatts.load(os.path.join(w, method), vocoder=(
        vocoders.GriffinLimVocoder(data.feature_config.mel_config(),
                                   int(c.adapt.griffin_lim_iters))))
    for spk, rec in sorted(protocol[method]["speakers"].items()):
      k = max(rec["shots"], key=int)
      support = [examples[u] for u in rec["shots"][k]["support"]]
      evaluation = [examples[u] for u in rec["evaluation"]]
      eval_clips = [clips.from_example(e) for e in support]
      speech, _ = voice.adapt_and_synthesize(
          model, eval_clips, [e.text for e in evaluation],
          tuple(c.adapt.steps))
      for s in c.adapt.steps:
        v = model.adapt([e.audio_path for e in support],
                        [e.text for e in support], steps=int(s))
        for e, want in zip(evaluation, speech[s]):
          audio, sr = v.synthesize(e.text)
          # The same floats as the evaluation's path on its cached clips...
          np.testing.assert_array_equal(audio, want.audio)
          # ...and the same samples as the file the evaluation judged.
          path = str(tmp_path / f"{method}_{spk}_{s}.wav")
          aio.save_wav(path, audio, sr)
          judged = os.path.join(w, "samples", method, f"shots_{k}",
                                f"steps_{s}", spk, e.utt_id + ".wav")
          np.testing.assert_array_equal(sf.read(path, dtype="int16")[0],
                                        sf.read(judged, dtype="int16")[0])
          checked += 1
  assert checked >= len(methods) * 2 * len(c.adapt.steps)
