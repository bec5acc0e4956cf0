r"""Cold and warm ``python -m metatts adapt`` / ``say``, with a phase breakdown.

What a user waits for when cloning a voice from the command line (issue 13,
item 5: warm ``say`` of one sentence in 2 s, warm ``adapt`` of 5 clips for
20 steps in 5 s, on a 2-core CPU):

1. Clips: 5 clips of one embedded-corpus speaker with their transcripts
   (``--speaker``/``--utterances``, copied from ``--corpus``, the
   quickstart's ``~/.cache/metatts/synth-default``) into a temporary folder,
   or ``--clips DIR``.
2. A fresh compilation-cache folder (``METATTS_COMPILE_CACHE``); then
   ``--runs`` rounds of::

     python -m metatts adapt --model MODEL --clips CLIPS --out VOICE --steps 20 --no-progress
     python -m metatts say --voice VOICE -o out.wav "The birch canoe slid on the smooth planks."

   The first round is *cold* (empty cache), the rest *warm*; every command
   is a fresh subprocess and is timed from launch to exit (wall clock, and
   the child's user + system CPU seconds, which a busy machine inflates
   less).
3. A phase breakdown of each command: after the plain timing rounds, the
   same commands run ``--runs`` more times, warm, in a child that times
   (a) the interpreter's start up to its first line, (b) every ``import``
   (the outermost ``import`` statements, with what they pull in), (c) the
   library calls of the voice path (``api.load`` / ``load_voice``, the
   Orbax restore, the abstract model build, clip preparation, adaptation,
   Tacotron inference, the vocoder, the voice save and the WAV write) and
   (d) jax's own compile events (``jax.monitoring``): tracing, lowering to
   MLIR, XLA compilation or persistent-cache retrieval, and the cache
   hits / misses, in total and for the six costliest functions. Phases
   nest; the table prints inclusive wall and CPU seconds (median over the
   runs). The child leaves like ``python -m metatts`` does.

The WAV of every ``say`` is hashed: all runs must give the same bytes.

Usage (2-3 min on an idle 2-core CPU, about 6 min on a busy one)::

  .venv/bin/python benchmarks/cli_warm.py --model runs/quickstart [--runs 3]
  # another checkout, e.g. the code before a change:
  git archive COMMIT metatts | tar -x -C /tmp/before
  .venv/bin/python benchmarks/cli_warm.py --model runs/quickstart \
      --repo /tmp/before
  # both, warm runs interleaved (side by side in one run, with the ratio):
  .venv/bin/python benchmarks/cli_warm.py --model runs/quickstart \
      --against /tmp/before

It prints a markdown table; results and the command: docs/benchmarks.md
("CLI `adapt` and `say`: cold and warm compilation cache"). Quote the load
(``uptime``) with any figure: the script prints it before and after.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SENTENCE = "The birch canoe slid on the smooth planks."
SPEAKER = "espeak-gb-f2_00"
UTTERANCES = ("0018", "0028", "0030", "0038", "0048")
JAX_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "jax: trace to jaxpr",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "jax: lower to MLIR",
    "/jax/core/compile/backend_compile_duration":
        "jax: XLA compile or cache load",
    "/jax/compilation_cache/cache_retrieval_time_sec":
        "jax: persistent-cache reads",
}
JAX_COUNTS = {
    "/jax/compilation_cache/compile_requests_use_cache": "cache lookups",
    "/jax/compilation_cache/cache_hits": "cache hits",
}


# ----------------------------------------------------------------------------
# The instrumented child: ``cli_warm.py --child LAUNCH_TIME -- CLI ARGS``.


class _Recorder:
  """Inclusive wall seconds of nested phases (by name, summed over calls)."""

  def __init__(self):
    self.seconds = collections.defaultdict(float)
    self.cpu = collections.defaultdict(float)  # process CPU, all threads
    self.calls = collections.Counter()
    self.order = []  # (depth, name) in first-seen order
    self.stack = []

  @contextlib.contextmanager
  def phase(self, name):
    key = " / ".join(self.stack + [name])
    if key not in self.seconds:
      self.order.append((len(self.stack), key))
    self.stack.append(name)
    start, cpu = time.perf_counter(), time.process_time()
    try:
      yield
    finally:
      self.seconds[key] += time.perf_counter() - start
      self.cpu[key] += time.process_time() - cpu
      self.calls[key] += 1
      self.stack.pop()

  def wrap(self, owner, attr, name):
    fn = getattr(owner, attr, None)
    if fn is None:  # an older metatts (--repo) without it
      return
    rec = self

    def wrapped(*args, **kwargs):
      with rec.phase(name):
        return fn(*args, **kwargs)

    setattr(owner, attr, wrapped)


def _child(launched: float, argv) -> int:
  """Runs the CLI in this process with phases timed; prints a JSON line."""
  started = time.time()
  t0, cpu0 = time.perf_counter(), time.process_time()
  rec = _Recorder()
  import_seconds, import_cpu = [0.0], [0.0]
  depth = [0]
  real_import = builtins.__import__

  def timed_import(*args, **kwargs):
    if depth[0]:
      return real_import(*args, **kwargs)
    depth[0] += 1
    start, cpu = time.perf_counter(), time.process_time()
    try:
      return real_import(*args, **kwargs)
    finally:
      import_seconds[0] += time.perf_counter() - start
      import_cpu[0] += time.process_time() - cpu
      depth[0] -= 1

  builtins.__import__ = timed_import
  sys.path.insert(0, os.getcwd())  # the checkout the parent runs (--repo)
  # What the CLI imports anyway, imported here so its calls can be timed.
  import jax  # pylint: disable=g-import-not-at-top
  from jax import monitoring  # pylint: disable=g-import-not-at-top
  event_seconds = collections.defaultdict(float)
  event_counts = collections.Counter()

  by_function = collections.defaultdict(float)

  def on_duration(event, duration, **kwargs):
    if event in JAX_EVENTS:
      event_seconds[JAX_EVENTS[event]] += duration
      event_counts[JAX_EVENTS[event]] += 1
      if kwargs.get("fun_name"):
        by_function[f"{JAX_EVENTS[event]}: {kwargs['fun_name']}"] += duration

  def on_event(event, **kwargs):
    del kwargs
    if event in JAX_COUNTS:
      event_counts[JAX_COUNTS[event]] += 1

  monitoring.register_event_duration_secs_listener(on_duration)
  monitoring.register_event_listener(on_event)
  from metatts import __main__ as cli  # pylint: disable=g-import-not-at-top
  from metatts import clips  # pylint: disable=g-import-not-at-top
  from metatts import vocoders  # pylint: disable=g-import-not-at-top
  from metatts.audio import io as aio  # pylint: disable=g-import-not-at-top
  del jax
  try:  # checkouts with the say cache (metatts.say_cache, metatts.synthesis)
    from metatts import say_cache  # pylint: disable=g-import-not-at-top
    from metatts import synthesis  # pylint: disable=g-import-not-at-top
    rec.wrap(say_cache, "load", "say_cache.load (cached voice)")
    rec.wrap(say_cache, "store", "say_cache.store")
    rec.wrap(synthesis, "synthesize", "synthesis.synthesize (cached voice)")
    light_say = argv[0] == "say"
  except ImportError:
    light_say = False
  if not light_say:
    # The model stack, imported here so that its calls can be timed; a
    # `say` with the voice cache does not import it, so neither does this.
    from metatts import api  # pylint: disable=g-import-not-at-top
    from metatts import voice  # pylint: disable=g-import-not-at-top
    from metatts.training import export  # pylint: disable=g-import-not-at-top
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    rec.wrap(api, "load", "api.load")
    rec.wrap(api, "load_voice", "api.load_voice")
    rec.wrap(export, "build_from_config", "abstract model (eval_shape)")
    rec.wrap(ocp.StandardCheckpointer, "restore", "Orbax restore")
    rec.wrap(vocoders, "load_vocoder", "load_vocoder")
    rec.wrap(api.TTS, "__init__", "TTS() (hash, jit wrappers)")
    rec.wrap(voice, "adapt", "voice.adapt (20 steps)")
    rec.wrap(voice, "synthesize", "voice.synthesize")
    rec.wrap(voice, "split_text", "split_text")
    rec.wrap(api.Voice, "save", "Voice.save")
  rec.wrap(clips, "prepare_clips", "prepare_clips (read, check, mels)")
  rec.wrap(clips, "make_batch", "make_batch")
  rec.wrap(vocoders.GriffinLimVocoder, "__call__", "Griffin-Lim")
  rec.wrap(aio, "save_wav", "save_wav")
  status = 1
  try:
    with rec.phase("cli.main"):
      status = cli.main(argv)
  finally:
    total = time.perf_counter() - t0
    builtins.__import__ = real_import
    result = {
        "status": status,
        "startup": started - launched,
        "in_process": total,
        "in_process_cpu": time.process_time() - cpu0,
        "imports": import_seconds[0],
        "imports_cpu": import_cpu[0],
        "phases": [(d, k, rec.seconds[k], rec.calls[k], rec.cpu[k])
                   for d, k in rec.order],
        "jax": dict(event_seconds),
        "jax_counts": dict(event_counts),
        "jax_by_function": dict(by_function),
    }
    sys.stdout.flush()
    print("CLI_WARM_JSON " + json.dumps(result), flush=True)
  # Leave as `python -m metatts` does (without the interpreter's teardown,
  # where the checkout has metatts.__main__._exit_now).
  getattr(cli, "_exit_now", sys.exit)(status)
  return status


# ----------------------------------------------------------------------------
# The parent.


def _make_clips(corpus: str, speaker: str, utterances, out: str) -> str:
  folder = os.path.join(os.path.expanduser(corpus), speaker)
  os.makedirs(out, exist_ok=True)
  for u in utterances:
    for ext in (".wav", ".txt"):
      src = os.path.join(folder, f"{speaker}_{u}{ext}")
      if not os.path.isfile(src):
        raise SystemExit(f"{src} is missing: build the embedded corpus "
                         "(make quickstart) or pass --clips DIR.")
      shutil.copy(src, out)
  return out


def _run(cmd, env, cwd=None):
  """(wall seconds, child CPU seconds, stdout) of one subprocess."""
  before = os.times()
  start = time.perf_counter()
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True,
                        check=False, cwd=cwd)
  wall = time.perf_counter() - start
  after = os.times()
  cpu = (after.children_user - before.children_user +
         after.children_system - before.children_system)
  if proc.returncode != 0:
    raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                     f"{proc.stdout}\n{proc.stderr}")
  return wall, cpu, proc.stdout


def _md5(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.md5(f.read()).hexdigest()


def _uptime() -> str:
  try:
    with open("/proc/loadavg", encoding="utf-8") as f:
      return "load average " + " ".join(f.read().split()[:3])
  except OSError:
    return "load average unknown"


def _fmt(values):
  med = statistics.median(values)
  if len(values) == 1:
    return f"{med:.2f} s"
  return f"{med:.2f} s ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
  if len(sys.argv) > 2 and sys.argv[1] == "--child":
    sep = sys.argv.index("--")
    sys.exit(_child(float(sys.argv[2]), sys.argv[sep + 1:]))
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="runs/quickstart",
                 help="a `make quickstart` workdir (not modified)")
  p.add_argument("--clips", default=None,
                 help="clip folder (default: 5 clips copied from --corpus)")
  p.add_argument("--corpus", default="~/.cache/metatts/synth-default")
  p.add_argument("--speaker", default=SPEAKER)
  p.add_argument("--utterances", default=",".join(UTTERANCES))
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--runs", type=int, default=3,
                 help="warm runs (each command), and instrumented runs")
  p.add_argument("--cache", default=None,
                 help="compilation-cache folder (default: a fresh temporary "
                 "one; emptied first)")
  p.add_argument("--no-phases", dest="phases", action="store_false",
                 help="skip the instrumented runs")
  p.add_argument("--keep", default=None,
                 help="keep the voice and WAVs in this folder")
  p.add_argument("--out", default=None, help="write the results as JSON")
  p.add_argument("--repo", default=None,
                 help="run the metatts of this checkout (its root folder; "
                 "default: the installed one), e.g. a `git worktree` of an "
                 "older commit to compare")
  p.add_argument("--against", default=None,
                 help="another checkout (its root folder, e.g. the code "
                 "before a change): after the rounds above, warm `adapt` + "
                 "`say` rounds alternate between this metatts and that one "
                 "(--runs each, own cache folders) and a side-by-side table "
                 "with the ratio is printed")
  args = p.parse_args()

  args.model = os.path.abspath(args.model)
  work = os.path.abspath(args.keep or tempfile.mkdtemp(prefix="cli_warm_"))
  os.makedirs(work, exist_ok=True)
  clips_dir = os.path.abspath(args.clips) if args.clips else _make_clips(
      args.corpus, args.speaker, args.utterances.split(","),
      os.path.join(work, "clips"))
  cache = os.path.abspath(args.cache or os.path.join(work, "xla"))
  shutil.rmtree(cache, ignore_errors=True)
  env = dict(os.environ, METATTS_COMPILE_CACHE=cache)
  py = sys.executable
  voice_dir = os.path.join(work, "voice")
  adapt = ["-m", "metatts", "adapt", "--model", args.model, "--clips",
           clips_dir, "--out", voice_dir, "--steps", str(args.steps),
           "--no-progress"]

  def say(wav):
    return ["-m", "metatts", "say", "--voice", voice_dir, "-o", wav,
            SENTENCE]

  print(f"before: {_uptime()}; {os.cpu_count()} CPUs; cache {cache}",
        flush=True)
  times = {"adapt": [], "say": []}
  hashes = set()
  for i in range(args.runs + 1):
    label = "cold" if i == 0 else f"warm{i}"
    shutil.rmtree(voice_dir, ignore_errors=True)
    wav = os.path.join(work, f"out_{label}.wav")
    a = _run([py] + adapt, env, args.repo)
    s = _run([py] + say(wav), env, args.repo)
    hashes.add(_md5(wav))
    times["adapt"].append(a[:2])
    times["say"].append(s[:2])
    print(f"{label}: adapt {a[0]:.2f} s (cpu {a[1]:.2f} s), say {s[0]:.2f} s "
          f"(cpu {s[1]:.2f} s)", flush=True)

  side = None
  if args.against:
    # Interleaved, so that both checkouts see the same machine state.
    other_env = dict(env, METATTS_COMPILE_CACHE=os.path.join(work, "xla_b"))
    shutil.rmtree(other_env["METATTS_COMPILE_CACHE"], ignore_errors=True)
    sides = (("this", args.repo, env), ("against", args.against, other_env))
    side = {(n, c): [] for n, _, _ in sides for c in ("adapt", "say")}
    for i in range(args.runs + 1):  # round 0 fills the other cache
      for name, repo, e in sides:
        shutil.rmtree(voice_dir, ignore_errors=True)
        wav = os.path.join(work, f"out_{name}{i}.wav")
        a = _run([py] + adapt, e, repo)
        s_ = _run([py] + say(wav), e, repo)
        hashes.add(_md5(wav))
        if i:
          side[(name, "adapt")].append(a[0])
          side[(name, "say")].append(s_[0])
      if i:
        print(f"interleaved {i}: " + ", ".join(
            f"{n} adapt {side[(n, 'adapt')][-1]:.2f} s say "
            f"{side[(n, 'say')][-1]:.2f} s" for n, _, _ in sides), flush=True)

  phases = {"adapt": [], "say": []}
  if args.phases:
    me = os.path.abspath(__file__)
    for i in range(args.runs):
      for name, cmd in (("adapt", adapt), ("say", say(os.path.join(
          work, f"out_phases{i}.wav")))):
        if name == "adapt":
          shutil.rmtree(voice_dir, ignore_errors=True)
        launched = time.time()
        wall, _, out = _run([py, me, "--child", repr(launched), "--"] +
                            cmd[2:], env, args.repo)
        line = [x for x in out.splitlines() if x.startswith("CLI_WARM_JSON ")]
        result = json.loads(line[-1].split(" ", 1)[1])
        result["wall"] = wall
        phases[name].append(result)
      hashes.add(_md5(os.path.join(work, f"out_phases{i}.wav")))
  print(f"after: {_uptime()}", flush=True)

  print("\n| command | cold wall (cpu) | warm wall, median (range) | warm cpu, "
        "median |\n|---|---|---|---|")
  for name in ("adapt", "say"):
    cold, warm = times[name][0], times[name][1:]
    print(f"| `{name}` | {cold[0]:.2f} s ({cold[1]:.2f} s) | "
          f"{_fmt([w for w, _ in warm])} | "
          f"{statistics.median([c for _, c in warm]):.2f} s |")
  if side:
    print(f"\nInterleaved warm runs ({args.runs} each): this checkout "
          f"({args.repo or 'installed'}) against {args.against}\n\n"
          "| command | this: median (range) | against: median (range) | "
          "against / this |\n|---|---|---|---|")
    for name in ("adapt", "say"):
      a, b = side[("this", name)], side[("against", name)]
      print(f"| `{name}` | {_fmt(a)} | {_fmt(b)} | "
            f"{statistics.median(b) / statistics.median(a):.2f}x |")
  print(f"\nsay WAV md5: {sorted(hashes)} "
        f"({'identical' if len(hashes) == 1 else 'DIFFERENT'} over all runs)")

  for name in ("adapt", "say"):
    runs = phases[name]
    if not runs:
      continue
    print(f"\nPhases of a warm `{name}` (median of {len(runs)} instrumented "
          "runs; inclusive wall seconds, and the process's CPU seconds over "
          "all threads):\n\n| phase | wall s | CPU s | calls |\n|---|---|---|"
          "---|")
    med = lambda f: statistics.median(f(r) for r in runs)  # noqa: E731
    print(f"| launch to exit | {med(lambda r: r['wall']):.2f} | | |")
    print(f"| interpreter start | {med(lambda r: r['startup']):.2f} | | |")
    print(f"| in the process | {med(lambda r: r['in_process']):.2f} | "
          f"{med(lambda r: r['in_process_cpu']):.2f} | |")
    print(f"| all imports (outermost `import`s) | "
          f"{med(lambda r: r['imports']):.2f} | "
          f"{med(lambda r: r['imports_cpu']):.2f} | |")
    for depth, key, _, calls, _ in runs[0]["phases"]:
      secs = med(lambda r, k=key: {p[1]: p[2] for p in r["phases"]}.get(k, 0))
      cpu = med(lambda r, k=key: {p[1]: p[4] for p in r["phases"]}.get(k, 0))
      leaf = key.split(" / ")[-1]
      print(f"| {'&nbsp;' * 4 * depth}{leaf} | {secs:.2f} | {cpu:.2f} | "
            f"{calls} |")
    for key in JAX_EVENTS.values():
      secs = med(lambda r, k=key: r["jax"].get(k, 0.0))
      n = med(lambda r, k=key: r["jax_counts"].get(k, 0))
      print(f"| {key} (all) | {secs:.2f} | | {n:g} |")
    for key in JAX_COUNTS.values():
      n = med(lambda r, k=key: r["jax_counts"].get(k, 0))
      print(f"| jax: {key} | | | {n:g} |")
    names = sorted({k for r in runs for k in r["jax_by_function"]})
    top = sorted(((med(lambda r, k=k: r["jax_by_function"].get(k, 0.0)), k)
                  for k in names), reverse=True)[:6]
    for secs, key in top:
      print(f"| &nbsp;&nbsp;&nbsp;&nbsp;{key} | {secs:.2f} | | |")
  if args.out:
    with open(args.out, "w", encoding="utf-8") as f:
      json.dump({"times": times, "phases": phases, "hashes": sorted(hashes),
                 "interleaved": {f"{k[0]}/{k[1]}": v
                                 for k, v in (side or {}).items()}},
                f, indent=1)


if __name__ == "__main__":
  main()
