"""End-to-end tests of the absl launcher experiments/main.py (subprocesses)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "experiments/configs/sinusoid.py"


def launch(*args, timeout=600):
  return subprocess.run(
      [sys.executable, "experiments/main.py", *args], cwd=ROOT,
      capture_output=True, text=True, timeout=timeout)


def test_smoke_run_finishes_and_writes_outputs(tmp_path):
  workdir = str(tmp_path / "run")
  proc = launch(f"--config={CONFIG}:maml,smoke", f"--workdir={workdir}",
                "--config.num_steps=10", "--config.progress=False")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"Results: {os.path.join(workdir, 'results.json')}" in proc.stdout
  with open(os.path.join(workdir, "results.json")) as f:
    result = json.load(f)
  assert result["num_steps"] == 10 and result["resumed_from"] is None
  assert set(result["mse"]) == {"0", "1", "10"}
  for name in ("metrics.json", "adaptation.png"):
    assert os.path.exists(os.path.join(workdir, name))
  assert any(f.startswith("events.out") for f in os.listdir(workdir))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["10"]


def test_unknown_config_key_is_a_clear_error(tmp_path):
  proc = launch(f"--config={CONFIG}:maml,smoke", f"--workdir={tmp_path}",
                "--config.num_step=3")
  assert proc.returncode == 2
  assert "--config.num_step names a key that the config does not have" in (
      proc.stderr)
  assert "num_steps" in proc.stderr  # the valid keys / suggestion
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_bad_config_argument_is_a_clear_error(tmp_path):
  proc = launch(f"--config={CONFIG}:maml,huge", f"--workdir={tmp_path}")
  assert proc.returncode != 0
  assert "METHOD[,SIZE]" in proc.stderr and "maml,smoke" in proc.stderr
