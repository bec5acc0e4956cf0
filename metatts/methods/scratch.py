"""``scratch``: a model that never trained, adapted at test time only.

The lower bound of every comparison: the random initialization of the
acoustic model (the same one every other method starts from), exported so
that the evaluation adapts it through ``metatts.voice`` like any other
method.
"""

from metatts.methods import base


class Scratch(base.Method):
  name = "scratch"
  learner_name = None  # never trained
  new_voice = "random"


METHOD = Scratch()
