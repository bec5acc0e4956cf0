"""evaluate() on a tiny fake samples workdir, the report in headless Chromium,
the command line, and the errors for unusable workdirs.

The fake workdir: three flite voices (awb, rms, slt) are the held-out
speakers; their flite clips are the real references; "synthesized" clips are
the references plus white noise that shrinks with the adaptation steps, less
for meta-maml than for transfer, so the judges have a known ordering.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

from metatts.evaluation import _deps, layout, pipeline, schema
from metatts.evaluation import __main__ as cli

HAVE_FLITE = shutil.which("flite") is not None
HAVE_JUDGES = _deps.available("resemblyzer") and _deps.available("pyworld")
CHROMIUM = "/usr/bin/chromium"
SPEAKERS = ("awb", "rms", "slt")
TEXTS = {"u1": "The quick brown fox jumps over the lazy dog.",
         "u2": "She sells sea shells by the sea shore."}
# Noise standard deviation of the fake synthesized clips.
NOISE = {"meta-maml": {0: 0.04, 5: 0.004}, "transfer": {0: 0.04, 5: 0.03}}
FAST_METRICS = ("secs", "eer", "mcd", "f0")

needs_judges = pytest.mark.skipif(
    not (HAVE_FLITE and HAVE_JUDGES),
    reason="needs Debian flite and pip install 'metatts[evaluation]'")


def _write(path, wav, sr, text=None):
  import soundfile as sf
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sf.write(path, wav, sr)
  if text is not None:
    with open(path[:-4] + ".txt", "w", encoding="utf-8") as f:
      f.write(text)


def make_workdir(root, noise=None, with_align=True, speakers=SPEAKERS):
  """Builds WORKDIR/samples from flite clips; returns WORKDIR."""
  import soundfile as sf
  s = os.path.join(root, "samples")
  rng = np.random.default_rng(0)
  for spk in speakers:
    for utt, text in TEXTS.items():
      path = os.path.join(s, "reference", spk, utt + ".wav")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      subprocess.run(["flite", "-voice", spk, "-t", text, "-o", path],
                     check=True)
      with open(path[:-4] + ".txt", "w", encoding="utf-8") as f:
        f.write(text)
  for method, by_step in (noise or NOISE).items():
    for steps, sd in by_step.items():
      for spk in speakers:
        x, sr = sf.read(os.path.join(s, "reference", spk, "u1.wav"))
        y = np.clip(x + sd * rng.normal(size=x.size), -1, 1)
        out = os.path.join(s, method, "shots_5", f"steps_{steps}", spk,
                           "u1.wav")
        _write(out, y, sr, TEXTS["u1"])
        if with_align:
          a = np.exp(-0.5 * ((np.arange(40)[:, None] / 2.0
                              - np.arange(20)[None, :]) / 1.5) ** 2)
          np.save(out[:-4] + ".align.npy", a / a.sum(1, keepdims=True))
  with open(os.path.join(s, "manifest.json"), "w") as f:
    json.dump({"speakers": {"awb": "heldout_seen", "rms": "heldout_unseen",
                            "slt": "heldout_unseen"},
               "description": "fake samples for tests"}, f)
  return root


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("evalwork"))
  make_workdir(root)
  # One clip that cannot be judged: it must be counted, not crash the run.
  _write(os.path.join(root, "samples", "transfer", "shots_5", "steps_0", "slt",
                      "u9.wav"), np.zeros(16000), 16000, "Silence.")
  res = pipeline.evaluate(root, metrics=FAST_METRICS, progress=False,
                          griffin_lim=False)
  return root, res


@needs_judges
def test_metrics_json_schema_and_ordering(evaluated):
  root, res = evaluated
  with open(os.path.join(root, "report", "metrics.json")) as f:
    m = json.load(f)
  schema.validate_metrics(m)
  assert m == json.loads(json.dumps(res["metrics"]))
  assert set(m) == {"meta-maml", "transfer", "reference"}
  meta = m["meta-maml"]["shots"]["5"]["steps"]
  tr = m["transfer"]["shots"]["5"]["steps"]
  # Less noise -> closer to the speaker and to the reference spectrum.
  assert meta["5"]["secs"] > meta["0"]["secs"]
  assert meta["5"]["mcd"] < meta["0"]["mcd"]
  assert meta["5"]["secs"] > tr["5"]["secs"]
  assert meta["5"]["n"] == 3 and meta["5"]["wer"] is None  # not requested
  assert tr["0"]["n_failed"] == 1 and tr["0"]["n_clips"] == 3
  assert set(meta["5"]["splits"]) == {"heldout_seen", "heldout_unseen"}
  assert meta["5"]["splits"]["heldout_unseen"]["n"] == 2
  real = m["reference"]["real"]
  assert real["secs"] > meta["0"]["secs"] and real["eer"] == 0.0
  assert m["reference"]["settings"]["mcep_alpha"] == 0.42
  with open(os.path.join(root, "report", "clips.json")) as f:
    clips = json.load(f)
  bad = [c for c in clips if "error" in c]
  assert len(bad) == 1 and "all zeros" in bad[0]["error"]


@needs_judges
def test_step_ratio_in_summary(evaluated):
  root, res = evaluated
  with open(os.path.join(root, "report", "summary.json")) as f:
    ratios = json.load(f)["step_ratios"]
  assert len(ratios) == 1 and ratios[0]["baseline"] == "transfer"
  # transfer only reaches its 5-step value; meta-maml at 5 is out of reach.
  assert ratios[0]["baseline_steps"] is None
  assert "does not reach" in ratios[0]["text"]


@needs_judges
def test_report_files_exist(evaluated):
  root, res = evaluated
  rep = os.path.join(root, "report")
  html = open(res["report"], encoding="utf-8").read()
  srcs = re.findall(r"src='([^']+)'", html)
  assert srcs and all(not os.path.isabs(s) for s in srcs)
  for s in srcs:
    assert os.path.isfile(os.path.join(rep, s)), s
  # 3 speakers x (reference + 2 methods x 2 step counts) players.
  assert sum(s.endswith(".wav") for s in srcs) == 15
  assert any("curve_steps_secs" in s for s in srcs)
  assert any(s.startswith("plots/mel_") for s in srcs)
  # One attention plot per method (its largest step shown) and speaker.
  assert sum(s.startswith("plots/align_") for s in srcs) == 6


@needs_judges
@pytest.mark.skipif(not os.path.exists(CHROMIUM),
                    reason=f"{CHROMIUM} missing (Debian package chromium)")
def test_report_renders_in_headless_chromium(evaluated):
  root, res = evaluated
  with tempfile.TemporaryDirectory() as profile:
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=8000",
         "--dump-dom", "file://" + os.path.abspath(res["report"])],
        capture_output=True, text=True, timeout=120, check=True).stdout
  audios = re.findall(r"<audio[^>]*>", dom)
  imgs = re.findall(r"<img[^>]*>", dom)
  assert len(audios) == 15 and len(imgs) >= 6
  # The page's script marks media whose data actually loaded.
  assert all('data-state="loaded"' in a for a in audios), audios
  assert all('data-state="loaded"' in i for i in imgs), imgs
  durations = [float(d) for d in re.findall(r'data-duration="([\d.]+)"', dom)]
  assert len(durations) == 15 and min(durations) > 1.0
  assert "<table class=\"metrics\">" in dom


@needs_judges
def test_cli_writes_metrics(evaluated, tmp_path, capsys):
  root, _ = evaluated
  out = str(tmp_path / "rep")
  rc = cli.main(["--workdir", root, "--metrics", "secs,eer", "--out", out,
                 "--no-griffin-lim", "--no-report", "--quiet"])
  assert rc == 0
  m = json.load(open(os.path.join(out, "metrics.json")))
  schema.validate_metrics(m)
  cell = m["meta-maml"]["shots"]["5"]["steps"]["5"]
  assert cell["secs"] is not None and cell["mcd"] is None
  assert "metrics:" in capsys.readouterr().out


@pytest.mark.slow
@needs_judges
def test_full_metrics_with_ceilings(tmp_path):
  root = make_workdir(str(tmp_path), noise={"meta-maml": {5: 0.003}},
                      with_align=False, speakers=("awb", "slt"))
  res = pipeline.evaluate(root, progress=False)
  ref = res["metrics"]["reference"]
  assert ref["real"]["wer"] is not None and ref["real"]["wer"] < 0.5
  gl = ref["griffin_lim"]
  assert gl["secs"] < ref["real"]["secs"] + 0.05 and gl["mcd"] > 0.0
  cell = res["metrics"]["meta-maml"]["shots"]["5"]["steps"]["5"]
  assert cell["wer"] is not None and cell["f0_rmse"] is not None


# ------------------------------------------------------------- bad input
def test_workdir_without_samples(tmp_path, capsys):
  with pytest.raises(FileNotFoundError, match="no samples folder"):
    pipeline.evaluate(str(tmp_path), progress=False)
  assert cli.main(["--workdir", str(tmp_path), "--quiet"]) == 2
  assert "docs/evaluation.md" in capsys.readouterr().err


def _mini(tmp_path, sr=16000, method="transfer", ref_speakers=("a",),
          synth_speaker="a", shots="shots_5", ref_txt=True):
  s = tmp_path / "samples"
  x = 0.1 * np.sin(2 * np.pi * 220 * np.arange(sr) / sr)
  for spk in ref_speakers:
    _write(str(s / "reference" / spk / "u1.wav"), x, sr,
           "Hello." if ref_txt else None)
  _write(str(s / method / shots / "steps_0" / synth_speaker / "u1.wav"), x, sr,
         "Hello.")
  return str(tmp_path)


def test_layout_errors(tmp_path):
  root = _mini(tmp_path / "ok")
  samples = layout.scan_samples(root)
  assert samples.n_synthesized() == 1
  with pytest.raises(FileNotFoundError, match="missing reference for speaker 'b'"):
    layout.scan_samples(_mini(tmp_path / "r", synth_speaker="b"))
  with pytest.raises(ValueError, match="unknown method 'maml'"):
    layout.scan_samples(_mini(tmp_path / "m", method="maml"))
  with pytest.raises(ValueError, match="shots_<K>"):
    layout.scan_samples(_mini(tmp_path / "k", shots="five"))
  with pytest.raises(FileNotFoundError, match="transcript missing"):
    layout.scan_samples(_mini(tmp_path / "t", ref_txt=False))
  os.makedirs(tmp_path / "e" / "samples" / "reference" / "a")
  with pytest.raises(FileNotFoundError, match="holds no"):
    layout.scan_samples(str(tmp_path / "e"))


def test_mismatched_sample_rate_in_manifest(tmp_path):
  root = _mini(tmp_path, sr=22050)
  with open(os.path.join(root, "samples", "manifest.json"), "w") as f:
    json.dump({"sample_rate": 16000}, f)
  with pytest.raises(ValueError, match="mismatched sample rate.*22050 Hz"):
    pipeline.evaluate(root, metrics="secs", progress=False)


def test_unknown_metric(tmp_path):
  with pytest.raises(ValueError, match="unknown metric 'mos'"):
    pipeline.parse_metrics("secs,mos")
  assert pipeline.parse_metrics("secs, f0_rmse,secs") == ("secs", "f0")


def test_plot_mels_shows_an_unreadable_clip_blank_instead_of_failing(
    tmp_path):
  """A 2-frame synthesized clip (too short to judge) must not stop the report:
  its panel is blank and its label says why."""
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  from metatts.evaluation import report  # pylint: disable=g-import-not-at-top
  sr = 16000
  t = np.arange(sr) / sr
  good, short = str(tmp_path / "good.wav"), str(tmp_path / "short.wav")
  sf.write(good, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr)
  sf.write(short, (0.3 * np.sin(2 * np.pi * 220 * t[:200])).astype(
      np.float32), sr)
  with pytest.raises(ValueError, match="at least 100 ms"):
    report._mel_db(short)  # pylint: disable=protected-access
  png = report.plot_mels([("good", good), ("short", short)],
                         str(tmp_path / "m.png"))
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_vocoder_only_metrics_need_the_vocoded_row(evaluated):
  """A vocoder-only run (no method folders) has only the ceilings and the
  vocoded row; without that row there is nothing to report."""
  root, _ = evaluated
  with open(os.path.join(root, "report", "metrics.json")) as f:
    m = json.load(f)
  ref = dict(m["reference"])
  only = {"reference": {**ref, "vocoded": ref["real"]}}
  schema.validate_metrics(only)
  with pytest.raises(ValueError, match="no method entries"):
    schema.validate_metrics({"reference": {k: v for k, v in ref.items()
                                           if k != "vocoded"}})
