"""The encoder: a DwiseNeuro-family model (video + behaviour -> activity), its training and ONNX export.

Importing this package is light; torch is imported by `model`, `train` and `export` only.
"""

from neurocine.decoder.encoder.presets import PRESETS, EncoderConfig, get_preset

__all__ = ["PRESETS", "EncoderConfig", "get_preset"]
