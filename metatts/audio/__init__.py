"""Audio and text frontends: jittable mel features, host-side I/O, text.

The mel parameters travel in ``MelConfig`` (``metatts.data.features.
FeatureConfig.mel_config()`` converts the data pipeline's config to it).
"""

from metatts.audio.features import (MelConfig, griffin_lim, istft,
                                    log_mel_spectrogram, mel_filterbank,
                                    mel_spectrogram, mel_to_audio,
                                    mel_to_linear, mu_law_decode,
                                    mu_law_encode, spectral_convergence, stft)
from metatts.audio.io import (AudioError, check_clip, load_audio, load_clip,
                              normalize_loudness, resample, save_wav,
                              trim_silence)
from metatts.audio.text import (CHARACTERS, PHONEMES, SymbolSet, ids_to_text,
                                normalize_text, phonemize, symbol_set,
                                text_to_ids)

__all__ = [
    "MelConfig", "griffin_lim", "istft", "log_mel_spectrogram",
    "mel_filterbank", "mel_spectrogram", "mel_to_audio", "mel_to_linear",
    "mu_law_decode", "mu_law_encode", "spectral_convergence", "stft",
    "AudioError", "check_clip", "load_audio", "load_clip",
    "normalize_loudness", "resample", "save_wav", "trim_silence",
    "CHARACTERS", "PHONEMES", "SymbolSet", "ids_to_text", "normalize_text",
    "phonemize", "symbol_set", "text_to_ids",
]
