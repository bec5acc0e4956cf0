"""``meta-<algorithm>``: meta-learning the initialization of a new voice.

One method per ``metatts.meta`` algorithm (``meta-maml``, ``meta-fomaml``,
``meta-metasgd``, ``meta-reptile``, ``meta-imaml``). Every training task is
a speaker treated as a new voice: its clips use the new-voice row of the
speaker table (``slot_tasks``), whose value, adapted with the rest of the
filter's parameters on the support clips, is meta-learned as the
initialization of a new speaker's embedding, in the spirit of CAVIA's context
parameters; the other rows stay unused. Training may start from another
method's export (``config.train.init_from``). Meta-SGD also exports its
learned inner learning rates, which the voice path then uses.

References:
  Finn et al. (2017), Model-agnostic meta-learning, ICML, arXiv:1703.03400.
  Nichol et al. (2018), On first-order meta-learning algorithms (Reptile),
    arXiv:1803.02999.
  Li et al. (2017), Meta-SGD, arXiv:1707.09835.
  Rajeswaran et al. (2019), Meta-learning with implicit gradients, NeurIPS.
  Zintgraf et al. (2019), Fast context adaptation via meta-learning (CAVIA),
    ICML, arXiv:1810.03642.
  Huang et al. (2022), Meta-TTS, IEEE/ACM TASLP, arXiv:2111.04040.
"""

from metatts.methods import base

ALGORITHMS = ("maml", "fomaml", "metasgd", "reptile", "imaml")


class MetaLearned(base.Method):
  """``meta-<algorithm>`` for one ``metatts.meta`` learner."""

  slot_tasks = True
  meta_learned = True
  new_voice = "slot"
  uses_init_from = True

  def __init__(self, algorithm: str):
    self.name = f"meta-{algorithm}"
    self.learner_name = algorithm


METHODS = tuple(MetaLearned(a) for a in ALGORITHMS)
