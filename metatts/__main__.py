"""Command line: clone a voice from a few clips and speak with it.

    python -m metatts adapt --model WORKDIR --clips CLIPS_DIR --out VOICE_DIR
    python -m metatts say --voice VOICE_DIR "Any English sentence." -o out.wav

``--model`` may be any method's export, the ``zeroshot`` one included (its
voice starts from the speaker encoder's vector of the clips; ``--steps 0``
is zero-shot cloning).

``CLIPS_DIR`` holds 1-10 audio files (``.wav``, ``.flac``, ``.ogg``) each with
a transcript of the same name ending in ``.txt`` (``a.wav`` + ``a.txt``).
Errors (a missing transcript, a silent or unreadable clip, empty text, a
damaged or hand-edited voice.json / model.json, an ``--out`` equal to or
inside ``--model``, an ``-o`` that is a folder) are printed as one line
naming the file and the fix, with exit status 2 (1 for an operating-system
failure such as a full disk). ``--out`` and ``-o`` are checked before any
work, and both are written atomically: an existing voice or WAV survives a
failure or ``kill -9``. Hidden files (``.name``, e.g. macOS ``._a.wav``) in
``CLIPS_DIR`` are skipped; a clip that does not sound like speech (noise)
is refused unless ``--no-speech-check`` is given.

``adapt`` shows a progress bar with the support loss (``--no-progress`` to
hide it). Ctrl-C (SIGINT) stops it within a chunk of steps: the best voice
so far (lowest support loss at a chunk boundary) is saved to ``--out`` and
the message says which step it is, or it says that nothing was saved;
the exit status is then 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence, Tuple

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


def find_clips(directory: str) -> Tuple[List[str], List[str]]:
  """Lists the audio clips of a folder and reads their transcripts.

  Args:
    directory: folder with ``NAME.wav`` (or .flac / .ogg) + ``NAME.txt``.

  Returns:
    ``(paths, texts)`` sorted by file name.

  Raises:
    FileNotFoundError: the folder does not exist or holds no audio.
    ValueError: a clip without a transcript, or an unreadable / empty
      transcript (naming the file and the fix).
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(
        f"Clip folder {directory} does not exist; pass --clips DIR holding "
        "NAME.wav + NAME.txt pairs.")
  # Hidden files (macOS ._a.wav resource forks, editor backups) are not
  # clips.
  names = sorted(n for n in os.listdir(directory)
                 if n.lower().endswith(AUDIO_EXTENSIONS) and
                 not n.startswith(".") and
                 os.path.isfile(os.path.join(directory, n)))
  if not names:
    raise FileNotFoundError(
        f"No audio clips ({', '.join(AUDIO_EXTENSIONS)}) in {directory}; put "
        "1-10 clips there, each with a same-name .txt transcript.")
  paths, texts = [], []
  for name in names:
    path = os.path.join(directory, name)
    txt = os.path.splitext(path)[0] + ".txt"
    if not os.path.isfile(txt):
      raise ValueError(
          f"Clip {path} has no transcript: {txt} is missing. Write the words "
          "spoken in the clip into that file (or remove the clip).")
    try:
      with open(txt, encoding="utf-8") as f:
        text = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
      raise ValueError(f"Cannot read the transcript {txt} ({e}); save it as "
                       "UTF-8 text.") from e
    if not text:
      raise ValueError(f"Transcript {txt} of clip {path} is empty; write the "
                       "words spoken in the clip into it.")
    paths.append(path)
    texts.append(text)
  return paths, texts


def _adapt(args: argparse.Namespace) -> int:
  from metatts import api  # pylint: disable=g-import-not-at-top
  if args.steps is not None and args.steps > api.MAX_STEPS:
    raise ValueError(f"--steps {args.steps} is above the limit of "
                     f"{api.MAX_STEPS} steps; use --steps {api.MAX_STEPS} or "
                     "fewer (typical: 5-100).")
  # Refuse a bad --out (the model itself or inside it, a file, a foreign
  # folder, an unwritable place) before any work and before touching it.
  model_dir = api.resolve_model_dir(args.model)
  api.check_voice_target(args.out, (args.model, model_dir))
  paths, texts = find_clips(args.clips)
  tts = api.load(model_dir, vocoder=args.vocoder)
  steps = tts.default_steps if args.steps is None else args.steps
  tts._check_vocoder_steps(args.vocoder_steps)  # pylint: disable=protected-access
  # Every clip is loaded and checked before anything is said about adapting.
  clips = tts.prepare_clips(paths, texts,
                            names=[os.path.basename(p) for p in paths],
                            check_speech=args.speech_check)
  print(f"Adapting {tts.model_dir} ({tts.info.get('method')}) to "
        f"{len(paths)} clips for {steps} steps (filter {tts.filter_name}, "
        f"{tts.optimizer_name} lr {tts.lr}); the first run compiles...",
        flush=True)
  if tts.zeroshot:
    print("Zeroshot model: the voice starts from the speaker encoder's mean "
          "vector of the clips" + (" (--steps 0: zero-shot cloning, no "
                                   "training)." if steps == 0 else
                                   f", then {steps} steps adapt it."),
          flush=True)
  try:
    with _StopAtChunk(steps, args.progress) as on_chunk:
      voice = tts.adapt_clips(clips, steps=steps, seed=args.seed,
                              progress=on_chunk,
                              vocoder_steps=args.vocoder_steps)
  except api.AdaptationInterrupted as e:
    return _save_interrupted(e, args.out)
  losses = voice.losses
  if losses.size <= 51:
    print("support loss by step: " + " ".join(f"{x:.4f}" for x in losses))
  if losses.size > 1:
    print(f"support loss {losses[0]:.4f} -> {losses[-1]:.4f}")
  if args.vocoder_steps:
    v = voice.info["vocoder_losses"]
    print(f"vocoder adapted for {args.vocoder_steps} steps: support loss "
          f"{v[0]:.4f} -> {v[-1]:.4f}")
  out = voice.save(args.out)
  _store_for_say(voice, out)  # fingerprinted as saved, written if it stays so
  print(f"Saved the voice to {out}; speak with: python -m metatts say "
        f"--voice {out} \"Hello.\" -o out.wav")
  return 0


class _StopAtChunk:
  """The progress bar and Ctrl-C handling of ``adapt``.

  While adapting, the first Ctrl-C (SIGINT) asks to stop at the end of the
  current chunk of steps (``metatts.voice.CHUNK``; well under a second once
  compiled): the progress callback then raises ``KeyboardInterrupt``
  between chunks, which ``metatts.voice.adapt`` turns into
  ``AdaptationInterrupted`` with the best voice so far. A second Ctrl-C
  interrupts at once. Interrupting XLA's compilation half-way is avoided:
  it made the interpreter crash (SIGSEGV) on its way out. A SIGINT that the
  caller set to be ignored (``nohup``, a background job) stays ignored.
  """

  def __init__(self, total: int, show: bool):
    self.total, self.show = total, show
    self.requested, self.bar, self.previous = False, None, None

  def _handler(self, signum, frame):
    del signum, frame
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True
    print("\nCtrl-C: stopping at the end of this chunk of steps (press it "
          "again to quit at once, saving nothing)...", file=sys.stderr,
          flush=True)

  def __call__(self, done: int, total: int, loss: float) -> None:
    if self.bar is not None:
      self.bar.update(done - self.bar.n)
      self.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
    if self.requested:
      raise KeyboardInterrupt

  def __enter__(self):
    import signal  # pylint: disable=g-import-not-at-top
    import threading  # pylint: disable=g-import-not-at-top
    if self.show and self.total > 0:
      from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm(total=self.total, desc="adapting", unit="step")
    if (threading.current_thread() is threading.main_thread() and
        signal.getsignal(signal.SIGINT) is signal.default_int_handler):
      self.previous = signal.signal(signal.SIGINT, self._handler)
    return self

  def __exit__(self, *exc):
    import signal  # pylint: disable=g-import-not-at-top
    if self.previous is not None:
      signal.signal(signal.SIGINT, self.previous)
    if self.bar is not None:
      self.bar.close()
    return False


def _save_interrupted(e, out: str) -> int:
  """Ctrl-C while adapting: saves the best voice so far, if any; 130."""
  head = (f"Interrupted (Ctrl-C) after {e.steps_done} of "
          f"{e.steps_requested} steps")
  if e.voice is None:
    print(f"{head}, before the first chunk of steps finished: nothing was "
          f"saved ({out} is unchanged).", file=sys.stderr, flush=True)
    return 130
  print(f"{head}; saving the best voice so far (step {e.best_step}, support "
        f"loss {e.losses[-1]:.4f}) to {out} ...", file=sys.stderr, flush=True)
  try:
    saved = e.voice.save(out)
  except KeyboardInterrupt:
    print(f"Interrupted again while saving: nothing was saved ({out} is "
          "unchanged; saves are atomic).", file=sys.stderr, flush=True)
    return 130
  print(f"Saved the voice after {e.best_step} of {e.steps_requested} steps "
        f"to {saved}; speak with: python -m metatts say --voice {saved} "
        "\"Hello.\" -o out.wav", file=sys.stderr, flush=True)
  return 130


def _store_for_say(voice, directory: str, vocoder=None, seen=None) -> None:
  """Writes the voice's ``say`` cache entry (metatts.say_cache; ``seen``:
  the folder's fingerprint before loading); a failure costs the next
  ``say`` its speed, never this command."""
  from metatts import say_cache  # pylint: disable=g-import-not-at-top
  try:
    say_cache.store(voice, directory, vocoder, seen)
  except Exception:  # pylint: disable=broad-except
    pass


def _say(args: argparse.Namespace) -> int:
  from metatts import atomic  # pylint: disable=g-import-not-at-top
  from metatts import say_cache  # pylint: disable=g-import-not-at-top
  from metatts.audio import io as aio  # pylint: disable=g-import-not-at-top
  text = " ".join(args.text)
  out = check_wav_target(args.output)
  # A voice that spoke before speaks from its cache: no model is built and
  # neither flax nor Orbax is imported (metatts.say_cache); the same WAV.
  audio, seen = None, None
  cached = say_cache.load(args.voice, args.vocoder)
  if cached is not None:
    try:
      audio, sr = cached.synthesize(text, seed=args.seed)
      vocoder_name = cached.vocoder.name
    except Exception:  # pylint: disable=broad-except
      # A sentence of new shapes, or a damaged entry: load the voice below
      # (which gives the same audio, or the real error for bad text).
      audio = None
  if audio is None:
    from metatts import api  # pylint: disable=g-import-not-at-top
    try:
      seen = say_cache.fingerprint(args.voice, args.vocoder)
    except OSError:
      seen = None  # load_voice says what is wrong with the folder
    voice = api.load_voice(args.voice, vocoder=args.vocoder)
    audio, sr = voice.synthesize(text, seed=args.seed)
    vocoder_name = voice.tts.vocoder.name
    if seen is not None:
      _store_for_say(voice, args.voice, args.vocoder, seen)
  parent, name = os.path.split(out)
  os.makedirs(parent, exist_ok=True)
  # Written next to the target and renamed: an older file survives a kill.
  tmp = os.path.join(parent, f".{name}{atomic.TMP_TAG}{os.getpid()}.wav")
  try:
    aio.save_wav(tmp, audio, sr)
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  print(f"Wrote {out} ({audio.shape[0] / sr:.2f} s at {sr} Hz, vocoder "
        f"{vocoder_name}).")
  return 0


def check_wav_target(path: str) -> str:
  """Checks ``say -o PATH`` before anything is synthesized.

  Returns:
    The absolute path.

  Raises:
    ValueError: an existing folder, a name not ending in .wav, or a place
      that cannot be written (one line with the fix).
  """
  from metatts import atomic  # pylint: disable=g-import-not-at-top
  out = os.path.abspath(path)
  if os.path.isdir(out):
    raise ValueError(f"-o {path}: {out} is a folder; give a file name such "
                     f"as {os.path.join(path, 'out.wav')}.")
  if not out.lower().endswith(".wav"):
    raise ValueError(f"-o {path}: the output is a WAV file; give a name "
                     "ending in .wav (e.g. -o out.wav).")
  if os.path.exists(out) and not os.access(out, os.W_OK):
    raise ValueError(f"-o {path}: {out} is read-only; choose another file.")
  atomic.check_writable_parent(out, "the WAV file")
  return out


def _positive_int(value: str) -> int:
  try:
    n = int(value)
  except ValueError:
    raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
  if n < 0:
    raise argparse.ArgumentTypeError(f"{value} must be >= 0")
  return n


def build_parser() -> argparse.ArgumentParser:
  """The ``python -m metatts`` argument parser."""
  parser = argparse.ArgumentParser(
      prog="python -m metatts",
      description="Few-shot voice cloning with a meta-learned TTS model.")
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser(
      "adapt", help="adapt a trained model to 1-10 clips and save the voice",
      description="Adapt a trained model to a new speaker from 1-10 clips "
      "(NAME.wav + NAME.txt in --clips) and save the voice to --out.")
  p.add_argument("--model", required=True,
                 help="training WORKDIR, WORKDIR/<method> or "
                 "WORKDIR/<method>/model")
  p.add_argument("--clips", required=True,
                 help="folder of NAME.wav clips with NAME.txt transcripts")
  p.add_argument("--out", required=True, help="voice folder to write")
  p.add_argument("--steps", type=_positive_int, default=None,
                 help="adaptation steps, 0-10000 (default: the model's; 0 "
                 "with a zeroshot model: zero-shot cloning)")
  p.add_argument("--seed", type=int, default=None,
                 help="prenet-dropout seed while adapting (default: the "
                 "model's fixed masks, as in the evaluation)")
  p.add_argument("--vocoder", default=None,
                 help="'griffin-lim' or a vocoder export (default: "
                 "WORKDIR/vocoder/model if present)")
  p.add_argument("--vocoder-steps", type=_positive_int, default=0,
                 help="also fine-tune the trained source-filter vocoder "
                 "(nsf) on the clips for this many steps; the voice saves "
                 "its own vocoder (default 0: keep the base vocoder)")
  p.add_argument("--progress", action=argparse.BooleanOptionalAction,
                 default=True,
                 help="show a progress bar with the support loss (default: "
                 "on)")
  p.add_argument("--no-speech-check", dest="speech_check",
                 action="store_false",
                 help="accept clips that do not sound like speech (the "
                 "check refuses noise)")
  p.set_defaults(func=_adapt)

  p = sub.add_parser("say", help="speak text with a saved voice",
                     description="Synthesize TEXT with a voice saved by "
                     "`adapt` and write a 16-bit WAV.")
  p.add_argument("--voice", required=True, help="voice folder from adapt")
  p.add_argument("text", nargs="+", help="the text to speak")
  p.add_argument("-o", "--output", required=True, help="WAV file to write")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--vocoder", default=None,
                 help="'griffin-lim' or a vocoder export (default: the "
                 "voice's)")
  p.set_defaults(func=_say)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the CLI; returns the exit status (2 for bad input)."""
  parser = build_parser()
  args = parser.parse_args(argv)
  from metatts import compile_cache  # pylint: disable=g-import-not-at-top
  compile_cache.enable()
  try:
    # XLA's compiled programs and the traces of adapt/say are kept: a warm
    # run skips compiling, tracing and lowering (docs/benchmarks.md).
    with compile_cache.storing_traces():
      return args.func(args)
  except KeyboardInterrupt:
    print("Interrupted (Ctrl-C): nothing was saved (an existing voice or WAV "
          "is unchanged).", file=sys.stderr, flush=True)
    return 130
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # disk full, permissions changed mid-run, ...
    print(f"error: {e}; nothing was replaced (saves are atomic), free space "
          "or fix the permissions and run again.", file=sys.stderr)
    return 1


def _exit_now(status: int) -> None:
  """Leaves without the interpreter's teardown, once everything is written.

  Tearing down jax/XLA, Orbax and flax (freeing every module, compiled
  program and thread pool) took 1.1-1.6 s after a warm ``say`` on the busy
  2-core CPU, 15-20% of the run (docs/benchmarks.md); nothing is left to
  write by then (saves wait for Orbax and rename into place; WAVs are
  closed). The ``atexit`` handlers (logging.shutdown and the like, 0.07 s)
  still run. With a thread other than this one still alive, the normal
  exit is used.
  """
  import atexit  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  if threading.active_count() > 1:
    sys.exit(status)
  atexit._run_exitfuncs()  # pylint: disable=protected-access
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):  # a closed pipe: nothing more to say
      pass
  os._exit(status)  # pylint: disable=protected-access


if __name__ == "__main__":
  status = main()
  if status == 130:
    # After an interrupt, leave without the interpreter's teardown: a
    # KeyboardInterrupt that landed inside JAX/XLA (while loading or
    # compiling) made it crash with SIGSEGV there. Everything is written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)  # pylint: disable=protected-access
  _exit_now(status)
