"""FID / KID: closed forms, KID's unbiased estimator by hand and in expectation, the TF bilinear
resize, both TorchScript layouts, the feature cache, weights errors, and the ordering
held-out < blurred < noise on Fashion-MNIST with the packaged Inception weights."""
import math

import numpy as np
import pytest
import torch

from pggan.metrics.fid import (FEATURE_DIM, InceptionFeatures, WeightsError, cache_path,
                               feature_stats, fid_from_features, find_inception_weights,
                               frechet_distance, kid_from_features, load_cached_features,
                               mmd2_unbiased, resize_tf_bilinear, save_cached_features)

from .helpers import inception_weights, quality_ladder


def random_orthogonal(d, seed):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed),
                                       dtype=torch.float64))
    return q


def test_frechet_distance_closed_form():
    # Covariances sharing eigenvectors commute: Tr((S1 S2)^(1/2)) = sum sqrt(l1_i l2_i), so
    # FID = |mu1 - mu2|^2 + sum (sqrt(l1_i) - sqrt(l2_i))^2.
    d = 64
    g = torch.Generator().manual_seed(0)
    q = random_orthogonal(d, seed=1)
    l1 = torch.rand(d, generator=g, dtype=torch.float64) * 3 + 0.1
    l2 = torch.rand(d, generator=g, dtype=torch.float64) * 2
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.zeros(d,
                                                                             dtype=torch.float64)
    s1, s2 = q @ torch.diag(l1) @ q.T, q @ torch.diag(l2) @ q.T
    expect = float((mu1 - mu2).square().sum() + (l1.sqrt() - l2.sqrt()).square().sum())
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expect, rel=1e-10)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_fid_small_sample_path_matches_the_covariance_path():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(40, 96, generator=g) * 2 + 0.5
    b = torch.randn(30, 96, generator=g).square()
    # 40 * 30 <= 96^2: the small-matrix (SVD) path; compare with the D x D one. The covariances
    # have rank < 96, and the D x D path takes square roots of eigenvalues that are 0 up to
    # rounding (~1e-15 -> ~3e-8 each, 57 of them): agreement to 1e-5 absolute is what it allows.
    via_stats = frechet_distance(*feature_stats(a), *feature_stats(b))
    assert fid_from_features(a, b) == pytest.approx(via_stats, abs=1e-5)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-7)


def test_mmd_unbiased_by_hand():
    # D = 2, k(a, b) = (a.b / 2 + 1)^3. x = {(2,0), (0,0)}, y = {(0,0), (-2,0)}:
    # k(x1,x2) = k(y1,y2) = 1 -> within = (2 + 2) / (2 * 1) = 2;
    # cross: k(x1,y1) = 1, k(x1,y2) = (-2 + 1)^3 = -1, k(x2,y1) = k(x2,y2) = 1 -> 2 * 2 / 4 = 1.
    # MMD^2_u = 2 - 1 = 1 (the biased V-statistic would add the diagonals k(x1,x1) = 27, ...).
    x = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([[0.0, 0.0], [-2.0, 0.0]])
    assert mmd2_unbiased(x, y) == 1.0
    # D = 1: x = {0, 1}, y = {0, -1}: within 1 + 1, cross 2 * 3 / 4 -> 0.5.
    assert mmd2_unbiased(torch.tensor([[0.0], [1.0]]), torch.tensor([[0.0], [-1.0]])) == 0.5
    # KID over subsets of the whole (2-element) sets: every subset is a permutation -> 1.
    assert kid_from_features(y, x, num_subsets=7, max_subset_size=1000) == 1.0


def test_kid_is_unbiased_in_expectation():
    # Sets drawn from one distribution: the estimator averages to 0 within its standard error,
    # where the biased estimator (with the i = j kernel terms) is clearly positive.
    g = torch.Generator().manual_seed(3)
    d, m, trials = 16, 20, 300
    unbiased, biased = [], []
    for _ in range(trials):
        x, y = torch.randn(m, d, generator=g), torch.randn(m, d, generator=g)
        u = mmd2_unbiased(x, y)
        unbiased.append(u)
        kxx = ((x @ x.T / d + 1) ** 3).double()
        kyy = ((y @ y.T / d + 1) ** 3).double()
        # V-statistic: every pair, diagonals included.
        kxy = ((x @ y.T / d + 1) ** 3).double()
        biased.append(float(kxx.mean() + kyy.mean() - 2 * kxy.mean()))
    u, b = np.array(unbiased), np.array(biased)
    se = u.std(ddof=1) / math.sqrt(trials)
    assert abs(u.mean()) < 3 * se
    assert b.mean() > 10 * se + abs(u.mean())


def test_kid_deterministic_with_a_seed():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(50, 32, generator=g), torch.randn(60, 32, generator=g) + 0.3
    k1 = kid_from_features(a, b, seed=1, max_subset_size=20)
    assert k1 == kid_from_features(a, b, seed=1, max_subset_size=20)
    assert k1 != kid_from_features(a, b, seed=2, max_subset_size=20)
    assert k1 > 0


def _tf1_bilinear(img: np.ndarray, out: int) -> np.ndarray:
    """TensorFlow 1 resize_bilinear (align_corners=False): out[i] = lerp of in[floor(s)] and
    in[floor(s) + 1] (clamped) at s = i * in / out; separable."""
    n = img.shape[-1]
    s = np.arange(out) * n / out
    i0 = np.floor(s).astype(int)
    i1 = np.minimum(i0 + 1, n - 1)
    f = s - i0
    rows = img[..., i0, :] * (1 - f)[:, None] + img[..., i1, :] * f[:, None]
    return rows[..., i0] * (1 - f) + rows[..., i1] * f


@pytest.mark.parametrize("size", [4, 28, 64, 512])
def test_resize_matches_tf1_bilinear(size):
    g = torch.Generator().manual_seed(size)
    x = torch.rand(2, 3, size, size, generator=g, dtype=torch.float64) * 255
    got = resize_tf_bilinear(x)
    assert got.shape == (2, 3, 299, 299)
    assert np.allclose(got.numpy(), _tf1_bilinear(x.numpy(), 299), atol=1e-6)


class _HelperLayout(torch.nn.Module):
    """fid-helper layout: forward(x) on 299 px input in [-1, 1); features = per-channel mean
    and max, tiled to 2048."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[2] == 299 and x.shape[3] == 299
        f = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)      # [N, 6]
        return f.repeat(1, 342)[:, :2048]


class _StyleGANLayout(torch.nn.Module):
    """StyleGAN layout: forward(img, return_features) on 0..255 pixels of the original size."""

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        f = torch.cat([img.mean(dim=(2, 3)), torch.full_like(img[:, :1, 0, 0],
                                                             float(img.shape[-1]))], dim=1)
        return f.repeat(1, 512)[:, :2048] if return_features else f[:, :3]


def test_both_torchscript_layouts(tmp_path):
    images = torch.tensor([[0, 255], [255, 255]], dtype=torch.uint8).reshape(1, 1, 2, 2)
    helper = tmp_path / "helper.pt"
    torch.jit.save(torch.jit.script(_HelperLayout()), str(helper))
    feats = InceptionFeatures(helper, "cpu")(images)
    assert not InceptionFeatures(helper, "cpu").stylegan_layout
    assert feats.shape == (1, FEATURE_DIM)
    # Grey input repeated to 3 channels, scaled by (x - 128) / 128: 255 -> 0.9921875, 0 -> -1.
    assert torch.equal(feats[0, 3:6], torch.full((3,), 127 / 128))
    resized_mean = _tf1_bilinear(images[0, 0].double().numpy(), 299).mean()
    assert float(feats[0, 0]) == pytest.approx((resized_mean - 128) / 128, rel=1e-5)
    sg = tmp_path / "stylegan.pt"
    torch.jit.save(torch.jit.script(_StyleGANLayout()), str(sg))
    inc = InceptionFeatures(sg, "cpu")
    assert inc.stylegan_layout
    feats = inc(images)
    assert torch.equal(feats[0, :4], torch.tensor([191.25, 191.25, 191.25, 2.0]))


def test_weights_errors(tmp_path):
    with pytest.raises(WeightsError, match="file not found"):
        find_inception_weights(str(tmp_path / "missing.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(WeightsError, match="not a TorchScript Inception file"):
        InceptionFeatures(bad, "cpu")
    wrong = tmp_path / "wrong.pt"
    torch.jit.save(torch.jit.script(torch.nn.Flatten()), str(wrong))
    with pytest.raises(WeightsError, match="pool features"):
        InceptionFeatures(wrong, "cpu")(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))


def test_feature_cache_round_trip(tmp_path):
    key = {"version": 1, "dataset": {"source": "synthetic", "seed": 0}, "res": 32,
           "alpha": 1.0, "num_images": 3, "weights_sha256": "ab"}
    feats = torch.randn(3, FEATURE_DIM)
    assert load_cached_features(tmp_path, key) is None
    path = save_cached_features(tmp_path / "sub", key, feats)
    assert path == cache_path(tmp_path / "sub", key) and path.is_file()
    assert torch.equal(load_cached_features(tmp_path / "sub", key), feats)
    assert [p.name for p in path.parent.iterdir()] == [path.name]       # no temp file left
    other = dict(key, res=64)
    assert load_cached_features(tmp_path / "sub", other) is None
    path.write_bytes(b"damaged")
    assert load_cached_features(tmp_path / "sub", key) is None


def test_fashion_mnist_fid_kid_ordering():
    inc = InceptionFeatures(inception_weights(), "cpu", batch_size=32)
    n = 32
    real, held_out, blurred, noise = quality_ladder(n)
    f_real = inc(real)
    f_held, f_blur, f_noise = inc(held_out), inc(blurred), inc(noise)
    fid = [fid_from_features(f_real, f) for f in (f_held, f_blur, f_noise)]
    kid = [kid_from_features(f_real, f) for f in (f_held, f_blur, f_noise)]
    # Measured with n = 32: FID 156.2 < 176.7 < 439.2; KID -0.0013 < 0.068 < 0.570 (the
    # held-out FID is mostly the small-sample bias of FID; KID has none).
    assert fid[0] < fid[1] < fid[2]
    assert kid[0] < kid[1] < kid[2]
    assert abs(kid[0]) < 0.02 and kid[1] > 0.04
    # Features depend on the image only, not on its batch (up to float summation order).
    assert torch.allclose(inc(real[:4]), f_real[:4], rtol=1e-4, atol=1e-5)
