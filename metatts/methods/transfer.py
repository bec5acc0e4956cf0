"""``transfer``: multi-speaker pre-training, then fine-tuning a new voice.

Pre-training (``metatts.meta.pretrain``) learns one speaker-table row per
training speaker; before export the new-voice row is set to the mean of the
trained rows (the "average voice", the usual starting point for fine-tuning
a new speaker), from which a new voice is adapted with the test protocol.

References:
  Arik et al. (2018), Neural voice cloning with a few samples, NeurIPS,
    arXiv:1802.06006 (speaker adaptation of a multi-speaker model).
"""

from metatts.methods import base


class Transfer(base.Method):
  name = "transfer"
  learner_name = "pretrain"
  new_voice = "mean_row"


METHOD = Transfer()
