"""The quickstart ``:smoke`` config redirected into a test's temporary folder.

Shared by the TTS experiment tests (pytest puts tests/ on sys.path).
"""

import os
import sys

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
