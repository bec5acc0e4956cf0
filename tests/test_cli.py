"""Tests of ``python -m metatts adapt`` / ``say`` on a tiny exported model."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from metatts import __main__ as cli
from metatts import api

sys.path.insert(0, os.path.dirname(__file__))
from test_api import SR, TEXTS, make_export, tone  # noqa: E402  pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("cli_workdir"))
  make_export(wd)
  return wd


def write_clips(directory, n=5, texts=TEXTS):
  os.makedirs(directory, exist_ok=True)
  for i in range(n):
    sf.write(os.path.join(directory, f"clip{i}.wav"),
             tone(120 + 20 * i, 0.7 + 0.1 * i, seed=i), SR, subtype="PCM_16")
    with open(os.path.join(directory, f"clip{i}.txt"), "w") as f:
      f.write(texts[i] + "\n")
  return directory


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "metatts", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600,
                        check=False)


def test_adapt_and_say_in_subprocesses_write_a_valid_wav(workdir, tmp_path):
  clips = write_clips(str(tmp_path / "clips"))
  voice_dir = str(tmp_path / "voice")
  out = run_cli("adapt", "--model", workdir, "--clips", clips, "--out",
                voice_dir, "--steps", "3")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "support loss by step" in out.stdout
  with open(os.path.join(voice_dir, "voice.json")) as f:
    record = json.load(f)
  assert record["steps"] == 3 and len(record["losses"]) == 4
  assert record["clips"] == [f"clip{i}.wav" for i in range(5)]
  assert record["texts"] == TEXTS

  wav = str(tmp_path / "out" / "hello.wav")
  out = run_cli("say", "--voice", voice_dir, "Hello", "there.", "-o", wav)
  assert out.returncode == 0, out.stderr[-3000:]
  info = sf.info(wav)
  assert info.samplerate == SR and info.channels == 1
  assert info.subtype == "PCM_16" and info.frames > 0
  # The file holds what the library synthesizes for the same voice and seed.
  audio, sr = api.load_voice(voice_dir).synthesize("Hello there.", seed=0)
  written, _ = sf.read(wav, dtype="float32")
  assert sr == SR and written.shape == audio.shape
  np.testing.assert_allclose(written, audio, atol=2.0 / 32768)


def _main(capsys, *argv):
  code = cli.main(list(argv))
  return code, capsys.readouterr().err


def test_clip_folder_problems_exit_2_naming_the_file(workdir, tmp_path,
                                                     capsys):
  voice = str(tmp_path / "v")
  clips = write_clips(str(tmp_path / "missing_txt"), n=2)
  os.remove(os.path.join(clips, "clip1.txt"))
  code, err = _main(capsys, "adapt", "--model", workdir, "--clips", clips,
                    "--out", voice)
  assert code == 2 and "clip1.wav has no transcript" in err
  assert "clip1.txt is missing" in err

  clips = write_clips(str(tmp_path / "empty_txt"), n=2)
  open(os.path.join(clips, "clip0.txt"), "w").close()
  code, err = _main(capsys, "adapt", "--model", workdir, "--clips", clips,
                    "--out", voice)
  assert code == 2 and "clip0.txt" in err and "empty" in err

  clips = write_clips(str(tmp_path / "silent"), n=2)
  sf.write(os.path.join(clips, "clip1.wav"), np.zeros(SR, np.float32), SR)
  code, err = _main(capsys, "adapt", "--model", workdir, "--clips", clips,
                    "--out", voice)
  assert code == 2 and "clip1.wav" in err and "silent" in err

  clips = write_clips(str(tmp_path / "unreadable"), n=1)
  with open(os.path.join(clips, "clip0.wav"), "wb") as f:
    f.write(b"not audio at all")
  code, err = _main(capsys, "adapt", "--model", workdir, "--clips", clips,
                    "--out", voice)
  assert code == 2 and "clip0.wav" in err and "re-encode" in err

  os.makedirs(str(tmp_path / "no_audio"))
  code, err = _main(capsys, "adapt", "--model", workdir, "--clips",
                    str(tmp_path / "no_audio"), "--out", voice)
  assert code == 2 and "No audio clips" in err

  code, err = _main(capsys, "adapt", "--model", workdir, "--clips",
                    str(tmp_path / "nowhere"), "--out", voice)
  assert code == 2 and "does not exist" in err
  assert not os.path.exists(voice)

  # --vocoder-steps needs a trained source-filter vocoder (this model has
  # none): refused before any adaptation, naming the fix.
  clips = write_clips(str(tmp_path / "good"), n=2)
  code, err = _main(capsys, "adapt", "--model", workdir, "--clips", clips,
                    "--out", voice, "--vocoder-steps", "5")
  assert code == 2 and "vocoder_steps=5: only a trained" in err
  assert "griffin-lim" in err and not os.path.exists(voice)


def test_bad_model_voice_and_arguments(tmp_path, capsys):
  clips = write_clips(str(tmp_path / "clips"), n=1)
  code, err = _main(capsys, "adapt", "--model", str(tmp_path), "--clips",
                    clips, "--out", str(tmp_path / "v"))
  assert code == 2 and "No exported model" in err
  code, err = _main(capsys, "say", "--voice", str(tmp_path), "Hi.", "-o",
                    str(tmp_path / "x.wav"))
  assert code == 2 and "not a saved voice" in err
  with pytest.raises(SystemExit) as e:
    cli.main(["adapt", "--clips", clips, "--out", "v"])  # no --model
  assert e.value.code == 2
  with pytest.raises(SystemExit):
    cli.main(["adapt", "--model", "m", "--clips", clips, "--out", "v",
              "--steps", "-3"])
