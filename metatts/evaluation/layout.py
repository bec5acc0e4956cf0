"""The "samples" layout that the evaluation reads (written by the end-to-end code).

::

  WORKDIR/samples/
    manifest.json                      optional, see below
    reference/<speaker>/<utt_id>.wav   real held-out clips of each target speaker
    reference/<speaker>/<utt_id>.txt   their transcripts (UTF-8)
    vocoded/<speaker>/<utt_id>.wav     optional: a neural vocoder's resynthesis
                                       of reference/<speaker>/<utt_id>.wav
    <method>/shots_<K>/steps_<S>/<speaker>/<utt_id>.wav   synthesized clips
    <method>/shots_<K>/steps_<S>/<speaker>/<utt_id>.txt   the text synthesized
    <method>/shots_<K>/steps_<S>/<speaker>/<utt_id>.align.npy   optional
                                       attention [decoder_steps, encoder_steps]

Method keys: ``meta-<algorithm>`` (``meta-maml``, ``meta-fomaml``,
``meta-reptile``, ``meta-metasgd``, ``meta-imaml``, ...), ``transfer``,
``multitask``, ``zeroshot``, ``scratch``. ``K`` (support clips used for
adaptation) and ``S`` (adaptation steps) are non-negative integers.

Reference clips are never used for adaptation. A synthesized clip is paired
with ``reference/<speaker>/<utt_id>.wav`` of the same ``utt_id`` (same text)
for MCD and F0; a synthesized clip without a same-id reference is still judged
by SECS, EER and WER. A missing synthesized ``.txt`` falls back to the
reference transcript of the same ``utt_id``.

``manifest.json`` (all keys optional)::

  {"speakers": {"p225": "heldout_seen", "p226": "heldout_unseen"},
   "sample_rate": 22050,
   "description": "quickstart, 5 clips, inner lr 1e-3"}

``speakers`` gives each speaker's split; metrics are then also reported per
split.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Dict, Optional

METHOD_FIXED = ("transfer", "multitask", "zeroshot", "scratch")
METHOD_RE = re.compile(r"^meta-[a-z0-9][a-z0-9_]*(-[a-z0-9_]+)*$")
RESERVED_DIRS = ("reference", "vocoded")
SPLITS = ("heldout_seen", "heldout_unseen")
_SHOTS_RE = re.compile(r"^shots_(\d+)$")
_STEPS_RE = re.compile(r"^steps_(\d+)$")


def check_method_key(name: str, where: str = "") -> str:
  """Validates a method key; raises ``ValueError`` naming the allowed keys."""
  if name in METHOD_FIXED or METHOD_RE.match(name):
    return name
  raise ValueError(
      f"unknown method {name!r}{' in ' + where if where else ''}; method keys "
      f"are 'meta-<algorithm>' (e.g. meta-maml, meta-reptile, "
      f"meta-maml-encoder) or one of "
      f"{list(METHOD_FIXED)}. Rename the folder.")


@dataclasses.dataclass(frozen=True)
class Clip:
  """One audio file of the layout and its optional companions."""
  speaker: str
  utt_id: str
  wav: str
  txt: Optional[str]
  align: Optional[str] = None  # attention .npy


Clips = Dict[str, Dict[str, Clip]]  # {speaker: {utt_id: Clip}}


@dataclasses.dataclass
class Samples:
  root: str
  reference: Clips
  vocoded: Clips
  # {method: {K: {S: {speaker: {utt_id: Clip}}}}}
  methods: Dict[str, Dict[int, Dict[int, Clips]]]
  manifest: dict

  def split_of(self, speaker: str) -> Optional[str]:
    return self.manifest.get("speakers", {}).get(speaker)

  def n_synthesized(self) -> int:
    return sum(len(u) for m in self.methods.values() for k in m.values()
               for s in k.values() for u in s.values())


def _scan_speakers(folder: str, require_txt: bool) -> Clips:
  out: Clips = {}
  for spk in sorted(os.listdir(folder)):
    d = os.path.join(folder, spk)
    if not os.path.isdir(d):
      continue
    clips = {}
    for f in sorted(os.listdir(d)):
      if not f.lower().endswith(".wav"):
        continue
      utt = f[:-4]
      txt = os.path.join(d, utt + ".txt")
      if not os.path.isfile(txt):
        if require_txt:
          raise FileNotFoundError(
              f"transcript missing: {txt}; every reference clip needs its text "
              f"in a .txt file of the same name.")
        txt = None
      al = os.path.join(d, utt + ".align.npy")
      clips[utt] = Clip(spk, utt, os.path.join(d, f), txt,
                        al if os.path.isfile(al) else None)
    if clips:
      out[spk] = clips
  return out


def scan_samples(workdir: str) -> Samples:
  """Reads and validates ``WORKDIR/samples``.

  Args:
    workdir: The experiment directory (or the ``samples`` folder itself).

  Returns:
    A :class:`Samples` index of every clip.

  Raises:
    FileNotFoundError: No samples folder, no reference clips, a reference
      transcript missing, or a method speaker without reference clips.
    ValueError: A folder name that is not a method key, ``shots_<K>`` or
      ``steps_<S>``; a bad manifest.
  """
  root = os.path.join(workdir, "samples")
  if not os.path.isdir(root) and os.path.basename(
      os.path.normpath(workdir)) == "samples" and os.path.isdir(workdir):
    root = workdir
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f"no samples folder at {root}; run the end-to-end adaptation first (it "
        f"writes WORKDIR/samples/, see docs/evaluation.md for the layout), or "
        f"pass the right --workdir.")
  manifest = {}
  mpath = os.path.join(root, "manifest.json")
  if os.path.isfile(mpath):
    try:
      with open(mpath, encoding="utf-8") as f:
        manifest = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{mpath} is not valid JSON ({e}); fix or delete it.") \
          from e
    if not isinstance(manifest, dict):
      raise ValueError(f"{mpath} must hold a JSON object.")
    bad = {s: v for s, v in manifest.get("speakers", {}).items()
           if v not in SPLITS}
    if bad:
      raise ValueError(f"{mpath}: speaker splits {bad} are not one of "
                       f"{list(SPLITS)}.")
  ref_dir = os.path.join(root, "reference")
  if not os.path.isdir(ref_dir):
    raise FileNotFoundError(
        f"no reference clips: {ref_dir} is missing; write real held-out clips "
        f"of each target speaker as reference/<speaker>/<utt_id>.wav + .txt.")
  reference = _scan_speakers(ref_dir, require_txt=True)
  if not reference:
    raise FileNotFoundError(f"{ref_dir} holds no <speaker>/<utt_id>.wav clips.")
  voc_dir = os.path.join(root, "vocoded")
  vocoded = _scan_speakers(voc_dir, False) if os.path.isdir(voc_dir) else {}
  methods: Dict[str, Dict[int, Dict[int, Clips]]] = {}
  for name in sorted(os.listdir(root)):
    mdir = os.path.join(root, name)
    if name in RESERVED_DIRS or not os.path.isdir(mdir) or name.startswith("."):
      continue
    check_method_key(name, root)
    for kname in sorted(os.listdir(mdir)):
      kdir = os.path.join(mdir, kname)
      if not os.path.isdir(kdir):
        continue
      km = _SHOTS_RE.match(kname)
      if not km:
        raise ValueError(f"{kdir}: expected a folder named shots_<K> (e.g. "
                         "shots_5) under the method folder.")
      for sname in sorted(os.listdir(kdir)):
        sdir = os.path.join(kdir, sname)
        if not os.path.isdir(sdir):
          continue
        sm = _STEPS_RE.match(sname)
        if not sm:
          raise ValueError(f"{sdir}: expected a folder named steps_<S> (e.g. "
                           "steps_5) under shots_<K>.")
        clips = _scan_speakers(sdir, require_txt=False)
        for spk, utts in clips.items():
          if spk not in reference:
            raise FileNotFoundError(
                f"missing reference for speaker {spk!r} (used in {sdir}): "
                f"write its real held-out clips to "
                f"{os.path.join(ref_dir, spk)}/<utt_id>.wav + .txt.")
          for utt, clip in utts.items():
            if clip.txt is None and utt not in reference[spk]:
              raise FileNotFoundError(
                  f"no text for {clip.wav}: write {utt}.txt beside it (or a "
                  f"reference clip with the same utt_id).")
        if clips:
          methods.setdefault(name, {}).setdefault(int(km.group(1)), {})[
              int(sm.group(1))] = clips
  if not methods and not vocoded:  # a vocoder-only run judges ceilings
    raise FileNotFoundError(
        f"no synthesized clips under {root}: expected "
        f"<method>/shots_<K>/steps_<S>/<speaker>/<utt_id>.wav (method keys "
        f"meta-<algorithm>, {', '.join(METHOD_FIXED)}).")
  return Samples(root, reference, vocoded, methods, manifest)
