"""Speaker-verification equal error rate (EER).

Meta-TTS (Huang et al., 2022) judges adapted voices with a speaker-verification
system: a synthesized clip of target speaker ``s`` is scored against the
enrollment embedding of ``s`` (a *target* trial) and against the enrollment
embeddings of the other held-out speakers (*non-target* trials). The EER is the
operating point where the false-acceptance rate (non-target trials accepted)
equals the false-rejection rate (target trials rejected). Lower EER means the
synthesized voice is harder to tell from the real speaker.

References:
  Huang, Lin, Liu, Chen, Lee. Meta-TTS: Meta-Learning for Few-Shot Speaker
  Adaptive Text-to-Speech. IEEE/ACM TASLP 2022.
  Wan et al. Generalized End-to-End Loss for Speaker Verification. ICASSP 2018.
"""

from __future__ import annotations

from typing import Dict, Mapping, NamedTuple, Optional, Tuple

import numpy as np

from metatts.evaluation.secs import cosine


class EERResult(NamedTuple):
  eer: float  # in [0, 1]
  threshold: float  # score threshold at the crossing (accept if >= threshold)


def _as_scores(x, name: str) -> np.ndarray:
  s = np.asarray(x, dtype=np.float64).reshape(-1)
  if s.size == 0:
    raise ValueError(f"{name} is empty; the EER needs at least one target and "
                     "one non-target trial (and >= 2 speakers).")
  if not np.all(np.isfinite(s)):
    raise ValueError(f"{name} contains NaN or Inf scores; check the embeddings.")
  return s


def error_rates(target_scores, nontarget_scores, thresholds
                ) -> Tuple[np.ndarray, np.ndarray]:
  """False-acceptance and false-rejection rates at given thresholds.

  A trial is accepted when ``score >= threshold``.

  Args:
    target_scores: ``[T]`` scores of same-speaker trials.
    nontarget_scores: ``[N]`` scores of different-speaker trials.
    thresholds: ``[H]`` thresholds.

  Returns:
    ``(far [H], frr [H])``.
  """
  tar = np.sort(_as_scores(target_scores, "target_scores"))
  non = np.sort(_as_scores(nontarget_scores, "nontarget_scores"))
  th = np.asarray(thresholds, dtype=np.float64)
  frr = np.searchsorted(tar, th, side="left") / tar.size  # tar < th
  far = 1.0 - np.searchsorted(non, th, side="left") / non.size  # non >= th
  return far, frr


def equal_error_rate(target_scores, nontarget_scores) -> EERResult:
  """EER from trial scores, interpolated at the FAR = FRR crossing.

  FAR and FRR are evaluated at every distinct score (plus +inf), which traces
  the whole empirical ROC. Between the last threshold with FRR <= FAR and the
  first with FRR >= FAR, the ROC is linearly interpolated and the point on the
  segment where FAR = FRR is returned.

  Args:
    target_scores: ``[T]`` same-speaker trial scores (higher = more similar).
    nontarget_scores: ``[N]`` different-speaker trial scores.

  Returns:
    ``EERResult(eer, threshold)``; ``eer`` is a fraction in [0, 1].
  """
  tar = _as_scores(target_scores, "target_scores")
  non = _as_scores(nontarget_scores, "nontarget_scores")
  th = np.concatenate([np.unique(np.concatenate([tar, non])), [np.inf]])
  far, frr = error_rates(tar, non, th)
  d = frr - far  # increases from <= 0 (th = min score) to 1 (th = inf).
  i = int(np.argmax(d >= 0))  # first index with frr >= far.
  if i == 0 or d[i] == 0:
    thr = th[i] if np.isfinite(th[i]) else float(np.max(th[:-1]))
    return EERResult(float(0.5 * (far[i] + frr[i])), float(thr))
  t = d[i - 1] / (d[i - 1] - d[i])  # in (0, 1]
  eer = far[i - 1] + t * (far[i] - far[i - 1])
  hi = th[i] if np.isfinite(th[i]) else th[i - 1]
  thr = th[i - 1] + t * (hi - th[i - 1])
  return EERResult(float(eer), float(thr))


def pooled_eer(clip_rows) -> Optional[float]:
  """EER over the trials of judged clip rows: each row's ``secs`` is a target
  score and its ``nontarget`` list the non-target ones; ``None`` without
  both."""
  tar = [r["secs"] for r in clip_rows if r.get("secs") is not None]
  non = [s for r in clip_rows for s in r.get("nontarget", [])]
  return equal_error_rate(tar, non).eer if tar and non else None


def build_trials(probes: Mapping[str, np.ndarray],
                 enrollments: Mapping[str, np.ndarray]
                 ) -> Tuple[np.ndarray, np.ndarray]:
  """Verification trials from embeddings, as Meta-TTS builds them.

  Every probe (a synthesized or real clip of speaker ``s``) is scored by
  cosine similarity against the enrollment embedding of every speaker:
  against ``s`` it is a target trial, against any other speaker a non-target
  trial.

  Args:
    probes: ``{speaker: [U_s, D]}`` probe utterance embeddings.
    enrollments: ``{speaker: [D]}`` enrollment (speaker) embeddings built from
      real clips; must contain every probe speaker and >= 2 speakers.

  Returns:
    ``(target_scores [sum U_s], nontarget_scores [sum U_s * (S - 1)])``.
  """
  if len(enrollments) < 2:
    raise ValueError(f"EER needs >= 2 enrolled speakers for non-target trials, "
                     f"got {sorted(enrollments)}; evaluate on more held-out "
                     "speakers.")
  missing = sorted(set(probes) - set(enrollments))
  if missing:
    raise ValueError(f"probe speakers {missing} have no enrollment embedding; "
                     "add real reference clips of these speakers.")
  tar, non = [], []
  names = sorted(enrollments)
  enroll = np.stack([np.asarray(enrollments[n], np.float64) for n in names])
  for spk in sorted(probes):
    p = np.asarray(probes[spk], dtype=np.float64)
    if p.ndim == 1:
      p = p[None, :]
    scores = cosine(p[:, None, :], enroll[None, :, :])  # [U, S]
    j = names.index(spk)
    tar.append(scores[:, j])
    non.append(np.delete(scores, j, axis=1).reshape(-1))
  return np.concatenate(tar), np.concatenate(non)


def eer_from_embeddings(probes: Mapping[str, np.ndarray],
                        enrollments: Mapping[str, np.ndarray]) -> EERResult:
  """``equal_error_rate(*build_trials(probes, enrollments))``."""
  return equal_error_rate(*build_trials(probes, enrollments))


def leave_one_out_trials(real: Dict[str, np.ndarray]
                         ) -> Tuple[np.ndarray, np.ndarray]:
  """Real-vs-real trials without scoring a clip against itself.

  Target trials score each real clip against its speaker's enrollment built
  from the *other* clips; non-target trials against other speakers' full
  enrollments.

  Args:
    real: ``{speaker: [U_s >= 2, D]}`` real utterance embeddings.

  Returns:
    ``(target_scores, nontarget_scores)``.
  """
  from metatts.evaluation.secs import speaker_embedding  # pylint: disable=g-import-not-at-top
  if len(real) < 2:
    raise ValueError("real-vs-real EER needs >= 2 speakers.")
  full = {s: speaker_embedding(e) for s, e in real.items()}
  tar, non = [], []
  for s, e in sorted(real.items()):
    e = np.asarray(e, dtype=np.float64)
    if e.shape[0] < 2:
      raise ValueError(f"speaker {s!r} has {e.shape[0]} real clip(s); the "
                       "real-vs-real EER needs >= 2 per speaker.")
    for u in range(e.shape[0]):
      tar.append(float(cosine(e[u], speaker_embedding(np.delete(e, u, 0)))))
      for o, eo in full.items():
        if o != s:
          non.append(float(cosine(e[u], eo)))
  return np.asarray(tar), np.asarray(non)
