"""The real-image feature cache of compute_metrics is keyed by everything the cached features
depend on: which real images (the dataset's content: shard bytes, or the synthetic source's
seed, channels and pyramid top), the resolution, the image count, the Inception weights (by
content, also when a file is replaced in place) and the feature pipeline's version.

Each case changes one of them after a first evaluation has filled the cache, and then asks for
two things: the evaluation with the cache gives exactly the value of the same evaluation
without one (so no stale features were used), and the cache gained exactly one file (the
change made a new key; a change of nothing adds none). FID here runs on a cheap TorchScript
stand-in with the fid-helper layout (helpers.PooledFeatures), and a second stand-in that pools
differently plays "other weights"."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pggan.config import DataConfig
from pggan.metrics import runner
from pggan.metrics.runner import compute_metrics

from .helpers import tiny_generator, write_pooled_features


class OtherPooledFeatures(torch.nn.Module):
    """Other 'weights' with the same layout: 4x4 pooling instead of 8x8 -> [N, 2048]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)          # [N, 48]
        return torch.cat([p, p.abs().sqrt()], dim=1).repeat(1, 22)[:, :2048]


def write_other_features(path) -> str:
    torch.jit.save(torch.jit.script(OtherPooledFeatures()), str(path))
    return str(path)


def shard_dataset(root, name, seed):
    """8 random RGB 16x16 images (different for each seed), max-res 16."""
    from PIL import Image
    from data_prep.prepare import PrepOptions, prepare
    src = root / f"{name}-src"
    src.mkdir()
    rng = np.random.RandomState(seed)
    for i in range(8):
        Image.fromarray((rng.rand(16, 16, 3) * 255).astype(np.uint8)).save(src / f"{i}.png")
    prepare(PrepOptions(source=str(src), out=str(root / name), max_res=16, workers=1,
                        progress=False))
    return str(root / name)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache-key")
    return {"root": root,
            "weights": write_pooled_features(root / "features.pt"),
            "other_weights": write_other_features(root / "other.pt"),
            "shards_a": shard_dataset(root, "shards-a", 1),
            "shards_b": shard_dataset(root, "shards-b", 2)}


BASE = dict(res=16, num_images=8, seed=3)

# name -> (changes to the base evaluation, whether they change the key)
CASES = {
    "nothing": ({}, False),
    "synthetic seed": ({"data_seed": 4}, True),
    "synthetic channels": ({"channels": 1}, True),
    "synthetic pyramid top": ({"max_res": 16}, True),
    "synthetic pyramid mode": ({"data_cfg": DataConfig(synthetic_pyramid="render")}, True),
    "resolution": ({"res": 8}, True),
    "image count": ({"num_images": 12}, True),
    "weights": ({"fid_weights": "other_weights"}, True),
    "weights replaced in place": ({"replace_weights": True}, True),
    "weights copied elsewhere": ({"copy_weights": True}, False),
    "features version": ({"features_version": True}, True),
    "shard content": ({"shards": ("shards_a", "shards_b")}, True),
}


def evaluate(inputs, cache_dir, weights, change: dict):
    kw = dict(BASE)
    G, _ = tiny_generator(img_channels=change.get("channels", 3),
                          max_res=change.get("max_res", 32))
    for k in ("data_seed", "res", "num_images", "data_cfg"):
        if k in change:
            kw[k] = change[k]
    return compute_metrics(["fid"], G, cache_dir=cache_dir, fid_weights=weights, **kw)


@pytest.mark.parametrize("case", list(CASES))
def test_cache_key_part(tmp_path, inputs, monkeypatch, case):
    change, new_key = CASES[case]
    cache = tmp_path / "cache"
    weights = str(tmp_path / "weights.pt")
    with open(inputs["weights"], "rb") as f, open(weights, "wb") as g:
        g.write(f.read())
    first = dict(change)
    if "shards" in change:
        first = {"data_cfg": DataConfig(path=inputs[change["shards"][0]], num_workers=0)}
        change = {"data_cfg": DataConfig(path=inputs[change["shards"][1]], num_workers=0)}
    else:
        first = {}
    evaluate(inputs, cache, weights, first)
    assert len(list(cache.iterdir())) == 1

    if change.get("fid_weights") == "other_weights":
        weights = inputs["other_weights"]
    if change.get("replace_weights"):
        write_other_features(weights)                   # same path, other content
    if change.get("copy_weights"):
        copy = tmp_path / "elsewhere" / "w.pt"
        copy.parent.mkdir()
        copy.write_bytes(open(weights, "rb").read())
        weights = str(copy)
    if change.get("features_version"):
        monkeypatch.setattr(runner, "FEATURES_VERSION", runner.FEATURES_VERSION + 1)

    cached = evaluate(inputs, cache, weights, change)["fid"]["value"]
    fresh = evaluate(inputs, None, weights, change)["fid"]["value"]
    assert cached == fresh, f"{case}: the cache gave features of other real images or weights"
    if change.get("replace_weights"):                   # ... and the new weights were used
        assert fresh == evaluate(inputs, None, inputs["other_weights"], change)["fid"]["value"]
    assert len(list(cache.iterdir())) == (2 if new_key else 1), \
        f"{case}: {'no new' if new_key else 'a new'} cache entry"
