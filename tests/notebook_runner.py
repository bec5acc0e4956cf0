"""Executes a notebook of ``notebooks/`` headless, as Jupyter would.

Shared by the notebook tests (pytest puts tests/ on sys.path). The kernel is
ipykernel's ``python3`` started by nbclient in the given working directory,
with this process's environment (so it uses the session's XLA cache and
flags) plus ``env``; a cell that raises fails the run with its traceback.
"""

import os
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Executed:
  """An executed notebook: its node, all text output and the seconds taken."""

  def __init__(self, nb, seconds):
    self.nb = nb
    self.seconds = seconds

  def outputs(self, output_type=None):
    return [o for cell in self.nb.cells if cell.cell_type == "code"
            for o in cell.get("outputs", [])
            if output_type is None or o.output_type == output_type]

  @property
  def text(self) -> str:
    """Every stream and text/plain result, in order."""
    parts = []
    for o in self.outputs():
      if o.output_type == "stream":
        parts.append(o.text)
      elif "data" in o and "text/plain" in o.data:
        parts.append(o.data["text/plain"] + "\n")
    return "".join(parts)

  def count(self, mime: str) -> int:
    return sum(1 for o in self.outputs() if mime in o.get("data", {}))


def run_notebook(name: str, cwd: str, env=None, umask=None,
                 timeout: int = 900) -> Executed:
  """Runs ``notebooks/<name>`` in ``cwd``; ``umask`` is the kernel's."""
  import nbclient  # pylint: disable=g-import-not-at-top
  import nbformat  # pylint: disable=g-import-not-at-top
  nb = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=timeout, kernel_name="python3", allow_errors=False,
      resources={"metadata": {"path": str(cwd)}})
  old = os.umask(umask) if umask is not None else None
  tick = time.perf_counter()
  try:
    client.execute(env=dict(os.environ, **(env or {})))
  finally:
    if old is not None:
      os.umask(old)
  return Executed(nb, time.perf_counter() - tick)


def modes(root: str):
  """``{relative path: permission bits}`` of everything under ``root``."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
      path = os.path.join(dirpath, name)
      out[os.path.relpath(path, root)] = os.stat(path).st_mode & 0o777
  return out
