"""Training methods, one file each, chosen from one registry.

``METHODS`` maps a method name (the key of ``config.methods`` and the folder
``WORKDIR/<name>``) to its :class:`metatts.methods.base.Method`:

============== ======================== =====================================
name           file                     a new voice starts from
============== ======================== =====================================
transfer       ``transfer.py``          the mean of the trained speaker rows
multitask      ``multitask.py``         the mean of the trained speaker rows
zeroshot       ``zeroshot.py``          the speaker encoder's vector of the
                                        clips
meta-<alg>     ``meta_learning.py``     the meta-learned new-voice row
meta-<alg>-    ``meta_encoder.py``      the speaker encoder's vector of the
encoder                                 clips (zeroshot's model,
                                        meta-learned through it)
scratch        ``scratch.py``           the random initialization
============== ======================== =====================================

Every voice is then adapted and synthesized by ``metatts.voice``. Adding a
method is adding one file with a ``Method`` subclass and its name here.
"""

from __future__ import annotations

from typing import Dict

from metatts.methods import meta_encoder
from metatts.methods import meta_learning
from metatts.methods import multitask
from metatts.methods import scratch
from metatts.methods import transfer
from metatts.methods import zeroshot
from metatts.methods.base import Context
from metatts.methods.base import Method

METHODS: Dict[str, Method] = {
    m.name: m for m in (transfer.METHOD, multitask.METHOD, zeroshot.METHOD,
                        *meta_learning.METHODS, *meta_encoder.METHODS,
                        scratch.METHOD)}


def get(name: str) -> Method:
  """The method called ``name``; an unknown name lists the known ones."""
  if name not in METHODS:
    raise ValueError(f"Unknown method {name!r}; known methods are "
                     f"{sorted(METHODS)}.")
  return METHODS[name]


def trained() -> Dict[str, Method]:
  """The methods that train (all but ``scratch``)."""
  return {k: m for k, m in METHODS.items() if m.trains}


__all__ = ["Context", "METHODS", "Method", "get", "trained"]
