"""Movies to files: the one writer of .npy, .gif and H.264 .mp4 (reconstruct's output, the demo's video)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class MovieFileError(RuntimeError):
    """The movie cannot be written in the asked format here."""


def write_movie(movie: np.ndarray, out: Path, fps: float = 30.0) -> None:
    """uint8 (T, H, W) -> .npy, or .gif / H.264 .mp4 through PyAV (an optional package: MovieFileError when
    missing)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npy":
        np.save(out, movie)
        return
    try:
        import av
    except ImportError as e:
        raise MovieFileError(f"{out}: writing {out.suffix} needs PyAV (pip install av), or use .npy ({e})") from e
    from fractions import Fraction

    with av.open(str(out), mode="w") as container:
        if out.suffix == ".gif":
            stream = container.add_stream("gif", rate=Fraction(round(fps)))
            stream.pix_fmt = "rgb8"
        else:
            stream = container.add_stream("libx264", rate=Fraction(round(fps)))
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "12"}
        stream.height, stream.width = movie.shape[1:]
        for frame in movie:
            rgb = np.repeat(frame[:, :, None], 3, axis=2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
