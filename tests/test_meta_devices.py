"""Task-parallel meta-training: 4 devices equal 1 device; 2 processes equal 1.

Each check runs in fresh processes because the device count of the CPU
platform is fixed when JAX starts.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

SCRIPTS = pathlib.Path(__file__).parent / "scripts"
ROOT = SCRIPTS.parent.parent


def _env(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(  # keeps the session's flags (conftest.py)
      [f for f in env.get("XLA_FLAGS", "").split()
       if not f.startswith("--xla_force_host_platform_device_count")]
      + [f"--xla_force_host_platform_device_count={devices}"])
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(SCRIPTS), env.get("PYTHONPATH", "")])
  env["JAX_PLATFORMS"] = "cpu"
  return env


def test_four_devices_equal_one_device():
  out = subprocess.run([sys.executable, str(SCRIPTS / "meta_devices.py")],
                       env=_env(4), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  results = json.loads(out.stdout.strip().splitlines()[-1])
  for name in ("maml", "reptile", "imaml", "metasgd"):
    assert results[name]["max_abs_diff"] <= 1e-5 * max(1.0, results[name]["scale"]), (name, results)
  assert "divisible by 4" in results["indivisible_error"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_on_localhost_equal_one_process(tmp_path):
  """jax.distributed.initialize with CPU (gloo) collectives, 2 x 2 devices."""
  port = _free_port()
  script = str(SCRIPTS / "meta_multihost.py")
  procs = [subprocess.Popen([sys.executable, script, str(pid), str(port),
                             str(tmp_path / f"p{pid}.json")],
                            env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for pid in (0, 1)]
  single = subprocess.run([sys.executable, script, "single", str(tmp_path / "single.json")],
                          env=_env(4), capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  for p in procs:
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
  multi = json.loads((tmp_path / "p0.json").read_text())
  ref = json.loads((tmp_path / "single.json").read_text())
  for k in ref:
    np.testing.assert_allclose(np.array(multi[k]), np.array(ref[k]), atol=1e-5, err_msg=k)
