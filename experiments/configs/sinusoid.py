r"""Few-shot sinusoid regression (Finn et al. 2017, Sec. 5.1).

The argument is ``METHOD[,SIZE]``: METHOD is one of maml, fomaml, reptile,
metasgd, imaml, pretrain; SIZE is ``smoke`` (seconds, for tests), ``quick``
(the default) or ``paper`` (Finn et al.'s 70 000 meta-steps).

Quickstart (what ``make quickstart`` runs): 10 000 meta-steps of MAML, then
the MSE on 600 held-out tasks after 0/1/10 steps. Measured: 3 minutes wall
(81 s in the training loop) on a 2-core CPU shared with other jobs:

  python experiments/main.py --config experiments/configs/sinusoid.py:maml \
      --workdir runs/quickstart

Results table in docs/results/sinusoid.md, one run per method (1.5-4 minutes
each on that machine):

  for m in maml fomaml reptile metasgd imaml pretrain; do
    python experiments/main.py --config experiments/configs/sinusoid.py:$m \
        --workdir runs/sinusoid/$m
  done

Smoke test (a few seconds): ``--config experiments/configs/sinusoid.py:maml,smoke``.
Any key can be overridden, e.g. ``--config.num_steps=2000``; unknown keys
are an error (the config is locked).
"""

import ml_collections

METHODS = ("maml", "fomaml", "reptile", "metasgd", "imaml", "pretrain")

# Inner steps used during meta-training, per method. MAML/FOMAML/Meta-SGD use
# one step as in Finn et al. (2017) and Li et al. (2017); Reptile and iMAML
# need several steps to move away from the initialization (Nichol et al. 2018;
# Rajeswaran et al. 2019). Evaluation always reports 0, 1 and 10 steps.
TRAIN_INNER_STEPS = {"maml": 1, "fomaml": 1, "metasgd": 1, "reptile": 5,
                     "imaml": 5, "pretrain": 1}

# size -> (num_steps, meta_batch_size, num_eval_tasks, log/eval/ckpt cadence);
# the periodic evaluation uses the same held-out tasks as the final one.
SIZES = {
    "smoke": dict(num_steps=20, meta_batch_size=5, num_eval_tasks=50,
                  log_every=5, eval_every=10,
                  checkpoint_every=10),
    "quick": dict(num_steps=10_000, meta_batch_size=25, num_eval_tasks=600,
                  log_every=100, eval_every=1000,
                  checkpoint_every=1000),
    "paper": dict(num_steps=70_000, meta_batch_size=25, num_eval_tasks=600,
                  log_every=100, eval_every=5000,
                  checkpoint_every=5000),
}


def get_config(arg: str = "maml") -> ml_collections.ConfigDict:
  """Returns the sinusoid config for ``arg = "METHOD[,SIZE]"``.

  Raises:
    ValueError: for an unknown method or size.
  """
  parts = [p.strip() for p in (arg or "maml").split(",") if p.strip()]
  method = parts[0] if parts else "maml"
  size = parts[1] if len(parts) > 1 else "quick"
  if method not in METHODS or size not in SIZES or len(parts) > 2:
    raise ValueError(
        f"sinusoid config argument {arg!r} must be METHOD[,SIZE] with METHOD "
        f"in {METHODS} and SIZE in {tuple(SIZES)}, e.g. "
        "experiments/configs/sinusoid.py:maml,smoke")

  c = ml_collections.ConfigDict()
  c.experiment = "sinusoid"
  c.method = method
  c.size = size
  c.seed = 0
  c.eval_seed = 0  # held-out tasks use a key disjoint from training keys

  # Task distribution and model (Finn et al. 2017, Sec. 5.1).
  c.num_support = 10  # K
  c.num_query = 10
  c.num_eval_query = 100  # query points per held-out task (MSE estimate)
  c.layer_sizes = (1, 40, 40, 1)

  # Meta-learning.
  c.inner_lr = 0.01
  c.num_inner_steps = TRAIN_INNER_STEPS[method]
  c.outer_lr = 1e-3  # Adam, as in Finn et al.
  c.imaml_lam = 1.0
  c.imaml_cg_steps = 5

  # Loop.
  c.max_to_keep = 3
  c.max_skipped = 100
  c.progress = True
  for key, value in SIZES[size].items():
    c[key] = value
  return c
