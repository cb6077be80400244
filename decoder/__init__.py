"""neurocine.decoder: turn activity into movies (encoder, gradient backends, reconstruction, service).

At the rig it runs on ONNX Runtime without torch; torch is only for training, export and the oracle.
"""
