r"""MCD of the source-filter vocoder's parts on the vocoder study's clips.

For every real held-out clip in ``WORKDIR/samples/reference`` of a vocoder
study (``experiments/configs/vocoder.py``), the mel-cepstral distortion
against the real clip of:

* ``nsf``: the trained vocoder as the voice path runs it (predicted F0 +
  the filter's correction; the clip the evaluation judged,
  ``samples/vocoded``);
* ``griffin_lim``: metatts's Griffin-Lim (32 iterations) of the same mel;
* ``dsp_pred_f0``: the DSP half alone (``gain x`` the model's
  ``convolved_excitation`` or, for ``shaping="stft"``, ``shaped_excitation``) with the
  predicted F0, i.e. the trained model without its filter's correction;
* ``dsp_analysed_f0``: the DSP half with the clip's own WORLD F0, an oracle
  no TTS mel has, which says what a better F0 predictor could reach.

Mean and 95% interval per held-out split, the paired difference nsf - GL,
and the F0 predictor's voicing error and F0 RMSE (cents, frames voiced in
both) against WORLD on the real clips. With a second argument OUT, each
variant's clips are also written as a vocoder-only run ``OUT/<variant>``
(``samples/reference`` linked, ``samples/vocoded`` = the variant) that the
evaluation can judge (``python -m metatts.evaluation --workdir
OUT/dsp_pred_f0 --metrics secs,eer,wer``). Usage::

  .venv/bin/python benchmarks/vocoder_ablation.py runs/vocoder [OUT]
"""
import glob, json, os, sys, jax, jax.numpy as jnp, numpy as np, soundfile as sf
from metatts.audio import features as afeat
from metatts.data import features as dfeat
from metatts.models import nsf
from metatts import vocoders
from metatts.training import export
from metatts.evaluation import mcd as mcdlib
W = sys.argv[1]
OUT = sys.argv[2] if len(sys.argv) > 2 else None
if OUT:
  import shutil
  for v in ("griffin_lim", "dsp_pred_f0", "dsp_analysed_f0"):
    os.makedirs(os.path.join(OUT, v, "samples"), exist_ok=True)
    shutil.copytree(os.path.join(W, "samples", "reference"), os.path.join(OUT, v, "samples", "reference"), dirs_exist_ok=True)
    shutil.copy(os.path.join(W, "samples", "manifest.json"), os.path.join(OUT, v, "samples", "manifest.json"))
model, params, info, _ = export.load_exported(os.path.join(W, "vocoder", "model"))
cfg = model.config; mc = cfg.mel_config()
gl = vocoders.GriffinLimVocoder(mc)
manifest = json.load(open(os.path.join(W, "samples", "manifest.json")))["speakers"]
# The model's own DSP half (its shaping: convolution, or session 10's STFT reshaping).
if getattr(cfg, "shaping", "stft") == "convolution":
  shaped_fn = jax.jit(lambda m, f, k: nsf.convolved_excitation(m, f, k, mc))
else:
  shaped_fn = jax.jit(lambda m, f, k: nsf.shaped_excitation(m, f, k, mc, cfg.harmonics))
pred_fn = jax.jit(lambda m: model.predict_f0(m))
rows = {}
f0err = []
for i, f in enumerate(sorted(glob.glob(os.path.join(W, "samples", "reference", "*", "*.wav")))):
  spk = os.path.basename(os.path.dirname(f)); split = manifest[spk]
  wav, sr = sf.read(f, dtype="float32"); n = len(wav)
  mel = dfeat.compute_log_mel(wav, mc); m = jnp.asarray(mel)[None]
  f0a = nsf.analyse_f0(wav, mel.shape[0], sr, cfg.hop_length)
  f0p = np.asarray(pred_fn(m))[0]
  va, vp = f0a > 0, f0p > 0
  both = va & vp
  f0err.append((np.mean(va != vp), np.sqrt(np.mean((1200 * np.log2(f0p[both] / f0a[both])) ** 2)) if both.any() else np.nan))
  key = jax.random.key(i)
  variants = {
    "nsf": sf.read(os.path.join(W, "samples", "vocoded", spk, os.path.basename(f)), dtype="float32")[0],
    "griffin_lim": gl(mel, key)[:n],
    "dsp_pred_f0": float(model.gain[...]) * np.asarray(shaped_fn(m, jnp.asarray(f0p)[None], key))[0, :n],
    "dsp_analysed_f0": np.asarray(shaped_fn(m, jnp.asarray(f0a)[None], key))[0, :n],
  }
  for k, y in variants.items():
    if OUT and k != "nsf":
      d = os.path.join(OUT, k, "samples", "vocoded", spk); os.makedirs(d, exist_ok=True)
      sf.write(os.path.join(d, os.path.basename(f)), np.clip(y, -0.99, 0.99), sr)
      shutil.copy(f[:-4] + ".txt", d)
    rows.setdefault(split, {}).setdefault(k, []).append(mcdlib.mel_cepstral_distortion(np.clip(y, -1, 1), wav, sr))
for split, d in rows.items():
  for k, v in d.items():
    v = np.asarray(v); print(split, k, "MCD %.2f +- %.2f (n=%d)" % (v.mean(), 1.96 * v.std(ddof=1) / np.sqrt(len(v)), len(v)))
  nsf_v, gl_v = np.asarray(d["nsf"]), np.asarray(d["griffin_lim"])
  diff = nsf_v - gl_v
  print(split, "nsf - gl paired %.2f [%.2f, %.2f]" % (diff.mean(), diff.mean() - 1.96 * diff.std(ddof=1) / np.sqrt(len(diff)), diff.mean() + 1.96 * diff.std(ddof=1) / np.sqrt(len(diff))))
e = np.asarray(f0err)
print("predicted F0 vs WORLD: VUV error %.3f, F0 RMSE %.0f cents" % (e[:, 0].mean(), np.nanmean(e[:, 1])))
