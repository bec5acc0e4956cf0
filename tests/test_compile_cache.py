"""metatts.compile_cache: the persistent XLA cache of the entry points.

Each case runs in a fresh interpreter (the cache folder is read when jax
compiles, and this test session configures its own: tests/conftest.py).
"""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = r"""
import json, sys
from metatts import compile_cache
import jax, jax.numpy as jnp
path = compile_cache.enable()
def f(x):
  for i in range(40):
    x = jnp.tanh(x @ x.T + i)
  return x
jax.jit(f)(jnp.ones((64, 64))).block_until_ready()
print(json.dumps({"path": path, "config": jax.config.jax_compilation_cache_dir}))
"""


def _run(tmp_path, **env_extra):
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_COMPILATION_CACHE_DIR", "METATTS_COMPILE_CACHE")}
  env.update(HOME=str(tmp_path), JAX_PLATFORMS="cpu", **env_extra)
  out = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_default_folder_is_created_and_filled(tmp_path):
  got, _ = _run(tmp_path)
  folder = os.path.join(str(tmp_path), ".cache", "metatts", "xla")
  assert got["path"] == got["config"] == folder
  assert any(name.startswith("jit_f") for name in os.listdir(folder)), (
      os.listdir(folder))


def test_environment_picks_the_folder_or_turns_it_off(tmp_path):
  mine = str(tmp_path / "mine")
  got, _ = _run(tmp_path, METATTS_COMPILE_CACHE=mine)
  assert got["path"] == mine and os.listdir(mine)
  got, _ = _run(tmp_path, METATTS_COMPILE_CACHE="off")
  assert got == {"path": None, "config": None}
  assert not os.path.exists(os.path.join(str(tmp_path), ".cache"))


def test_a_cache_jax_already_has_is_kept(tmp_path):
  theirs = str(tmp_path / "theirs")
  got, _ = _run(tmp_path, JAX_COMPILATION_CACHE_DIR=theirs)
  assert got["path"] == got["config"] == theirs
  assert not os.path.exists(os.path.join(str(tmp_path), ".cache"))


def test_unusable_folder_warns_once_and_compiles_anyway(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  got, err = _run(tmp_path, METATTS_COMPILE_CACHE=str(blocker / "xla"))
  assert got == {"path": None, "config": None}
  assert "compilation cache off: cannot create" in err
  assert "METATTS_COMPILE_CACHE=off" in err


_SMALL = r"""
import json, os, sys
from metatts import compile_cache
import jax, jax.numpy as jnp
path = compile_cache.enable()
jax.jit(lambda x: x * 2.0 + 1.0)(jnp.ones((3,))).block_until_ready()
print(json.dumps({"names": sorted(os.listdir(path))}))
"""


def test_small_programs_are_cached_too(tmp_path):
  """A program that compiles in milliseconds is written (jax's default
  threshold of 1 s skipped them, and a warm `say` recompiled 12 of them)."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("JAX_COMPILATION_CACHE_DIR", "METATTS_COMPILE_CACHE",
                      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
  env.update(HOME=str(tmp_path), JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _SMALL], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  names = json.loads(out.stdout.strip().splitlines()[-1])["names"]
  assert any(n.startswith("jit__lambda") for n in names), names
