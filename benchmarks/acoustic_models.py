r"""Training speed, memory and synthesis time: attention vs duration Tacotron.

Compares the two acoustic models of ``metatts.models`` on the SAME batch of
the quickstart (``experiments/configs/quickstart.py``, ``get_config()``):
real features of the embedded default corpus from
``metatts.experiments.tts.prepare_data`` (built from the feature cache, about
15-30 s), 2 training speakers x 10 clips = 20 clips (one pre-training step of
``2 tasks x (5 support + 5 query)``), padded to the quickstart's one length
bucket (80 tokens, 256 frames, 80 mel bins). The clips are the same
utterances for both models; only the token units differ, as in the
quickstarts that configure them:

* ``tacotron``: the attention Tacotron as the old quickstart configured it,
  ``build_model("tacotron", {"size": "tiny", "reduction_factor": 4,
  "max_frames": 400, ...})`` on character tokens;
* ``duration_tacotron``: the duration Tacotron (RAD-TTS aligner, predicted
  durations, parallel decoder) as the new quickstart configures it,
  ``build_model("duration_tacotron", {"size": "tiny", "max_frames": 400,
  ...})`` on espeak-ng phoneme tokens;

with ``num_symbols``, ``num_mels`` and ``num_speakers`` (training speakers
+ 1, as ``tts.acoustic_config``) fitted to the data. Measured:

1. training: one jitted Adam step (``jax.value_and_grad`` of
   ``metatts.functional.make_loss_fn`` + ``optax.adam(1e-3)``, parameters
   from ``metatts.functional.split``, params and optimizer state donated),
   with prenet/dropout seeds as the sampler gives them. Compile time
   (``lower`` + ``compile``) is reported on its own; after 2 warm-up steps the
   two models are timed in interleaved rounds (``--rounds`` rounds of
   ``--steps`` steps, alternating the models, so both see the same load) and
   steps/s and clips/s are the median over rounds;
2. memory: XLA's estimate of the compiled step
   (``compiled.memory_analysis()``: argument, output and temp bytes) and the
   peak RSS of a fresh subprocess per model that only loads the batch,
   builds the model, compiles and runs 3 steps (its RSS before compiling is
   given too). The peak is ``VmHWM`` of ``/proc/self/status``:
   ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is kept in the JSON, but a
   forked child inherits the parent's maximum, so it reads the parent's
   size whenever the parent was larger (both models gave exactly the
   parent's 1596 MiB in a first try). The two subprocesses run while this
   process compiles its own steps, so the compile times are measured beside
   them; they finish before anything is timed;
3. synthesis of one sentence (the batch's first utterance): the model's
   ``infer`` jitted over its parameters, ``max_frames=400``, median of
   ``--synth_repeats`` interleaved calls after compilation. The untrained
   attention Tacotron is run with its stop token disabled, so both models
   produce the full 400-frame budget (the cost of the duration model does not
   depend on the length, the attention model's grows with the decoder steps
   it runs; per-frame figures are given).

Models are untrained (seed 0): speed and memory do not depend on the weights.

Usage (2-core CPU, about 3-5 min)::

  .venv/bin/python benchmarks/acoustic_models.py \
      [--rounds 7] [--steps 10] [--synth_repeats 5] \
      [--out runs/bench/acoustic_models.json]

It prints a markdown table (results: docs/benchmarks.md).

References:
  Shen et al. (2018), Natural TTS synthesis by conditioning WaveNet on mel
    spectrogram predictions (Tacotron 2), ICASSP, arXiv:1712.05884.
  Shen et al. (2020), Non-Attentive Tacotron, arXiv:2010.04301.
  Badlani et al. (2021), One TTS alignment to rule them all,
    arXiv:2108.10447.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

import numpy as np

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

NUM_SPEAKERS_IN_BATCH, CLIPS_PER_SPEAKER = 2, 10
MAX_FRAMES = 400
MODELS = {
    # name -> (token units, model config as the quickstart wrote it)
    "tacotron": ("characters", {"size": "tiny", "reduction_factor": 4,
                                "max_frames": MAX_FRAMES}),
    "duration_tacotron": ("phonemes", {"size": "tiny",
                                       "max_frames": MAX_FRAMES}),
}


def _load_data(symbols: str):
  sys.path.insert(0, os.path.join(_ROOT, "experiments", "configs"))
  import quickstart  # pylint: disable=g-import-not-at-top
  from metatts.experiments import tts  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config()
  config.data.features.symbols = symbols
  return tts.prepare_data(config, progress=False)


def make_batches(out_dir: str) -> Dict[str, Dict[str, Any]]:
  """Writes one ``.npz`` batch + model config per model; returns their info.

  The same utterances for both models: 2 training speakers (a seeded draw)
  x the first 10 of their clips that fit the bucket in both token units.
  """
  data = {name: _load_data(sym) for name, (sym, _) in MODELS.items()}
  first = data["tacotron"]
  lt = min(d.buckets.tokens[-1] for d in data.values())
  lf = min(d.buckets.frames[-1] for d in data.values())
  by_id = {name: {e.utt_id: e for s in d.speakers for e in d.train[s]}
           for name, d in data.items()}
  rng = np.random.default_rng(0)
  speakers = [str(s) for s in rng.choice(first.speakers,
                                         NUM_SPEAKERS_IN_BATCH,
                                         replace=False)]
  utts: List[Tuple[int, str]] = []
  for spk in speakers:
    ok = [e.utt_id for e in first.train[spk]
          if all(e.utt_id in by_id[n] and len(by_id[n][e.utt_id].tokens) <= lt
                 and len(by_id[n][e.utt_id].mel) <= lf for n in MODELS)]
    if len(ok) < CLIPS_PER_SPEAKER:
      raise ValueError(f"speaker {spk} has {len(ok)} clips within {lt} "
                       f"tokens / {lf} frames; need {CLIPS_PER_SPEAKER}.")
    utts += [(first.speakers.index(spk), u) for u in ok[:CLIPS_PER_SPEAKER]]
  info = {}
  mels0 = None
  for name, d in data.items():
    b = len(utts)
    exs = [by_id[name][u] for _, u in utts]
    n_mels = exs[0].mel.shape[1]
    tokens = np.zeros((b, lt), np.int32)
    mels = np.zeros((b, lf, n_mels), np.float32)
    tl, ml = np.zeros((b,), np.int32), np.zeros((b,), np.int32)
    for i, e in enumerate(exs):
      tokens[i, :len(e.tokens)] = e.tokens
      mels[i, :len(e.mel)] = e.mel
      tl[i], ml[i] = len(e.tokens), len(e.mel)
    if mels0 is None:
      mels0 = mels
    elif not np.allclose(mels, mels0, atol=1e-5):
      raise ValueError("the two feature caches give different mels for the "
                       "same utterances; the batch would not be the same.")
    path = os.path.join(out_dir, f"{name}.npz")
    np.savez(path, tokens=tokens, token_lengths=tl, mels=mels,
             mel_lengths=ml, speaker_ids=np.asarray([s for s, _ in utts],
                                                    np.int32),
             seeds=np.arange(1, b + 1, dtype=np.uint32))
    model_cfg = dict(MODELS[name][1],
                     num_symbols=int(d.feature_config.num_symbols),
                     num_mels=int(d.feature_config.n_mels),
                     num_speakers=len(d.speakers) + 1)
    info[name] = dict(batch=path, model=model_cfg, symbols=MODELS[name][0],
                      text=exs[0].text,
                      mean_tokens=float(tl.mean()),
                      mean_frames=float(ml.mean()),
                      shape=dict(tokens=list(tokens.shape),
                                 mels=list(mels.shape)))
  return info


def _batch(path: str):
  from metatts.types import TTSBatch  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  z = np.load(path)
  return TTSBatch(*(jnp.asarray(z[k]) for k in TTSBatch._fields))


class Bench:
  """One model: its jitted, donated Adam step and jitted synthesis."""

  def __init__(self, name: str, model_cfg: Dict[str, Any], batch_path: str):
    import jax  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top
    from metatts import functional, models  # pylint: disable=g-import-not-at-top
    self.name = name
    self.batch = _batch(batch_path)
    model = models.build_model(name, model_cfg, 0)
    graphdef, self.params, rest = functional.split(model)
    self.num_params = functional.count(self.params)
    opt = optax.adam(1e-3)
    self.opt_state = opt.init(self.params)
    loss_fn = functional.make_loss_fn(graphdef, rest)

    def step(params, opt_state, batch):
      (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(params,
                                                                   batch)
      updates, opt_state = opt.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    self._jit_step = jax.jit(step, donate_argnums=(0, 1))
    stop = 1.01 if name == "tacotron" else 0.5  # never stops: full budget

    def synth(params, tokens, token_lengths, speaker_ids):
      m = functional.merge(graphdef, params, rest)
      out = m.infer(tokens, token_lengths, speaker_ids,
                    max_frames=MAX_FRAMES, stop_threshold=stop)
      return out.mel, out.lengths

    self._jit_synth = jax.jit(synth)
    self.compiled = None
    self.synth_compiled = None

  def compile(self) -> float:
    t0 = time.perf_counter()
    self.compiled = self._jit_step.lower(self.params, self.opt_state,
                                         self.batch).compile()
    return time.perf_counter() - t0

  def memory(self) -> Dict[str, int]:
    ma = self.compiled.memory_analysis()
    if ma is None:
      return {}
    return {k: int(getattr(ma, f"{k}_size_in_bytes"))
            for k in ("argument", "output", "temp", "generated_code")}

  def steps(self, n: int) -> float:
    t0 = time.perf_counter()
    loss = None
    for _ in range(n):
      self.params, self.opt_state, loss = self.compiled(
          self.params, self.opt_state, self.batch)
    loss.block_until_ready()
    if not np.isfinite(float(loss)):
      raise FloatingPointError(f"{self.name}: loss {float(loss)}")
    return time.perf_counter() - t0

  def _synth_args(self):
    b = self.batch
    return (self.params, b.tokens[:1], b.token_lengths[:1],
            b.speaker_ids[:1])

  def compile_synth(self) -> float:
    t0 = time.perf_counter()
    self.synth_compiled = self._jit_synth.lower(*self._synth_args()).compile()
    return time.perf_counter() - t0

  def synth(self) -> Tuple[float, int]:
    t0 = time.perf_counter()
    mel, lengths = self.synth_compiled(*self._synth_args())
    mel.block_until_ready()
    return time.perf_counter() - t0, int(lengths[0])


def _rss_mib(field: str = "VmRSS") -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024.0
  return float("nan")


def worker(name: str, info_path: str) -> None:
  """Subprocess: build, compile, run 3 steps; print its peak RSS as JSON.

  The peak is the kernel's high-water mark of this process's resident set
  (``VmHWM``), which ``execve`` resets; ``ru_maxrss`` is printed too, but on
  Linux a child started by ``fork`` + ``exec`` inherits the parent's maximum
  at the fork in it, so it can only be read when the parent was smaller.
  """
  with open(info_path) as f:
    info = json.load(f)[name]
  b = Bench(name, info["model"], info["batch"])
  before = _rss_mib()
  t0 = time.perf_counter()
  b.compile()
  compile_s = time.perf_counter() - t0
  b.steps(3)
  print("WORKER " + json.dumps(dict(
      rss_before_compile_mib=before, peak_rss_mib=_rss_mib("VmHWM"),
      ru_maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss /
      1024.0, worker_compile_s=compile_s)), flush=True)


def _load() -> str:
  return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def _mib(x: float) -> str:
  return f"{x / 2**20:.1f}"


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rounds", type=int, default=7)
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--synth_repeats", type=int, default=5)
  p.add_argument("--out", default="")
  p.add_argument("--worker", default="", help=argparse.SUPPRESS)
  p.add_argument("--info", default="", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    worker(args.worker, args.info)
    return

  import jax  # pylint: disable=g-import-not-at-top
  t_start = time.time()
  load_start = _load()
  print(f"load average at start: {load_start}", flush=True)
  tmp = tempfile.mkdtemp(prefix="acoustic_bench_")
  t0 = time.perf_counter()
  info = make_batches(tmp)
  data_s = time.perf_counter() - t0
  info_path = os.path.join(tmp, "info.json")
  with open(info_path, "w") as f:
    json.dump(info, f)
  print(f"data: {data_s:.1f} s; " + "; ".join(
      f"{n}: tokens {i['shape']['tokens']} ({i['symbols']}, mean "
      f"{i['mean_tokens']:.1f}), mels {i['shape']['mels']} (mean "
      f"{i['mean_frames']:.1f} frames)" for n, i in info.items()), flush=True)

  # The memory subprocesses run while this process compiles (the machine
  # is shared anyway); they finish before anything is timed.
  parent_rss_at_fork = _rss_mib("VmHWM")
  procs = {name: subprocess.Popen(
      [sys.executable, os.path.abspath(__file__), "--worker", name,
       "--info", info_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for name in info}
  results: Dict[str, Dict[str, Any]] = {}
  benches = {}
  for name, i in info.items():
    b = Bench(name, i["model"], i["batch"])
    c = b.compile()
    b.steps(2)  # warm-up
    benches[name] = b
    results[name] = dict(params=b.num_params, compile_s=c,
                         xla_memory=b.memory(), step_s=[])
    print(f"{name}: {b.num_params} params, compile {c:.1f} s, XLA memory "
          f"{results[name]['xla_memory']}", flush=True)
  for name, proc in procs.items():
    out, err = proc.communicate()
    line = [l for l in out.splitlines() if l.startswith("WORKER ")]
    if proc.returncode or not line:
      raise RuntimeError(f"worker {name} failed:\n{err[-3000:]}")
    results[name].update(json.loads(line[-1][len("WORKER "):]))
    print(f"{name}: fresh process {line[-1][len('WORKER '):]} (parent "
          f"peak at fork {parent_rss_at_fork:.0f} MiB)", flush=True)
  for r in range(args.rounds):
    for name, b in (benches.items() if r % 2 == 0 else
                    reversed(list(benches.items()))):
      results[name]["step_s"].append(b.steps(args.steps) / args.steps)
    print(f"round {r + 1}/{args.rounds}: " + ", ".join(
        f"{n} {results[n]['step_s'][-1]:.3f} s/step" for n in benches),
          flush=True)
  for name, b in benches.items():
    results[name]["synth_compile_s"] = b.compile_synth()
    b.synth()  # warm-up
    results[name]["synth_s"] = []
  for _ in range(args.synth_repeats):
    for name, b in benches.items():
      s, n = b.synth()
      results[name]["synth_s"].append(s)
      results[name]["synth_frames"] = n
  del benches
  load_end = _load()
  b = NUM_SPEAKERS_IN_BATCH * CLIPS_PER_SPEAKER
  for r in results.values():
    r["steps_per_s"] = 1.0 / statistics.median(r["step_s"])
    r["steps_per_s_range"] = [1.0 / max(r["step_s"]), 1.0 / min(r["step_s"])]
    r["clips_per_s"] = r["steps_per_s"] * b
    r["synth_ms"] = 1e3 * statistics.median(r["synth_s"])
  old, new = results["tacotron"], results["duration_tacotron"]
  # Per round, both models ran back to back under the same load: the median
  # of the per-round ratios is the figure that survives a shared machine.
  paired = statistics.median(o / n for o, n in zip(old["step_s"],
                                                   new["step_s"]))
  summary = dict(
      date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t_start)),
      machine=f"{platform.processor() or platform.machine()}, "
              f"{os.cpu_count()} cores, {jax.devices()[0].platform}, "
              f"jax {jax.__version__}, Python {platform.python_version()}",
      load_start=load_start, load_end=load_end,
      wall_s=time.time() - t_start, data_s=data_s,
      batch={n: {k: i[k] for k in ("symbols", "shape", "mean_tokens",
                                   "mean_frames", "model", "text")}
             for n, i in info.items()},
      results=results,
      speedup=new["steps_per_s"] / old["steps_per_s"],
      paired_speedup=paired)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(summary, f, indent=1)

  def row(label, fn):
    return f"| {label} | {fn(old)} | {fn(new)} | {fn_ratio(fn)} |"

  def fn_ratio(fn):
    try:
      return f"{float(fn(new).split()[0]) / float(fn(old).split()[0]):.2f}x"
    except ValueError:
      return ""

  xla = lambda r, k: _mib(r["xla_memory"].get(k, float("nan")))
  lines = [
      f"{summary['date']}; {summary['machine']}; load average "
      f"{load_start} at start, {load_end} at end; {summary['wall_s']:.0f} s "
      "wall in all.",
      "",
      "| | attention Tacotron (old quickstart) | duration Tacotron (new "
      "quickstart) | new / old |",
      "|---|---|---|---|",
      row("tokens", lambda r: "characters" if r is old else "phonemes"),
      row("parameters", lambda r: str(r["params"])),
      row("training steps/s (median of rounds)",
          lambda r: f"{r['steps_per_s']:.2f}"),
      row("training steps/s (slowest-fastest round)",
          lambda r: "{:.2f}-{:.2f}".format(*r["steps_per_s_range"])),
      "| training speed, new / old, median of the per-round ratios | | | "
      f"{paired:.2f}x |",
      row("training clips/s", lambda r: f"{r['clips_per_s']:.1f}"),
      row("step compile, s (beside the memory subprocesses)",
          lambda r: f"{r['compile_s']:.1f}"),
      row("XLA memory of the step: argument + output + temp, MiB",
          lambda r: _mib(sum(r["xla_memory"].get(k, 0) for k in
                             ("argument", "output", "temp")))),
      row("XLA temp (activations), MiB", lambda r: xla(r, "temp")),
      row("XLA argument (params, Adam state, batch), MiB",
          lambda r: xla(r, "argument")),
      row("peak RSS (VmHWM) of a fresh process (compile + 3 steps), MiB",
          lambda r: f"{r['peak_rss_mib']:.0f}"),
      row("RSS of that process before compiling, MiB",
          lambda r: f"{r['rss_before_compile_mib']:.0f}"),
      row(f"synthesis of one sentence, {MAX_FRAMES} frames, ms (median)",
          lambda r: f"{r['synth_ms']:.0f}"),
      row("synthesis compile, s", lambda r: f"{r['synth_compile_s']:.1f}"),
  ]
  print("\n".join(lines))


if __name__ == "__main__":
  main()
