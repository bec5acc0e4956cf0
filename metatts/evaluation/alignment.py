"""Alignment accuracy against a synthesizer's own word timings.

The synthetic corpus (``metatts.data.synth``) records, for its flite and
festival voices, the end time of every word and phone as the synthesizer
itself placed them (docs/data.md). That is an independent reference for a
learned text-to-mel alignment (RAD-TTS aligner, attention): turn the
alignment into per-token durations in mel frames, read off where each word
ends, and compare with the synthesizer's word ends.

**Why words, not phones.** The model's tokens are espeak-ng IPA characters
(``metatts.audio.text.PHONEMES``: one symbol per IPA character, stress and
length marks included), while flite and festival speak CMU-style phones
through their own lexicons and letter-to-sound rules. The two phone strings
differ in inventory, segmentation (a diphthong is one phone but two IPA
characters) and even in count, so there is no one-to-one phone map. Both
agree on the words, and a word boundary is a sharp acoustic event the
aligner must get right, so the unit of comparison is the word end. Inside
the token sequence a word is a maximal run of tokens that are neither the
space symbol, punctuation, padding nor EOS (an apostrophe between two
letters stays inside the word, as in "don't").

**When the word counts disagree.** espeak-ng joins some function words to the
next word without a space ("in the garden" is phonemized ``ɪnðə ɡˈɑːɹdən``,
two words; about a quarter of the synthetic corpus's sentences have such a
join), and numbers or abbreviations may be spelled out differently by the
frontend and by the synthesizer. When the reference words are known (pass
the ``Timings`` record, or ``ref_words``), the token words are matched to
them: a token word may stand for 1-3 consecutive reference words, or two
token words for one, chosen by the smallest edit distance between the token
word's IPA and the reference words' IPA (each phonemized alone with the same
frontend; stress and length marks ignored). Only the ends of matched groups
are scored (the boundary inside "ɪnðə" has no token boundary to score).
Utterances that still cannot be paired, or that are given as bare arrays
with a different number of words, are skipped (``word_boundary_errors``
returns None) and counted as skipped by ``summarize``, which reports the
count next to the error.

**Time convention.** Mel frame ``t`` is centered on sample ``t * hop``
(``center=True``, as in ``metatts.audio.features``), so the boundary
between frames ``t - 1`` and ``t`` is at ``(t - 1/2) * hop / sample_rate``
seconds. A word whose last token ends after ``c`` frames (cumulative
duration) therefore ends at ``(c - 1/2) * hop / sample_rate``; with
durations quantized to frames, a perfect alignment is off by at most half a
hop (6.25 ms at 200 / 16000).

References:
  R. Badlani, A. Łańcucki, K. J. Shih, R. Valle, W. Ping, B. Catanzaro. "One
  TTS Alignment To Rule Them All." ICASSP 2022 (arXiv:2108.10447).
  J. Kim, S. Kim, J. Kong, S. Yoon. "Glow-TTS: A Generative Flow for
  Text-to-Speech via Monotonic Alignment Search." NeurIPS 2020.
  A. W. Black, K. A. Lenzo. "Flite: a small fast run-time synthesis engine."
  4th ISCA Speech Synthesis Workshop, 2001.
  A. W. Black, P. Taylor, R. Caley. "The Festival Speech Synthesis System."
  University of Edinburgh, 1998.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

from metatts.audio import text as atext

SymbolsLike = Union[str, atext.SymbolSet]


def _separator_ids(symbols: SymbolsLike) -> np.ndarray:
  """Ids that never belong to a word: pad, EOS, space, punctuation."""
  sset = atext.symbol_set(symbols)
  idx = sset.index
  ids = [sset.pad_id, sset.eos_id, idx[" "]]
  ids += [idx[c] for c in atext.PUNCTUATION if c in idx]
  return np.asarray(sorted(set(ids)), np.int64)


def word_token_ends(tokens: np.ndarray, symbols: SymbolsLike) -> np.ndarray:
  """Index of the last token of every word in a token sequence.

  Args:
    tokens: int ``[L]`` symbol ids (EOS and trailing padding allowed).
    symbols: the symbol set (name or ``SymbolSet``) the ids come from.

  Returns:
    int64 ``[W]``: for each word, in order, the position in ``tokens`` of
    its last unit token.

  Raises:
    ValueError: ``tokens`` is not 1-D.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 1:
    raise ValueError(f"tokens must be 1-D [L], got shape {tokens.shape}; "
                     "pass one utterance at a time.")
  sset = atext.symbol_set(symbols)
  unit = ~np.isin(tokens, _separator_ids(sset))
  # An apostrophe between two units stays inside the word ("don't").
  apos = sset.index.get("'")
  if apos is not None:
    inner = np.zeros_like(unit)
    inner[1:-1] = (tokens[1:-1] == apos) & unit[:-2] & unit[2:]
    unit = unit | inner
  nxt = np.concatenate([unit[1:], [False]])
  return np.flatnonzero(unit & ~nxt).astype(np.int64)


def durations_from_alignment(alignment: np.ndarray,
                             num_frames: Optional[int] = None,
                             num_tokens: Optional[int] = None) -> np.ndarray:
  """Per-token durations from an alignment matrix (hard or soft).

  Each frame goes to its most probable token (argmax over tokens); a
  token's duration is the number of frames that chose it. For a hard
  (0/1, monotonic) alignment this is exactly its durations; for a soft one
  it is the usual hard decoding without the monotonic search.

  Args:
    alignment: ``[T, L]`` (frames x tokens) weights, e.g. the aligner's soft
      or hard attention for one utterance; a leading batch axis of size 1
      is accepted.
    num_frames: valid frames (the rest is padding); default ``T``.
    num_tokens: valid tokens (padding columns are never chosen); default
      ``L``.

  Returns:
    int64 ``[L]`` durations in frames, summing to ``num_frames``; entries
    past ``num_tokens`` are 0.

  Raises:
    ValueError: not a ``[T, L]`` matrix, or lengths out of range.
  """
  a = np.asarray(alignment, np.float64)
  if a.ndim == 3 and a.shape[0] == 1:
    a = a[0]
  if a.ndim != 2:
    raise ValueError(f"alignment must be [T, L] (frames x tokens), got shape "
                     f"{np.shape(alignment)}; pass one utterance.")
  t_all, l_all = a.shape
  t = t_all if num_frames is None else int(num_frames)
  l = l_all if num_tokens is None else int(num_tokens)
  if not (0 <= t <= t_all and 1 <= l <= l_all):
    raise ValueError(f"num_frames={num_frames} / num_tokens={num_tokens} out "
                     f"of range for an alignment of shape {a.shape}.")
  choice = np.argmax(a[:t, :l], axis=1)
  return np.bincount(choice, minlength=l_all).astype(np.int64)


def uniform_durations(num_tokens: int, num_frames: int) -> np.ndarray:
  """Equal frames per token (the first ``num_frames % num_tokens`` get one
  more): the alignment that knows nothing, a lower bar for any aligner."""
  if num_tokens <= 0 or num_frames < 0:
    raise ValueError(f"uniform_durations: num_tokens={num_tokens} must be > 0 "
                     f"and num_frames={num_frames} >= 0.")
  q, r = divmod(int(num_frames), int(num_tokens))
  return (np.full(num_tokens, q) + (np.arange(num_tokens) < r)).astype(
      np.int64)


def _as_word_ends(word_ends) -> np.ndarray:
  # A Timings record (metatts.data.corpora.Timings) or an array of seconds.
  ends = getattr(word_ends, "word_ends", word_ends)
  ends = np.asarray(ends, np.float64)
  if ends.ndim != 1:
    raise ValueError(f"word_ends must be 1-D seconds [W], got shape "
                     f"{ends.shape}.")
  return ends


def word_end_times(durations: np.ndarray, tokens: np.ndarray,
                   symbols: SymbolsLike, hop_length: int,
                   sample_rate: int) -> np.ndarray:
  """Where an alignment puts each word's end, in seconds.

  Args:
    durations: int ``[L]`` frames per token (same ``L`` as ``tokens``).
    tokens: int ``[L]`` symbol ids.
    symbols: their symbol set.
    hop_length: mel hop in samples.
    sample_rate: Hz.

  Returns:
    float64 ``[W]``: ``(c - 1/2) * hop / sample_rate`` with ``c`` the
    cumulative frames up to and including each word's last token (clamped
    at 0).
  """
  d = np.asarray(durations)
  tokens = np.asarray(tokens)
  if d.shape != tokens.shape:
    raise ValueError(f"durations {d.shape} and tokens {tokens.shape} must "
                     "have the same length [L].")
  if np.any(d < 0):
    raise ValueError("durations must be >= 0 frames.")
  c = np.cumsum(d)[word_token_ends(tokens, symbols)]
  return np.maximum(c - 0.5, 0.0) * hop_length / sample_rate


def word_boundary_errors(durations: np.ndarray, tokens: np.ndarray,
                         symbols: SymbolsLike, word_ends,
                         hop_length: int, sample_rate: int,
                         signed: bool = False,
                         ref_words: Optional[Sequence[str]] = None
                        ) -> Optional[np.ndarray]:
  """Word-boundary errors of an alignment against reference word ends.

  Args:
    durations: int ``[L]`` frames per token (e.g. ``durations_from_alignment``
      of the aligner's output, or a duration model's prediction).
    tokens: int ``[L]`` the utterance's phoneme (or character) ids.
    symbols: their symbol set, e.g. "phonemes".
    word_ends: the reference: float ``[W]`` seconds from the first mel
      sample, or a ``Timings`` (``features.Example.timings``, already in
      those seconds; its ``words`` serve as ``ref_words``).
    hop_length: mel hop in samples.
    sample_rate: Hz.
    signed: return ``predicted - reference`` instead of its magnitude.
    ref_words: the reference's words (``[W]``), used to match token words
      to them when the counts differ (see the module docstring).

  Returns:
    float64 errors in milliseconds, one per scored word end (``[W]`` when
    the word counts agree, fewer when words had to be matched), or None when
    the utterance cannot be paired (count it as skipped).
  """
  ref = _as_word_ends(word_ends)
  if ref_words is None:
    ref_words = getattr(word_ends, "words", None)
  pred = word_end_times(durations, tokens, symbols, hop_length, sample_rate)
  if ref.shape[0] == 0:
    return None
  if pred.shape[0] == ref.shape[0]:
    err = (pred - ref) * 1000.0
  else:
    if ref_words is None or len(ref_words) != ref.shape[0]:
      return None
    pairs = match_words(tokens, symbols, ref_words)
    if pairs is None:
      return None
    err = (pred[pairs[:, 0]] - ref[pairs[:, 1]]) * 1000.0
  return err if signed else np.abs(err)


_MARKS = str.maketrans("", "", "ˈˌː")
# (token words, reference words) per matched group, and the extra cost of
# anything but 1:1 (so that ties prefer the plain pairing).
_GROUPS = ((1, 1, 0.0), (1, 2, 0.5), (1, 3, 0.5), (2, 1, 0.5))


def _edit_distance(a: str, b: str) -> int:
  row = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    prev, row[0] = row[0], i
    for j, cb in enumerate(b, 1):
      prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1,
                                 prev + (ca != cb))
  return row[-1]


def _token_words(tokens: np.ndarray, symbols: SymbolsLike) -> list:
  sset = atext.symbol_set(symbols)
  ends = word_token_ends(tokens, symbols)
  sep = set(_separator_ids(sset).tolist())
  words = []
  for e in ends:
    k = int(e)
    while k > 0 and (int(tokens[k - 1]) not in sep or (
        sset.symbols[int(tokens[k - 1])] == "'" and k - 2 >= 0 and
        int(tokens[k - 2]) not in sep)):
      k -= 1
    words.append("".join(sset.symbols[int(i)] for i in tokens[k:e + 1]))
  return words


def match_words(tokens: np.ndarray, symbols: SymbolsLike,
                ref_words: Sequence[str],
                max_cost: float = 0.35) -> Optional[np.ndarray]:
  """Pairs the token sequence's words with reference words.

  Token word groups and reference word groups (1:1, 1:2, 1:3 or 2:1) are
  chosen by dynamic programming to minimize the edit distance between
  their spellings: for phonemes, the token word's IPA against the reference
  words phonemized one by one with the same frontend (espeak-ng; stress and
  length marks ignored); for characters, the letters.

  Args:
    tokens: int ``[L]`` ids.
    symbols: their symbol set.
    ref_words: the reference words, in order.
    max_cost: give up (None) when the total edit distance exceeds this
      fraction of the reference's length in symbols.

  Returns:
    int64 ``[G, 2]``: for each matched group, the index of its last token
    word and of its last reference word; None when no pairing is close
    enough.
  """
  sset = atext.symbol_set(symbols)
  tok = [w.translate(_MARKS) for w in _token_words(tokens, sset)]
  if sset.name == "phonemes":
    ref = [atext.phonemize(w).translate(_MARKS).replace(" ", "")
           for w in ref_words]
  else:
    ref = ["".join(c for c in atext.normalize_text(w) if c.isalpha())
           for w in ref_words]
  n, m = len(tok), len(ref)
  if n == 0 or m == 0:
    return None
  inf = float("inf")
  cost = np.full((n + 1, m + 1), inf)
  back = {}
  cost[0, 0] = 0.0
  for i in range(n + 1):
    for j in range(m + 1):
      if cost[i, j] == inf:
        continue
      for di, dj, extra in _GROUPS:
        if i + di > n or j + dj > m:
          continue
        c = cost[i, j] + extra + _edit_distance(
            "".join(tok[i:i + di]), "".join(ref[j:j + dj]))
        if c < cost[i + di, j + dj]:
          cost[i + di, j + dj] = c
          back[(i + di, j + dj)] = (i, j)
  if cost[n, m] > max_cost * max(1, sum(len(r) for r in ref)):
    return None
  pairs, ij = [], (n, m)
  while ij != (0, 0):
    pairs.append((ij[0] - 1, ij[1] - 1))
    ij = back[ij]
  return np.asarray(pairs[::-1], np.int64)


def durations_from_word_ends(tokens: np.ndarray, symbols: SymbolsLike,
                             word_ends, num_frames: int, hop_length: int,
                             sample_rate: int) -> Optional[np.ndarray]:
  """Durations that put every word end where the reference has it.

  Each word's last token ends at the frame boundary nearest to its
  reference end; the frames between two word ends are shared out evenly
  among the tokens in between (separators of the previous word and the
  units of this one). Trailing frames go to the tokens after the last word.
  This is the best a frame-quantized alignment can do on this metric (its
  error is at most half a hop), e.g. to check the metric or an evaluation.

  Args:
    tokens: int ``[L]`` ids.
    symbols: their symbol set.
    word_ends: reference ends (seconds ``[W]`` or a ``Timings``).
    num_frames: mel frames of the utterance.
    hop_length: mel hop in samples.
    sample_rate: Hz.

  Returns:
    int64 ``[L]`` summing to ``num_frames``, or None if the words cannot be
    paired (see ``word_boundary_errors``).
  """
  ref = _as_word_ends(word_ends)
  tokens = np.asarray(tokens)
  ends = word_token_ends(tokens, symbols)
  if ref.shape[0] == 0:
    return None
  if ends.shape[0] != ref.shape[0]:
    words = getattr(word_ends, "words", None)
    pairs = None if words is None else match_words(tokens, symbols, words)
    if pairs is None:
      return None
    ends, ref = ends[pairs[:, 0]], ref[pairs[:, 1]]
  # Boundary c (frames) sits at (c - 1/2) hop; the nearest to t is
  # round(t sr / hop + 1/2), kept monotonic and inside [0, num_frames].
  bounds = np.clip(np.round(ref * sample_rate / hop_length + 0.5), 0,
                   num_frames).astype(np.int64)
  bounds = np.maximum.accumulate(bounds)
  d = np.zeros(tokens.shape[0], np.int64)
  prev_tok, prev_frame = 0, 0
  pieces = list(zip(ends + 1, bounds)) + [(tokens.shape[0], num_frames)]
  for stop_tok, stop_frame in pieces:
    n_tok = stop_tok - prev_tok
    if n_tok > 0:
      d[prev_tok:stop_tok] = uniform_durations(n_tok, stop_frame - prev_frame)
    prev_tok, prev_frame = stop_tok, stop_frame
  return d


class BoundaryStats(NamedTuple):
  """Word-boundary error over a set of utterances (milliseconds)."""

  median_ms: float  # nan when no utterance could be paired
  mean_ms: float
  p90_ms: float
  num_boundaries: int  # word ends scored
  num_utterances: int  # utterances scored
  num_skipped: int  # utterances whose word counts disagreed


def summarize(errors: Sequence[Optional[np.ndarray]]) -> BoundaryStats:
  """Pools per-utterance ``word_boundary_errors`` (None = skipped).

  Args:
    errors: one entry per utterance, absolute errors in ms or None.

  Returns:
    ``BoundaryStats`` over all scored word ends.
  """
  scored = [np.abs(np.asarray(e, np.float64)) for e in errors
            if e is not None]
  skipped = sum(1 for e in errors if e is None)
  allv = np.concatenate(scored) if scored else np.zeros(0)
  if allv.size == 0:
    nan = float("nan")
    return BoundaryStats(nan, nan, nan, 0, len(scored), skipped)
  return BoundaryStats(float(np.median(allv)), float(np.mean(allv)),
                       float(np.percentile(allv, 90)), int(allv.size),
                       len(scored), skipped)


# ----------------------------------------------------------------------------
# The shape of a synthesized alignment (no reference needed).


class AlignmentShape(NamedTuple):
  """How monotonic and diagonal one alignment (or a mean of several) is."""

  monotonic: float  # fraction of step-to-step moves of the argmax symbol >= 0
  diagonal_deviation: float  # mean |argmax/(N-1) - step/(T-1)|, 0 = diagonal
  coverage: float  # fraction of symbols that are some step's argmax
  num_alignments: int


def alignment_shape(alignment: np.ndarray) -> AlignmentShape:
  """Monotonicity, distance from the diagonal and coverage of an alignment.

  Args:
    alignment: ``[steps, symbols]`` weights (attention or hard durations);
      all-zero rows (padded steps) and trailing all-zero columns (padded
      symbols) are dropped first.

  Returns:
    ``AlignmentShape`` of the most-weighted symbol per step: a hard
    duration alignment is monotonic (1.0) with full coverage by
    construction; a diffuse attention wanders (monotonic well below 1,
    coverage well below 1, deviation near 1/3, that of a random path).

  Raises:
    ValueError: not 2-D, or no non-zero weight.
  """
  a = np.asarray(alignment, np.float64)
  if a.ndim != 2:
    raise ValueError(f"alignment of shape {a.shape}; expected [steps, "
                     "symbols].")
  a = a[np.abs(a).sum(1) > 0]
  used = np.nonzero(np.abs(a).sum(0) > 0)[0]
  if a.size == 0 or used.size == 0:
    raise ValueError("alignment has no non-zero weight.")
  a = a[:, :used[-1] + 1]
  steps, n = a.shape
  j = a.argmax(1)
  moves = np.diff(j)
  monotonic = float(np.mean(moves >= 0)) if steps > 1 else 1.0
  deviation = float(np.mean(np.abs(j / max(n - 1, 1) -
                                   np.arange(steps) / max(steps - 1, 1))))
  coverage = float(np.unique(j).size / n)
  return AlignmentShape(monotonic, deviation, coverage, 1)


def mean_shape(shapes: Sequence[AlignmentShape]) -> AlignmentShape:
  """The mean of several ``AlignmentShape`` (weighted by their counts)."""
  total = sum(s.num_alignments for s in shapes)
  if not total:
    nan = float("nan")
    return AlignmentShape(nan, nan, nan, 0)
  avg = lambda f: float(sum(f(s) * s.num_alignments for s in shapes) / total)  # noqa: E731
  return AlignmentShape(avg(lambda s: s.monotonic),
                        avg(lambda s: s.diagonal_deviation),
                        avg(lambda s: s.coverage), total)


def workdir_shapes(workdir: str) -> dict:
  """``{method: {shots: {steps: AlignmentShape}}}`` of a run's samples.

  Reads every ``WORKDIR/samples/<method>/shots_<k>/steps_<s>/<speaker>/
  *.align.npy`` (the alignment of each synthesized evaluation sentence).
  """
  import glob  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  found = {}
  pattern = os.path.join(workdir, "samples", "*", "shots_*", "steps_*", "*",
                         "*.align.npy")
  for path in sorted(glob.glob(pattern)):
    parts = path.split(os.sep)
    method, shots, steps = parts[-5], parts[-4], parts[-3]
    k = int(re.sub(r"\D", "", shots))
    s = int(re.sub(r"\D", "", steps))
    found.setdefault(method, {}).setdefault(k, {}).setdefault(s, []).append(
        alignment_shape(np.load(path)))
  return {m: {k: {s: mean_shape(v) for s, v in sorted(by_s.items())}
              for k, by_s in sorted(by_k.items())}
          for m, by_k in sorted(found.items())}


def main(argv: Optional[Sequence[str]] = None) -> int:
  """``python -m metatts.evaluation.alignment WORKDIR``: a markdown table."""
  import sys  # pylint: disable=g-import-not-at-top
  args = list(sys.argv[1:] if argv is None else argv)
  if len(args) != 1:
    print("usage: python -m metatts.evaluation.alignment WORKDIR",
          file=sys.stderr)
    return 2
  shapes = workdir_shapes(args[0])
  if not shapes:
    print(f"error: no samples/*/shots_*/steps_*/*/*.align.npy under "
          f"{args[0]}; run the experiment's adaptation first.",
          file=sys.stderr)
    return 2
  print("| method | shots | steps | alignments | monotonic | "
        "mean abs(symbol/N - step/T) | symbol coverage |")
  print("|---|---|---|---|---|---|---|")
  for m, by_k in shapes.items():
    for k, by_s in by_k.items():
      for s, sh in by_s.items():
        print(f"| {m} | {k} | {s} | {sh.num_alignments} | "
              f"{sh.monotonic:.3f} | {sh.diagonal_deviation:.3f} | "
              f"{sh.coverage:.3f} |")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
