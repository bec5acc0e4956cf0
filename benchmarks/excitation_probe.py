r"""What a mel-conditioned source-filter vocoder can reach: a WORLD probe.

Issue 15: the NSF vocoder beats Griffin-Lim on MCD but not on speaker
similarity (SECS) or PocketSphinx WER, and its DSP half alone, excited by
the clip's own WORLD F0, is no better (docs/results/vocoder.md). Its
excitation is unit harmonics in voiced frames and noise in unvoiced ones.
Before a retrain, this probe asks WORLD (Morise et al. 2016) what each
ingredient is worth, on real clips of the embedded corpus, with no training:

* ``real``: the clip itself (the judges' ceiling);
* ``griffin-lim``: metatts' Griffin-Lim from the log-mel (the baseline);
* ``world``: WORLD analysis and resynthesis (F0, CheapTrick envelope, D4C
  band aperiodicity of the clip): the source-filter ceiling;
* ``world-mel-ap``: the envelope from the log-mel (``mel_to_linear``, what
  a mel-conditioned vocoder is given), the clip's F0 and aperiodicity: a
  perfect mixed excitation behind the mel's envelope;
* ``world-mel-binary``: as above with a binary aperiodicity (0 in voiced
  frames, 1 in unvoiced ones): the NSF vocoder's excitation;
* ``world-binary``: the clip's own envelope with the binary aperiodicity;
* ``dsp-random``: the NSF vocoder's DSP half of session 10
  (``metatts.models.nsf.shaped_excitation``: random-phase harmonics
  reshaped bin by bin in the STFT domain, no trained filter) from the
  log-mel with the clip's WORLD F0;
* ``dsp-world-pulses``: WORLD's own excitation (pulses and noise of a flat
  envelope) reshaped the same way (is it the excitation or the shaping?);
* ``conv-minimum`` / ``conv-zero``: that excitation filtered hop by hop by
  linear convolution with the mel envelope's minimum-phase or zero-phase
  impulse response (numpy, written here);
* ``dsp-conv``: the DSP half by convolution in the model
  (``nsf.convolved_excitation``: its own density-normalized pulses and
  noise, zero-phase envelope filter).

Each variant is judged by SECS against the speaker's other real clips
(Resemblyzer), PocketSphinx WER against the transcripts, and MCD against
the clip (``metatts.evaluation.mcd``), over ``--speakers`` speakers of
distinct voices x ``--clips`` clips.

Usage::

  .venv/bin/python benchmarks/excitation_probe.py [--speakers 8] [--clips 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

VARIANTS = ("real", "griffin-lim", "world", "world-mel-ap",
            "world-mel-binary", "world-binary", "dsp-random", "dsp-conv",
            "dsp-world-pulses", "conv-minimum", "conv-zero")
HARMONICS = 64  # the base NSF config


def _corpus_clips(corpus: str, n_speakers: int, n_clips: int, n_refs: int):
  """{speaker: (clip paths, reference paths)} of distinct voices."""
  speakers = sorted(d for d in os.listdir(corpus)
                    if os.path.isdir(os.path.join(corpus, d)))
  chosen, voices = [], set()
  for s in speakers:
    voice = s.rsplit("_", 1)[0]
    if voice in voices:
      continue
    voices.add(voice)
    chosen.append(s)
    if len(chosen) == n_speakers:
      break
  out = {}
  for s in chosen:
    wavs = sorted(os.path.join(corpus, s, f) for f in
                  os.listdir(os.path.join(corpus, s)) if f.endswith(".wav"))
    out[s] = (wavs[:n_clips], wavs[n_clips:n_clips + n_refs])
  return out


def _shape(excitation: np.ndarray, log_mel: np.ndarray, mel_config):
  """The DSP half's STFT-domain shaping of any excitation: each frame
  divided by its own mel envelope, times the target mel's envelope."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from metatts.audio import features as afeat  # pylint: disable=g-import-not-at-top
  frames = log_mel.shape[0]
  hop = mel_config.hop_length
  x = np.zeros(frames * hop, np.float32)
  x[:min(len(x), len(excitation))] = excitation[:len(x)]
  spec = afeat.stft(jnp.asarray(x), mel_config)
  fb = jnp.asarray(afeat.mel_filterbank(mel_config))
  own = jnp.einsum("tk,mk->tm", jnp.abs(spec), fb,
                   precision=jax.lax.Precision.HIGHEST)
  own = afeat.mel_to_linear(jnp.log(jnp.maximum(own, mel_config.log_floor)),
                            mel_config)
  env = afeat.mel_to_linear(jnp.asarray(log_mel), mel_config)
  env = jnp.concatenate([env, env[-1:]], axis=0)[:spec.shape[0]]
  scale = env / (own + 1e-3 * jnp.mean(own, axis=-1, keepdims=True) + 1e-8)
  return afeat.istft(spec * scale, mel_config, length=frames * hop)


def _pulse_filter(excitation: np.ndarray, log_mel: np.ndarray, mel_config,
                  phase: str = "minimum"):
  """Filters any excitation frame by frame with the mel envelope's impulse
  response by linear convolution (no wrap-around): each hop-long stretch,
  under a partition-of-unity Hann window, is convolved with its frame's
  minimum-phase (WORLD-like) or zero-phase response and overlap-added."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from metatts.audio import features as afeat  # pylint: disable=g-import-not-at-top
  frames, hop, n = log_mel.shape[0], mel_config.hop_length, mel_config.n_fft
  x = np.zeros((frames + 1) * hop, np.float32)
  x[:min(frames * hop, len(excitation))] = excitation[:frames * hop]
  # Segments of 2 hops centred on each frame, Hann (sums to 1 at hop).
  win = np.hanning(2 * hop + 1)[:-1].astype(np.float32)
  padded = np.concatenate([np.zeros(hop, np.float32), x])
  idx = np.arange(frames)[:, None] * hop + np.arange(2 * hop)[None]
  seg = padded[idx] * win  # [F, 2 hop], frame t centred on sample t * hop
  env = np.asarray(afeat.mel_to_linear(jnp.asarray(log_mel), mel_config))
  floor = 1e-3 * env.mean(-1, keepdims=True) + 1e-8
  if phase == "minimum":
    # The folded real cepstrum (Oppenheim & Schafer's minimum-phase
    # construction, as in WORLD).
    cep = np.fft.irfft(np.log(env + floor), n=n)
    fold = np.concatenate([[1.0], 2.0 * np.ones(n // 2 - 1), [1.0],
                           np.zeros(n // 2 - 1)])
    h = np.fft.irfft(np.exp(np.fft.rfft(cep * fold, n=n)), n=n)  # causal
  else:
    h = np.fft.fftshift(np.fft.irfft(env + floor, n=n), axes=-1)  # centred
  size = 2 * hop + n
  y_seg = np.fft.irfft(np.fft.rfft(seg, n=size) * np.fft.rfft(h, n=size),
                       n=size)  # [F, 2 hop + n]
  shift = 0 if phase == "minimum" else n // 2
  out = np.zeros(frames * hop + size, np.float64)
  for t in range(frames):
    out[t * hop:t * hop + size] += y_seg[t]
  return out[hop + shift:hop + shift + frames * hop]


def variants(wav: np.ndarray, sr: int, mel_config) -> dict:
  """Every variant's waveform of one clip (float64 for WORLD)."""
  import jax  # pylint: disable=g-import-not-at-top
  import pyworld  # pylint: disable=g-import-not-at-top
  from metatts import vocoders  # pylint: disable=g-import-not-at-top
  from metatts.audio import features as afeat  # pylint: disable=g-import-not-at-top
  x = wav.astype(np.float64)
  period = 1000.0 * mel_config.hop_length / sr
  f0, t = pyworld.harvest(x, sr, frame_period=period)
  f0 = pyworld.stonemask(x, f0, t, sr)
  sp = pyworld.cheaptrick(x, f0, t, sr, fft_size=mel_config.n_fft)
  ap = pyworld.d4c(x, f0, t, sr, fft_size=mel_config.n_fft)
  log_mel = np.asarray(afeat.log_mel_spectrogram(wav.astype(np.float32),
                                                 mel_config))
  mag = np.asarray(afeat.mel_to_linear(log_mel, mel_config), np.float64)
  n = min(len(f0), mag.shape[0])
  f0, sp, ap, mag = f0[:n], sp[:n], ap[:n], mag[:n]
  sp_mel = np.maximum(mag ** 2, 1e-12)
  # One gain per clip (WORLD's envelope has its own scale; loudness is
  # normalized by every judge anyway).
  sp_mel *= np.sum(sp) / np.sum(sp_mel)
  binary = np.where(f0[:, None] > 0, 0.0, 1.0) * np.ones_like(ap)
  binary = np.clip(binary, 1e-3, 1.0 - 1e-3)  # WORLD wants (0, 1)
  gl = vocoders.GriffinLimVocoder(mel_config)(log_mel, jax.random.key(0))
  from metatts.models import nsf  # pylint: disable=g-import-not-at-top
  frames = log_mel.shape[0]
  f0_frames = np.zeros(frames, np.float32)
  f0_frames[:min(frames, len(f0))] = f0[:frames]
  dsp = {"random": np.asarray(nsf.shaped_excitation(
      log_mel[None], f0_frames[None], jax.random.key(1), mel_config,
      HARMONICS))[0],
           "conv": np.asarray(nsf.convolved_excitation(
               log_mel[None], f0_frames[None], jax.random.key(1),
               mel_config))[0]}
  # WORLD's own excitation (pulses + noise, flat envelope), shaped in the
  # STFT domain like the DSP half: isolates the excitation from the shaping.
  flat = np.ones_like(sp) * np.mean(sp)
  pulses = pyworld.synthesize(f0, flat, np.ascontiguousarray(binary), sr,
                              period).astype(np.float32)
  dsp["world-pulses"] = np.asarray(_shape(pulses, log_mel, mel_config))
  # Unit pulses at the same instants (WORLD's excitation of a flat
  # envelope is nearly that), filtered by linear convolution.
  for p in ("minimum", "zero"):
    dsp[f"conv-{p}"] = _pulse_filter(pulses, log_mel, mel_config, p)

  def world(env, aper):
    return pyworld.synthesize(f0, np.ascontiguousarray(env),
                              np.ascontiguousarray(aper), sr, period)

  return {"real": wav, "griffin-lim": np.asarray(gl),
          "world": world(sp, ap), "world-mel-ap": world(sp_mel, ap),
          "world-mel-binary": world(sp_mel, binary),
          "world-binary": world(sp, binary),
          "dsp-random": dsp["random"], "dsp-conv": dsp["conv"],
          "dsp-world-pulses": dsp["world-pulses"],
          "conv-minimum": dsp["conv-minimum"], "conv-zero": dsp["conv-zero"]}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--corpus", default="~/.cache/metatts/synth-default")
  p.add_argument("--speakers", type=int, default=8)
  p.add_argument("--clips", type=int, default=4)
  p.add_argument("--refs", type=int, default=4,
                 help="other real clips per speaker for its SECS reference")
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--no-wer", dest="wer", action="store_false")
  args = p.parse_args()
  chosen = args.variants.split(",")
  from metatts.audio import features as afeat  # pylint: disable=g-import-not-at-top
  from metatts.audio import io as aio  # pylint: disable=g-import-not-at-top
  from metatts.evaluation import mcd as mcd_lib  # pylint: disable=g-import-not-at-top
  from metatts.evaluation import secs, wer  # pylint: disable=g-import-not-at-top
  corpus = os.path.expanduser(args.corpus)
  mel_config = afeat.MelConfig()
  sr = mel_config.sample_rate
  start = time.time()
  scores = {v: {"secs": [], "mcd": [], "hyps": [], "texts": []}
            for v in VARIANTS}
  for speaker, (clips, refs) in _corpus_clips(
      corpus, args.speakers, args.clips, args.refs).items():
    ref_wavs = [aio.load_clip(r, sr) for r in refs]
    ref = secs.speaker_embedding([secs.embed_utterance(w, sr) for w in
                                  ref_wavs])
    for path in clips:
      wav = aio.load_clip(path, sr).astype(np.float32)
      with open(path[:-4] + ".txt", encoding="utf-8") as f:
        text = f.read().strip()
      for name, audio in variants(wav, sr, mel_config).items():
        if name not in chosen:
          continue
        audio = np.asarray(audio, np.float32)
        audio = audio / max(1.0, float(np.max(np.abs(audio))))
        s = scores[name]
        s["secs"].append(float(secs.cosine(
            secs.embed_utterance(audio, sr)[None], ref[None])[0]))
        s["mcd"].append(0.0 if name == "real" else float(
            mcd_lib.mel_cepstral_distortion(audio, wav, sr)))
        s["hyps"].append(wer.transcribe(audio, sr) if args.wer else "")
        s["texts"].append(text)
    print(f"{speaker}: done ({time.time() - start:.0f} s)", flush=True)
  print(f"\n{args.speakers} speakers x {args.clips} clips, "
        f"{time.time() - start:.0f} s\n")
  print("| variant | SECS (mean, 95% CI) | MCD dB | WER |\n|---|---|---|---|")
  for name in chosen:
    s = scores[name]
    m = statistics.mean(s["secs"])
    ci = 1.96 * statistics.stdev(s["secs"]) / len(s["secs"]) ** 0.5
    print(f"| {name} | {m:.3f} ± {ci:.3f} | "
          f"{statistics.mean(s['mcd']):.2f} | "
          f"{wer.corpus_wer(s['texts'], s['hyps']):.2f} |")


if __name__ == "__main__":
  main()
