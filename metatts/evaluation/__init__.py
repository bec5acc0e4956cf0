"""Judges, adaptation curves and reports for few-shot speaker adaptation.

Judges are independent of metatts's own models and need no download:

* :func:`speaker_similarity` - Resemblyzer speaker-encoder cosine (SECS);
* :func:`equal_error_rate` / :func:`build_trials` - speaker-verification EER;
* :func:`mel_cepstral_distortion` - MCD (WORLD mel-cepstra, order 24,
  alpha 0.42 @ 16 kHz, c0 excluded, DTW);
* :func:`word_error_rate` / :func:`transcribe` - PocketSphinx WER;
* :func:`f0_metrics` - F0 RMSE (cents) and voicing decision error.

Adaptation curves (:func:`curve_vs_steps`, :func:`step_ratio`), the report
(:func:`evaluate`, ``python -m metatts.evaluation --workdir W``) and the
metrics.json schema (:func:`validate_metrics`) build on them.

Torch, Resemblyzer, PocketSphinx and PyWORLD are imported on first use, so
importing this package works without the ``evaluation`` extra.
"""

from metatts.evaluation.audio_io import EVAL_SAMPLE_RATE, check_waveform, load_wav
from metatts.evaluation.curves import (curve_vs_shots, curve_vs_steps,
                                       mean_ci, plot_curves, step_ratio,
                                       steps_to_reach)
from metatts.evaluation.dtw import align
from metatts.evaluation.eer import (EERResult, build_trials, eer_from_embeddings,
                                    equal_error_rate, leave_one_out_trials)
from metatts.evaluation.f0 import F0Metrics, f0_metrics
from metatts.evaluation.layout import scan_samples
from metatts.evaluation.mcd import mel_cepstral_distortion
from metatts.evaluation.pipeline import ALL_METRICS, DEFAULT_METRICS, evaluate
from metatts.evaluation.schema import validate_metrics
from metatts.evaluation.secs import (embed_utterance, get_encoder,
                                     leave_one_out_similarity,
                                     speaker_embedding, speaker_similarity)
from metatts.evaluation.vocoding import vocode_real
from metatts.evaluation.wer import (corpus_wer, edit_counts, normalize_text,
                                    transcribe, word_error_rate)
from metatts.evaluation.world import spectrum_to_mcep, world_features

__all__ = [
    "EVAL_SAMPLE_RATE", "check_waveform", "load_wav", "align",
    "EERResult", "build_trials", "eer_from_embeddings", "equal_error_rate",
    "leave_one_out_trials", "F0Metrics", "f0_metrics",
    "mel_cepstral_distortion", "embed_utterance", "get_encoder",
    "leave_one_out_similarity", "speaker_embedding", "speaker_similarity",
    "vocode_real", "corpus_wer", "edit_counts",
    "normalize_text", "transcribe", "word_error_rate", "spectrum_to_mcep",
    "world_features", "curve_vs_shots", "curve_vs_steps", "mean_ci",
    "plot_curves", "step_ratio", "steps_to_reach", "scan_samples",
    "ALL_METRICS", "DEFAULT_METRICS", "evaluate", "validate_metrics",
]
