"""The one test-time adaptation protocol, shared by every method.

Every method (a meta-learned initialization, the transfer-learning and
multi-task baselines, a model trained from scratch, ...) is judged the same
way: for each held-out speaker the *same* support clips (the first ``K`` of
a fixed, seeded draw of ``max(shots)`` clips), the *same* inner optimizer and
learning rate, the *same* parameter filter and the same numbers of steps
(``0, 5, 20, 100`` by default). The adapted model then synthesizes the same
held-out evaluation sentences (until the stop token, but not before the
library API's minimum length, ``metatts.models.tacotron
.min_synthesis_frames``, so a judged clip is what a user would hear), whose
real recordings are written beside them as references, into the samples
layout of :mod:`metatts.evaluation.layout`::

  WORKDIR/samples/manifest.json
  WORKDIR/samples/reference/<speaker>/<utt_id>.wav + .txt
  WORKDIR/samples/<method>/shots_<K>/steps_<S>/<speaker>/<utt_id>.wav + .txt
                                                  + <utt_id>.align.npy
  WORKDIR/samples/protocol.json      what was done, per method (clips, steps,
                                     optimizer, filter, lr), for audit

A new voice uses one reserved row of the speaker table (``speaker_slot``);
see ``metatts.experiments.tts`` for how each method initializes that row.

Adaptation runs :func:`metatts.meta.adapt` (the inner loop the meta-learners
differentiate through) in chunks of ``CHUNK`` steps: with the stateless SGD
inner optimizer, chained chunks equal one uninterrupted run, so the snapshots
at 5, 20 and 100 steps cost 100 steps in total and one compilation per
support-set size. With a stateful optimizer (Adam) every step count is run
from the start in one call, so its moments never restart mid-run (the same
run as ``metatts.api``'s ``adapt``).

References:
  Finn et al. (2017), Model-agnostic meta-learning, ICML, arXiv:1703.03400.
  Arik et al. (2018), Neural voice cloning with a few samples, NeurIPS,
    arXiv:1802.06006 (speaker adaptation vs. speaker encoding).
  Huang et al. (2022), Meta-TTS: Meta-learning for few-shot speaker adaptive
    text-to-speech, IEEE/ACM TASLP, arXiv:2111.04040 (the protocol of
    0/5/20/100 adaptation steps judged by speaker verification).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from metatts import functional
from metatts import meta
from metatts.audio import features as afeat
from metatts.audio import io as aio
from metatts.models import tacotron
from metatts.types import TTSBatch

CHUNK = 5  # inner steps per compiled adaptation call
OPTIMIZERS = ("sgd", "adam")


class Protocol(NamedTuple):
  """The adaptation protocol (identical for every method of a run)."""

  filter: str  # functional.filter_for name, e.g. "speaker+decoder"
  optimizer: str  # "sgd" or "adam"
  lr: float
  steps: tuple  # adaptation step counts, e.g. (0, 5, 20, 100)
  shots: tuple  # support-set sizes K, e.g. (1, 5)
  num_eval: int  # evaluation sentences per speaker
  seed: int  # clip selection seed
  speaker_slot: int  # embedding row of a new voice

  def to_json(self) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v)
            for k, v in self._asdict().items()}


def protocol_from_config(c, speaker_slot: int) -> Protocol:
  """Builds the protocol from ``config.adapt``."""
  if c.optimizer not in OPTIMIZERS:
    raise ValueError(f"config.adapt.optimizer={c.optimizer!r}; use one of "
                     f"{list(OPTIMIZERS)}.")
  steps = tuple(sorted({int(s) for s in c.steps}))
  shots = tuple(sorted({int(k) for k in c.shots}))
  if not steps or steps[0] < 0 or not shots or shots[0] < 1:
    raise ValueError(f"config.adapt.steps={c.steps} must be >= 0 and "
                     f"config.adapt.shots={c.shots} >= 1.")
  functional.filter_for(c.filter)  # validates the name
  return Protocol(c.filter, c.optimizer, float(c.lr), steps, shots,
                  int(c.num_eval), int(c.seed), int(speaker_slot))


def inner_optimizer(protocol: Protocol) -> optax.GradientTransformation:
  """The inner optimizer of the protocol."""
  if protocol.optimizer == "sgd":
    return optax.sgd(protocol.lr)
  return optax.adam(protocol.lr)


class SpeakerClips(NamedTuple):
  """The clips of one held-out speaker used by the protocol."""

  speaker: str
  split: str
  support: list  # Examples, max(shots) of them (first K used for K shots)
  evaluation: list  # Examples whose texts never appear in support


def select_clips(heldout: Mapping[str, Mapping[str, Sequence[Any]]],
                 protocol: Protocol,
                 max_speakers: Optional[int] = None,
                 fits=None) -> List[SpeakerClips]:
  """Draws each held-out speaker's support and evaluation clips.

  Args:
    heldout: ``{split: {speaker: [Example, ...]}}``.
    protocol: the protocol (its ``seed``, ``shots`` and ``num_eval``).
    max_speakers: keep at most this many speakers per split (sorted ids,
      evenly spaced).
    fits: optional predicate on an Example (e.g. within the length limit).

  Returns:
    One ``SpeakerClips`` per usable speaker, sorted by split then speaker.
    Speakers without enough clips of distinct texts are left out.
  """
  kmax = max(protocol.shots)
  out = []
  for split in sorted(heldout):
    speakers = sorted(heldout[split])
    if max_speakers and len(speakers) > max_speakers:
      idx = np.linspace(0, len(speakers) - 1, max_speakers).round()
      speakers = [speakers[int(i)] for i in idx]
    for spk in speakers:
      clips = [e for e in heldout[split][spk] if fits is None or fits(e)]
      by_text = {}
      for e in sorted(clips, key=lambda e: e.utt_id):
        by_text.setdefault(e.text, e)
      texts = sorted(by_text)
      if len(texts) < kmax + protocol.num_eval:
        continue
      rng = np.random.default_rng(
          [protocol.seed, int.from_bytes(spk.encode()[:8], "little")])
      order = rng.permutation(len(texts))
      chosen = [by_text[texts[int(i)]] for i in order]
      out.append(SpeakerClips(spk, split, chosen[:kmax],
                              chosen[kmax:kmax + protocol.num_eval]))
  return out


def pad_batch(examples: Sequence[Any], max_tokens: int, max_frames: int,
              speaker_id: int) -> TTSBatch:
  """A ``TTSBatch`` of fixed shape ``[B, max_tokens] / [B, max_frames, M]``.

  Fixed shapes mean one compilation per batch size for every method.
  """
  b = len(examples)
  m = examples[0].mel.shape[1]
  tokens = np.zeros((b, max_tokens), np.int32)
  mels = np.zeros((b, max_frames, m), np.float32)
  tl = np.zeros((b,), np.int32)
  ml = np.zeros((b,), np.int32)
  for i, e in enumerate(examples):
    nt, nf = len(e.tokens), e.mel.shape[0]
    if nt > max_tokens or nf > max_frames:
      raise ValueError(
          f"Clip {e.audio_path} has {nt} tokens / {nf} frames, over the "
          f"adaptation limit {max_tokens} / {max_frames}; raise "
          "config.data.max_tokens / max_frames.")
    tokens[i, :nt] = e.tokens
    mels[i, :nf] = e.mel
    tl[i], ml[i] = nt, nf
  return TTSBatch(tokens, tl, mels, ml, np.full((b,), speaker_id, np.int32),
                  None)


class Adapter:
  """Compiled adaptation and synthesis for one model architecture.

  One instance serves every method with the same ``graphdef`` (so the
  compiled functions are shared); parameters are arguments.
  """

  def __init__(self, graphdef, rest, protocol: Protocol, mel_config,
               max_tokens: int, max_frames: int, synth_frames: int,
               reduction_factor: int = 1, griffin_lim_iters: int = 32):
    self.graphdef, self.rest, self.protocol = graphdef, rest, protocol
    self.mel_config = mel_config
    self.max_tokens, self.max_frames = max_tokens, max_frames
    self.synth_frames = synth_frames
    self.reduction_factor = int(reduction_factor)
    self.loss_fn = functional.make_loss_fn(graphdef, rest)
    self.filter = functional.filter_for(protocol.filter)
    self.optimizer = inner_optimizer(protocol)
    self.gl_iters = griffin_lim_iters

    # Learned rates (Meta-SGD) are the step sizes themselves, exactly as in
    # meta-training (metatts.meta.metasgd uses sgd(1.0) scaled by the rates);
    # scaling them by the protocol's lr again would shrink every step.
    unit_sgd = optax.sgd(1.0)

    def chunk(params, support, lrs, num_steps):
      opt = self.optimizer if lrs is None else unit_sgd
      return meta.adapt(params, support, self.loss_fn,
                        inner_optimizer=opt, num_steps=num_steps,
                        filter=self.filter, lrs=lrs)

    self._chunk = jax.jit(chunk, static_argnums=(3,))

    def infer(params, tokens, token_lengths, speaker_ids, min_frames=None):
      model = functional.merge(graphdef, params, rest)
      return model.infer(tokens, token_lengths, speaker_ids,
                         max_frames=synth_frames, min_frames=min_frames)

    self._infer = jax.jit(infer)

    def vocode(log_mel, key):
      return afeat.mel_to_audio(log_mel, key, mel_config,
                                n_iter=griffin_lim_iters)

    self._vocode = jax.jit(vocode)

  def curve(self, params, support: TTSBatch, lrs=None) -> Dict[int, Any]:
    """Adapted parameters after each step count of the protocol.

    Returns:
      ``{S: params}`` for every ``S`` in ``protocol.steps`` and the support
      losses in ``{S: loss}`` as a second dict.
    """
    out, losses = {}, {}
    steps = self.protocol.steps
    if self.protocol.optimizer == "sgd":
      current, done = params, 0
      for s in steps:
        while done < s:
          n = min(CHUNK, s - done) if (s - done) % CHUNK else CHUNK
          current, ls = self._chunk(current, support, lrs, n)
          losses[done + n] = float(ls[-1])
          done += n
        out[s] = current
    else:
      # A stateful optimizer (Adam) must not restart its moments mid-run:
      # each step count is one uninterrupted call from the start (one
      # compilation per step count), exactly what ``metatts.api`` runs.
      for s in steps:
        current = params
        if s:
          current, ls = self._chunk(params, support, lrs, s)
          losses[s] = float(ls[-1])
        out[s] = current
    return out, losses

  def min_frames(self, token_lengths) -> np.ndarray:
    """int32 [B]: frames before which a predicted stop is ignored.

    The rule of the library API (``metatts.models.tacotron
    .min_synthesis_frames``), so an evaluated clip is as long as the one a
    user would get, and a model that predicts "stop" at once still speaks.
    """
    return tacotron.min_synthesis_frames(
        token_lengths, self.mel_config.sample_rate,
        self.mel_config.hop_length, self.synth_frames)

  def synthesize(self, params, examples: Sequence[Any], speaker_id: int):
    """Waveforms (16-bit-safe float32), alignments and mel lengths.

    Inference stops at the stop token, but not before ``min_frames`` (the
    API's rule) and not past ``synth_frames``.
    """
    batch = pad_batch(examples, self.max_tokens, self.max_frames, speaker_id)
    out = self._infer(params, jnp.asarray(batch.tokens),
                      jnp.asarray(batch.token_lengths),
                      jnp.asarray(batch.speaker_ids),
                      jnp.asarray(self.min_frames(batch.token_lengths)))
    mel = np.asarray(out.mel)
    lengths = np.maximum(np.asarray(out.lengths), 2)
    floor = float(np.log(self.mel_config.log_floor))
    frames = np.arange(mel.shape[1])[None, :, None]
    mel = np.where(frames < lengths[:, None, None], mel, floor)
    audio = np.asarray(self._vocode(jnp.asarray(mel, jnp.float32),
                                    jax.random.PRNGKey(0)))
    hop = self.mel_config.hop_length
    wavs = []
    for i in range(len(examples)):
      w = np.nan_to_num(audio[i, :(int(lengths[i]) - 1) * hop])
      peak = float(np.max(np.abs(w))) if w.size else 0.0
      if peak > 0.99:
        w = w * (0.99 / peak)
      wavs.append(w.astype(np.float32))
    return wavs, np.asarray(out.alignment), lengths


def _write_clip(folder: str, utt: str, wav: np.ndarray, text: str,
                sample_rate: int, align: Optional[np.ndarray] = None) -> None:
  os.makedirs(folder, exist_ok=True)
  aio.save_wav(os.path.join(folder, utt + ".wav"), wav, sample_rate)
  with open(os.path.join(folder, utt + ".txt"), "w", encoding="utf-8") as f:
    f.write(text + "\n")
  if align is not None:
    np.save(os.path.join(folder, utt + ".align.npy"), align)


def write_references(samples_dir: str, speakers: Sequence[SpeakerClips],
                     feature_config) -> None:
  """Writes the real evaluation clips (never used for adaptation)."""
  for sc in speakers:
    folder = os.path.join(samples_dir, "reference", sc.speaker)
    for e in sc.evaluation:
      wav = aio.load_clip(
          e.audio_path, feature_config.sample_rate,
          trim=feature_config.trim_top_db is not None,
          top_db=feature_config.trim_top_db or 40.0,
          normalize=feature_config.target_dbfs is not None,
          target_dbfs=feature_config.target_dbfs or -20.0,
          min_seconds=0.0, max_seconds=float("inf"))
      _write_clip(folder, e.utt_id, wav, e.text, feature_config.sample_rate)
  manifest = {"speakers": {sc.speaker: sc.split for sc in speakers},
              "sample_rate": int(feature_config.sample_rate),
              "description": "real held-out clips (reference) and adapted "
                             "synthesis, Griffin-Lim vocoded"}
  os.makedirs(samples_dir, exist_ok=True)
  with open(os.path.join(samples_dir, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1, sort_keys=True)


def run_method(adapter: Adapter, method: str, params, speakers:
               Sequence[SpeakerClips], samples_dir: str, sample_rate: int,
               lrs=None, progress: bool = True) -> dict:
  """Adapts one method to every held-out speaker and writes its samples.

  Args:
    adapter: the compiled protocol.
    method: method key (folder name), e.g. 'meta-fomaml', 'transfer'.
    params: the method's starting parameters (slot row already set).
    speakers: from :func:`select_clips` (the same list for every method).
    samples_dir: ``WORKDIR/samples``.
    sample_rate: of the written WAVs.
    lrs: learned inner learning rates (Meta-SGD), else None.
    progress: show a progress bar.

  Returns:
    The method's protocol record (also merged into ``protocol.json``):
    protocol fields, per speaker the support and evaluation utt ids, and the
    support loss after each step count.
  """
  p = adapter.protocol
  record = {"protocol": p.to_json(), "learned_lrs": lrs is not None,
            "speakers": {}}
  bar = tqdm.tqdm(total=len(speakers) * len(p.shots),
                  desc=f"adapt {method}", unit="spk", disable=not progress)
  for sc in speakers:
    rec = record["speakers"].setdefault(sc.speaker, {
        "split": sc.split,
        "evaluation": [e.utt_id for e in sc.evaluation], "shots": {}})
    for k in p.shots:
      support = sc.support[:k]
      batch = pad_batch(support, adapter.max_tokens, adapter.max_frames,
                        p.speaker_slot)
      batch = jax.tree.map(jnp.asarray, batch)
      curve, losses = adapter.curve(params, batch, lrs)
      rec["shots"][str(k)] = {"support": [e.utt_id for e in support],
                              "support_loss": {str(s): v for s, v in
                                               losses.items()}}
      for s, adapted in curve.items():
        wavs, align, lengths = adapter.synthesize(adapted, sc.evaluation,
                                                     p.speaker_slot)
        folder = os.path.join(samples_dir, method, f"shots_{k}",
                              f"steps_{s}", sc.speaker)
        for i, e in enumerate(sc.evaluation):
          n_steps = -(-int(lengths[i]) // adapter.reduction_factor)
          _write_clip(folder, e.utt_id, wavs[i], e.text, sample_rate,
                      align[i, :n_steps, :len(e.tokens)])
      bar.update(1)
  bar.close()
  path = os.path.join(samples_dir, "protocol.json")
  allrec = {}
  if os.path.isfile(path):
    with open(path) as f:
      allrec = json.load(f)
  allrec[method] = record
  with open(path, "w") as f:
    json.dump(allrec, f, indent=1, sort_keys=True)
  return record


def markdown_table(workdir: str, metrics: Sequence[str] = ("secs", "eer"),
                   splits: Sequence[str] = ("heldout_seen",
                                            "heldout_unseen")) -> str:
  """Markdown tables of ``WORKDIR/report/metrics.json`` (one per metric).

  Rows are ``method, split, shots``; columns the adaptation step counts;
  cells the mean over held-out speakers (SECS with its 95% half-width; EER
  in percent). Missing cells (nothing judgeable) show as "-".

  Args:
    workdir: a run folder holding ``report/metrics.json``.
    metrics: metric keys to tabulate.
    splits: held-out splits (rows); "all" pools both.

  Returns:
    The markdown text.
  """
  path = os.path.join(workdir, "report", "metrics.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} is missing; run the experiment (or "
                            "python -m metatts.evaluation --workdir) first.")
  with open(path) as f:
    m = json.load(f)
  methods = sorted(k for k, v in m.items()
                   if k != "reference" and isinstance(v, dict))
  steps = sorted({int(s) for k in methods for sh in m[k]["shots"].values()
                  for s in sh["steps"]})
  out = []
  for metric in metrics:
    out.append(f"**{metric.upper()}**"
               + (" (%, lower is better)" if metric == "eer" else
                  " (cosine, higher is better; +- 95% CI over speakers)"
                  if metric == "secs" else ""))
    out.append("")
    out.append("| method | split | clips | " + " | ".join(
        f"{s} steps" for s in steps) + " |")
    out.append("|---|---|---|" + "---|" * len(steps))
    for k in methods:
      for shots in sorted(m[k]["shots"], key=int):
        for split in splits:
          cells = []
          for s in steps:
            cell = m[k]["shots"][shots]["steps"].get(str(s))
            if cell is not None and split != "all":
              cell = cell.get("splits", {}).get(split)
            v = None if cell is None else cell.get(metric)
            if v is None:
              cells.append("-")
            elif metric == "eer":
              cells.append(f"{100 * v:.1f}")
            elif metric == "secs":
              ci = (cell.get("ci95") or {}).get("secs")
              cells.append(f"{v:.3f}" + (f" +- {ci:.3f}" if ci else ""))
            else:
              cells.append(f"{v:.2f}")
          out.append(f"| {k} | {split} | {shots} | " + " | ".join(cells)
                     + " |")
    out.append("")
  ref = m.get("reference", {})
  for name in ("real", "griffin_lim"):
    if name in ref:
      r = ref[name]
      out.append(f"Ceiling `{name}` (real held-out clips"
                 f"{', Griffin-Lim resynthesis' if name != 'real' else ''}"
                 f"): SECS {r.get('secs', float('nan')):.3f}, EER "
                 f"{100 * (r.get('eer') or 0):.1f}%.")
  return "\n".join(out)


__all__ = ["Adapter", "markdown_table", "CHUNK", "Protocol", "SpeakerClips", "inner_optimizer",
           "pad_batch", "protocol_from_config", "run_method", "select_clips",
           "write_references"]
