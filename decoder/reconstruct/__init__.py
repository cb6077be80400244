"""Reconstruction: turn recorded activity back into the movie by gradient descent through an encoder.

- backends:  one gradient interface (torch autograd, ONNX Runtime gradient graph), ensembles of them;
- offline:   the published method (Bauer, Margrie & Clopath 2026), batched, and the alpha-mask training;
- streaming: a sliding-window optimiser that decodes frames as they arrive, after a fixed lag;
- cli:       `neurocine reconstruct`.

Importing the package is light (numpy); torch and onnxruntime are imported by the backend that needs them.
"""

from neurocine.decoder.reconstruct.windows import fold_windows, gather_windows, window_starts

__all__ = ["fold_windows", "gather_windows", "window_starts"]
