"""neurocine.decoder: turn activity into movies (encoder, gradient backends, reconstruction, service).

At the rig it runs on ONNX Runtime without torch; torch is only for training, export and the oracle.
"""

if __name__ != "neurocine.decoder":  # the repository root on sys.path would otherwise import it a second time
    raise ImportError(f"this folder is the package neurocine.decoder: import neurocine.decoder, not {__name__}")
