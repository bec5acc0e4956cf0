"""Judging in worker processes, the judged-clip cache, and WER on some steps.

The samples folders are the flite fakes of test_evaluation_report.py, cut to
two speakers: the serial judge is the reference the parallel one must match
byte for byte, and a second evaluate() must judge nothing.
"""

import json
import os
import shutil

import numpy as np
import pytest

from metatts.evaluation import measure, pipeline, schema
from metatts.evaluation import __main__ as cli
from metatts.evaluation.world import WorldFeatures
from test_evaluation_report import (HAVE_FLITE, HAVE_JUDGES, _write,  # noqa: E402  pylint: disable=g-import-not-at-top
                                    make_workdir)

needs_judges = pytest.mark.skipif(
    not (HAVE_FLITE and HAVE_JUDGES),
    reason="needs Debian flite and pip install 'metatts[evaluation]'")
SPEAKERS = ("awb", "slt")
NOISE = {"meta-maml": {0: 0.04, 5: 0.004}}


def _tiny(root, bad=True):
  """2 speakers x 2 reference clips, meta-maml at 0 and 5 steps, 2 bad clips."""
  make_workdir(str(root), noise=NOISE, with_align=False, speakers=SPEAKERS)
  s = os.path.join(str(root), "samples", "meta-maml", "shots_5")
  if bad:
    _write(os.path.join(s, "steps_0", "slt", "u9.wav"), np.zeros(16000),
           16000, "Silence.")
    garbage = os.path.join(s, "steps_5", "awb", "u8.wav")
    with open(garbage, "wb") as f:
      f.write(b"not a wav file at all" * 50)
    with open(garbage[:-4] + ".txt", "w", encoding="utf-8") as f:
      f.write("Garbage.")
  return str(root)


def _files(out):
  return {f: open(os.path.join(out, f), encoding="utf-8").read()
          for f in ("metrics.json", "clips.json")}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return _tiny(tmp_path_factory.mktemp("tiny"))


@needs_judges
def test_parallel_equals_serial_and_bad_clips_are_rows(tiny, tmp_path):
  # The WORLD judges only: a worker that loads no torch starts in seconds
  # (the slow test below runs every judge in the pool).
  kw = dict(metrics=("mcd", "f0"), progress=False,
            griffin_lim=False, report=False, cache=False)
  ser = pipeline.evaluate(tiny, out_dir=str(tmp_path / "w1"), workers=1, **kw)
  par = pipeline.evaluate(tiny, out_dir=str(tmp_path / "w2"), workers=2, **kw)
  assert ser["workers"] == 1 and par["workers"] == 2
  assert _files(tmp_path / "w1") == _files(tmp_path / "w2")
  # 4 references + 4 synthesized + 2 bad clips, all judged.
  assert ser["n_judged"] == par["n_judged"] == ser["n_clips"] == 10
  assert par["n_failed"] == 2
  clips = json.loads(_files(tmp_path / "w2")["clips.json"])
  errors = [c["error"] for c in clips if "error" in c]
  assert len(errors) == 2
  assert any("cannot decode audio" in e for e in errors)
  assert any("all zeros" in e for e in errors)
  cell = par["metrics"]["meta-maml"]["shots"]["5"]["steps"]
  assert cell["0"]["n_failed"] == 1 and cell["5"]["n_failed"] == 1
  assert cell["5"]["mcd"] < cell["0"]["mcd"]  # less noise, closer spectrum


def _count_parts(monkeypatch):
  calls = {p: 0 for p in measure.PARTS}

  def wrap(name, fn):
    def counted(wav, req):
      calls[name] += 1
      return fn(wav, req)
    return counted

  for name, fn in list(measure._PART_FNS.items()):  # pylint: disable=protected-access
    monkeypatch.setitem(measure._PART_FNS, name, wrap(name, fn))  # pylint: disable=protected-access
  return calls


@needs_judges
def test_second_evaluate_judges_nothing(tmp_path, monkeypatch):
  root = _tiny(tmp_path / "w")
  calls = _count_parts(monkeypatch)
  kw = dict(metrics="secs,eer,mcd", progress=False, griffin_lim=False,
            report=False, workers=1)
  first = pipeline.evaluate(root, **kw)
  before = _files(os.path.join(root, "report"))
  # References: embed + features; 4 synthesized clips: embed + world; the
  # two bad clips fail on reading.
  assert first["n_judged"] == 10
  assert calls == dict(embed=8, features=4, world=4, asr=0, dnsmos=0)

  calls.update({p: 0 for p in calls})
  second = pipeline.evaluate(root, **kw)
  assert second["n_judged"] == 0 and not any(calls.values())
  assert _files(os.path.join(root, "report")) == before

  # One more method: only its clips are judged.
  s = os.path.join(root, "samples")
  shutil.copytree(os.path.join(s, "meta-maml", "shots_5", "steps_5"),
                  os.path.join(s, "transfer", "shots_5", "steps_5"))
  third = pipeline.evaluate(root, **kw)
  assert third["n_judged"] == 3  # 2 clips + the garbage file
  assert calls == dict(embed=2, features=0, world=2, asr=0, dnsmos=0)
  new = third["metrics"]
  assert new["meta-maml"] == second["metrics"]["meta-maml"]
  # The copy judges exactly like the original.
  assert new["transfer"]["shots"]["5"]["steps"]["5"] == \
      new["meta-maml"]["shots"]["5"]["steps"]["5"]

  # A changed reference clip: it is judged again, and so is the MCD of the
  # clips of its text (their embeddings are reused); its speaker's SECS moves.
  calls.update({p: 0 for p in calls})
  ref = os.path.join(s, "reference", "slt", "u1.wav")
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  x, sr = sf.read(ref)
  sf.write(ref, 0.5 * x[::-1], sr)
  fourth = pipeline.evaluate(root, **kw)
  assert calls == dict(embed=1, features=1, world=3, asr=0, dnsmos=0)
  assert fourth["n_judged"] == 4
  fresh = pipeline.evaluate(root, out_dir=str(tmp_path / "fresh"),
                            cache=False, **kw)
  assert fresh["metrics"] == fourth["metrics"]
  assert fresh["metrics"] != third["metrics"]


@needs_judges
def test_wer_only_at_some_steps(tmp_path, monkeypatch):
  root = _tiny(tmp_path / "w", bad=False)
  heard = []

  def fake_asr(wav, req):  # pylint: disable=unused-argument
    heard.append(os.path.relpath(req.wav, root))
    return "the quick brown fox"

  monkeypatch.setitem(measure._PART_FNS, "asr", fake_asr)  # pylint: disable=protected-access
  out = str(tmp_path / "rep")
  rc = cli.main(["--workdir", root, "--metrics", "secs,eer,wer", "--out", out,
                 "--no-griffin-lim", "--quiet", "--workers", "1",
                 "--no-cache", "--wer-steps", "5"])
  assert rc == 0
  # The 4 references (ground-truth WER) and the 2 clips at 5 steps.
  assert len(heard) == 6
  assert sum("steps_5" in h for h in heard) == 2 and not any(
      "steps_0" in h for h in heard)
  m = json.load(open(os.path.join(out, "metrics.json")))
  schema.validate_metrics(m)
  steps = m["meta-maml"]["shots"]["5"]["steps"]
  assert steps["0"]["wer"] is None and "wer" not in steps["0"]["ci95"]
  assert steps["0"]["secs"] is not None
  # "the quick brown fox" against the 9 words of u1: 5 deletions.
  assert steps["5"]["wer"] == pytest.approx(5 / 9, abs=1e-12)
  assert m["reference"]["real"]["wer"] is not None
  assert m["reference"]["settings"]["wer_steps"] == [5]
  clips = json.load(open(os.path.join(out, "clips.json")))
  at0 = [c for c in clips if c["method"] == "meta-maml" and c["steps"] == 0]
  assert at0 and all("hypothesis" not in c and "wer" not in c for c in at0)
  # The report draws WER where it exists and shows a dash elsewhere.
  assert os.path.isfile(os.path.join(out, "plots", "curve_steps_wer.png"))
  assert "&ndash;" in open(os.path.join(out, "index.html")).read()


@pytest.mark.slow
@needs_judges
def test_parallel_equals_serial_with_griffin_lim_and_wer(tmp_path):
  """Every judge in the pool, JAX's Griffin-Lim included."""
  root = _tiny(tmp_path / "w")
  kw = dict(metrics=pipeline.DEFAULT_METRICS, progress=False, report=False,
            cache=False, wer_steps=(5,))
  pipeline.evaluate(root, out_dir=str(tmp_path / "w1"), workers=1, **kw)
  par = pipeline.evaluate(root, out_dir=str(tmp_path / "w2"), workers=2, **kw)
  assert _files(tmp_path / "w1") == _files(tmp_path / "w2")
  ref = par["metrics"]["reference"]
  assert ref["griffin_lim"]["mcd"] > 0 and ref["real"]["wer"] is not None
  cell = par["metrics"]["meta-maml"]["shots"]["5"]["steps"]
  assert cell["5"]["secs"] > cell["0"]["secs"]  # less noise, closer voice
  assert cell["5"]["wer"] is not None and cell["0"]["wer"] is None
  assert par["n_failed"] == 2


# ------------------------------------------------------------ no judges
def test_cache_round_trip_is_exact(tmp_path):
  rng = np.random.default_rng(0)
  feat = WorldFeatures(rng.random(37), rng.normal(size=(37, 25)), 16000, 5.0)
  parts = {"load": None, "embed": rng.normal(size=256).astype(np.float32),
           "features:dio": feat,
           "world:dio:abc": {"mcd": 1 / 3, "f0_rmse": float("nan"),
                             "f0_rmse_hz": np.float64(2.5), "vde": 0.1},
           "asr": "hello world"}
  wav = str(tmp_path / "samples" / "m" / "a.wav")
  cache = measure.Cache(str(tmp_path / ".judged"))
  key = cache.key("file", "m/a.wav", "f" * 64)
  cache.put(key, wav, parts)
  cache.put(key, wav, {"dnsmos": 3.25, "x": {"error": "boom",
                                             "uncached": True}})
  got = cache.get(key, wav)
  assert set(got) == set(parts) | {"dnsmos"}
  assert got["embed"].dtype == np.float32
  assert got["embed"].tobytes() == parts["embed"].tobytes()
  assert got["features:dio"].mcep.tobytes() == feat.mcep.tobytes()
  assert got["features:dio"].f0.tobytes() == feat.f0.tobytes()
  assert got["features:dio"][2:] == (16000, 5.0)
  w = got["world:dio:abc"]
  assert w["mcd"] == 1 / 3 and np.isnan(w["f0_rmse"]) and w["vde"] == 0.1
  assert got["asr"] == "hello world" and got["dnsmos"] == 3.25
  # Errors name the clip where it is now, not where it was cached.
  cache.put(key, wav, {"asr": {"error": f"{wav}: silent", "type": "ValueError"}})
  moved = str(tmp_path / "elsewhere" / "m" / "a.wav")
  assert cache.get(key, moved)["asr"]["error"] == f"{moved}: silent"
  assert measure.Cache(None).get(key, wav) == {}


def test_workers_and_wer_steps_arguments():
  assert measure.resolve_workers(1, 1000) == 1
  assert measure.resolve_workers(3, 2) == 3
  assert measure.resolve_workers(None, measure.MIN_PARALLEL_SECONDS - 1) == 1
  auto = measure.resolve_workers(0, 10 ** 4)
  assert 1 <= auto <= measure.MAX_AUTO_WORKERS
  # A clip with every base-study judge, and the Griffin-Lim ceiling's extra.
  assert measure.estimate_seconds(("embed", "world", "asr"), False) == \
      pytest.approx(1.182)
  assert measure.estimate_seconds((), True) == pytest.approx(1.202)
  with pytest.raises(ValueError, match="workers=-1"):
    measure.resolve_workers(-1, 10)
  assert pipeline.parse_wer_steps("100, 0,5") == (0, 5, 100)
  assert pipeline.parse_wer_steps(()) is None
  assert pipeline.parse_wer_steps(None) is None
  with pytest.raises(ValueError, match="wer_steps"):
    pipeline.parse_wer_steps((2.5,))
  with pytest.raises(ValueError, match="wer_steps"):
    pipeline.parse_wer_steps("five")
