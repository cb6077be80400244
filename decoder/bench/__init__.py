"""`neurocine bench ...` for the decoder: speed (encoder, latency, batch), quality (quality, resolution) and
the closed loop (loop). Each prints JSON; the README's numbers name the command that measured them."""
