"""`neurocine demo --headless`: the whole pipeline as separate processes, ending in a video and a summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import REPO, free_port


def test_headless_demo_writes_a_side_by_side_video_and_a_summary(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "streams.cli", "demo", "--headless", "--seconds", "15", "--port",
                        str(free_port()), "--out-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((tmp_path / "neurocine-demo.json").read_text())
    assert summary["decoded_frames"] > 100 and summary["interrupted"] is False
    assert summary["end_to_end_latency_ms_p50"] > 0
    import av

    with av.open(summary["video"]) as c:
        frames = [f.to_ndarray(format="gray") for f in c.decode(video=0)]
    assert len(frames) > 60
    w = frames[0].shape[1]
    truth_half, decoded_half = frames[-1][:, : w // 2 - 8], frames[-1][:, w // 2 + 8 :]
    assert truth_half.std() > 5 and np.isfinite(decoded_half).all()
