"""`neurocine bench ...` for the decoder: speed (encoder, latency, batch), quality (quality, resolution), the
closed loop (loop) and robustness of a real decoder (fuzz, soak). Each prints JSON; the README's numbers name the
command that measured them."""
