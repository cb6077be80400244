"""`neurocine bench replay-memory` and `bench train-memory` end to end at a toy size: JSON out, every frame
received, the temporary folders removed (the numbers themselves come from the full-size runs in the README)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def bench(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "neurocine", "bench", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_bench_replay_memory_reports_every_folder_and_cleans_up(tmp_path: Path) -> None:
    out = bench("replay-memory", "--trials", "4,12", "--neurons", "30", "--frames", "20", "--dir", str(tmp_path))
    result = out["replay_memory"]
    assert [r["trials"] for r in result["rows"]] == [4, 12]
    for row in result["rows"]:
        assert row["frames_received"] == row["frames_published"] > 0
        assert row["cuts"] == row["trials_replayed"] - 1
        assert 0 < row["peak_rss_mb"] < 1000 and row["folder_gb"] > 0
    assert result["within_target"] is True and not list(tmp_path.iterdir())


def test_bench_train_memory_loads_samples_and_validates(tmp_path: Path) -> None:
    out = bench("train-memory", "--configs", "1x40,2x40", "--neurons", "30", "--frames", "40", "--batches", "3",
                "--dir", str(tmp_path))
    rows = out["train_memory"]["rows"]
    assert [(r["mice"], r["trials_per_mouse"]) for r in rows] == [(1, 40), (2, 40)]
    assert rows[1]["train_frames"] > rows[0]["train_frames"] > 0
    assert all(r["validation_windows"] > 0 and 0 < r["peak_rss_mb"] < 1000 for r in rows)
    assert not list(tmp_path.iterdir())
