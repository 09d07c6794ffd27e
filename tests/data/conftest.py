"""Fixtures for the data tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from .sample_files import run_prep, smooth_image


@pytest.fixture(scope="session")
def labelled_dataset(tmp_path_factory) -> Path:
    """A labelled folder dataset: 3 classes x 12 smooth images of mixed sizes, max-res 32,
    small shards (several per resolution) so that epoch splitting by shard is exercised."""
    root = tmp_path_factory.mktemp("labelled")
    src = root / "src"
    for c, cls in enumerate(("cat", "dog", "emu")):
        (src / cls).mkdir(parents=True)
        for k in range(12):
            w, h = 40 + 8 * (k % 3), 36 + 4 * (k % 4)
            smooth_image(w, h, 100 * c + k).save(src / cls / f"img{k:02d}.png")
    return run_prep(root, "ds", source=str(src), max_res=32, labels="folders",
                    shard_images=5)
