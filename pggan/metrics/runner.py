"""compute_metrics: the one entry point for metrics, used by the training loop and evaluate.py.

One pass over real images (only what the requested metrics need) and one pass over generated
images feed every metric at once. Image sets are defined by global indices 0 .. n-1:

* generated image i comes from the latent z_i (and label c_i) that is a pure function of
  (seed, i), so the set does not depend on the world size or the batch size;
* real image i is image i of the dataset (the first n, unmirrored) read through
  `make_epoch_stream`, blended with its 2x-downsampled copy by `alpha` during a fade-in, as
  the discriminator sees it.

Rank r generates the pairs (2k, 2k+1) with k % world_size == r (MS-SSIM needs both images of
a pair on one rank) and reads the real images the epoch stream gives it. Rows computed per
image (SWD descriptors, Inception features, MS-SSIM per pair) are gathered over ranks in
global-index order (`dist.gather_rows`), so 1 and N processes give the same numbers.
Images are uint8 on `device`, processed in batches of `batch_size`.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple

import torch

from pggan.config import METRIC_NAMES, DataConfig
from pggan.data.seeds import derive_seed
from pggan.data.synthetic import hash_uniform

from .dist import barrier, broadcast_object, check_world, gather_rows
from .fid import (FEATURES_VERSION, INSTALL_HINT, InceptionFeatures, find_inception_weights,
                  fid_from_features, kid_from_features, load_cached_features,
                  save_cached_features)
from .msssim import MSSSIMAccumulator
from .swd import SWDAccumulator

INCEPTION_METRICS = ("fid", "kid")


def default_cache_dir() -> Path:
    """Where real-image features are cached between runs: $XDG_CACHE_HOME/pggan/metrics."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pggan" / "metrics"


def parse_metric_names(names) -> list:
    """'swd,fid' or ['swd', 'fid'] -> checked list in the given order, no duplicates."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    out = []
    for n in names:
        if n not in METRIC_NAMES:
            raise ValueError(f"unknown metric {n!r} (choose from {', '.join(METRIC_NAMES)})")
        if n not in out:
            out.append(n)
    return out


# --------------------------------------------------------------------------------------------
# Generated images.


def _seed32(*parts) -> int:
    # hash_uniform adds seed * 7919 in int64: a 32-bit seed cannot overflow it.
    return derive_seed(*parts) & 0xFFFFFFFF


def latents_for(indices: torch.Tensor, latent_dim: int, seed: int) -> torch.Tensor:
    """float32 [N, latent_dim] standard normal latents, z_i a pure function of (seed, i)
    (Box-Muller on counter-based uniforms)."""
    u = hash_uniform(_seed32("metrics-latents", seed), indices.cpu(), 2 * latent_dim)
    u1, u2 = 1.0 - u[:, :latent_dim], u[:, latent_dim:]          # u1 in (0, 1]: log is finite
    return ((-2.0 * u1.log()).sqrt() * torch.cos(2.0 * math.pi * u2)).float()


def labels_for(indices: torch.Tensor, num_classes: int, seed: int) -> torch.Tensor:
    """int64 [N] uniform class labels, a pure function of (seed, i)."""
    u = hash_uniform(_seed32("metrics-labels", seed), indices.cpu(), 1)[:, 0]
    return (u * num_classes).floor().clamp_(max=num_classes - 1).to(torch.int64)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [N, C, H, W] in [-1, 1] -> uint8 0..255 (round to nearest; -1 -> 0, +1 -> 255)."""
    return (images.float() * 127.5 + 128.0).clamp(0, 255).to(torch.uint8)


def generated_indices(num_images: int, rank: int, world_size: int) -> torch.Tensor:
    """This rank's global indices: pairs (2k, 2k+1) with k % world_size == rank."""
    pairs = torch.arange(rank, num_images // 2, world_size, dtype=torch.int64)
    return torch.stack([2 * pairs, 2 * pairs + 1], dim=1).reshape(-1)


def generate(G: torch.nn.Module, indices: torch.Tensor, *, res: int, alpha: float, seed: int,
             device: torch.device, batch_size: int, num_classes: int = 0,
             label_sampler: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
             ) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 [B, C, res, res] on device, global indices [B]) for `indices` in batches.
    G runs in eval mode (no w_avg tracking, no style mixing) and is put back afterwards; any
    noise G draws comes from the torch RNG seeded by (seed, first index of the batch)."""
    latent_dim = getattr(G, "latent_dim", None) or G.cfg.latent_dim
    param = next(G.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    was_training = G.training
    G.eval()
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        for chunk in indices.split(batch_size):
            z = latents_for(chunk, latent_dim, seed).to(device=device, dtype=dtype)
            c = None
            if num_classes:
                c = label_sampler(chunk) if label_sampler is not None else \
                    labels_for(chunk, num_classes, seed)
                c = torch.as_tensor(c, dtype=torch.int64).to(device)
            with torch.random.fork_rng(devices=fork_devices), torch.no_grad():
                torch.manual_seed(derive_seed("metrics-noise", seed, int(chunk[0])))
                img = G(z, c, res=res, alpha=alpha)                 # [B, C, res, res]
            yield to_uint8(img), chunk
    finally:
        G.train(was_training)


# --------------------------------------------------------------------------------------------
# Real images.


def dataset_identity(data_cfg: DataConfig, res: int, channels: int, data_seed: int,
                     top_res: Optional[int] = None) -> dict:
    """What the real images are, for the feature cache key: the shard checksums of `res`, or
    the synthetic source's seed and pyramid top."""
    if data_cfg.path is None:
        from pggan.data.stream import synthetic_top
        return {"source": "synthetic", "seed": int(data_seed), "channels": int(channels),
                "top_res": synthetic_top(data_cfg, top_res)}
    from pggan.data.stream import load_dataset_info
    info = load_dataset_info(data_cfg.path)
    info.check_resolution(res)
    return {"source": "shards", "channels": int(channels), "num_images": info.num_images,
            "shards_sha256": [s.sha256 for s in info.shards[res]]}


def real_image_count(data_cfg: DataConfig, res: int) -> Tuple[Optional[int], Optional[int]]:
    """(images in the dataset, channels) for a shard dataset; (None, None) for synthetic."""
    if data_cfg.path is None:
        return None, None
    from pggan.data.stream import load_dataset_info
    info = load_dataset_info(data_cfg.path)
    info.check_resolution(res)
    return info.num_images, info.channels


def real_batches(data_cfg: DataConfig, *, res: int, alpha: float, num_images: int,
                 channels: int, device: torch.device, batch_size: int, rank: int,
                 world_size: int, data_seed: int, top_res: Optional[int] = None
                 ) -> Iterable[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 [B, C, res, res] on device, global indices [B]): this rank's share of
    `num_images` real images spread evenly over the dataset, faded by `alpha` like the
    discriminator's input.
    `top_res`: the generator's max_res (where the synthetic source's pyramid starts)."""
    from pggan.data.reals import prepare_reals
    from pggan.data.stream import make_epoch_stream
    stream = make_epoch_stream(data_cfg, res, batch_size=batch_size, rank=rank,
                               world_size=world_size, img_channels=channels,
                               num_images=num_images, seed=data_seed, with_index=True,
                               top_res=top_res)
    for images, _labels, index in stream:
        if alpha >= 1.0:
            yield images.to(device), index
        else:
            yield to_uint8(prepare_reals(images, alpha, device)), index


# --------------------------------------------------------------------------------------------
# The entry point.


def compute_metrics(names: Sequence[str], G_ema: torch.nn.Module, *, res: int,
                    alpha: float = 1.0, data_cfg: Optional[DataConfig] = None,
                    num_images: int = 10000, device="cpu", rank: int = 0, world_size: int = 1,
                    seed: int = 0, data_seed: Optional[int] = None,
                    num_classes: Optional[int] = None,
                    label_sampler: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                    cache_dir=None, fid_weights: Optional[str] = None, batch_size: int = 32,
                    log: Callable[[str], None] = print) -> Dict[str, dict]:
    """Evaluate `G_ema` at (res, alpha) against the real images of `data_cfg` (None or
    path=None: the built-in synthetic source rendered with `data_seed`, default `seed`).

    Call it on every rank of a distributed run (collectives inside). Returns, identically on
    every rank, {name: {"value": float, ...}} for each metric computed:
      swd:    "per_level": {"<res>": SWD x 1e3, ...} (finest first), "value" = their average
      msssim: "num_pairs"
      fid, kid: (skipped, with one log line on rank 0, when no Inception weights are found)
    and in each entry "num_images", "res", "alpha" and "seconds" (this rank's wall time of the
    whole evaluation). `num_images` generated and as many real images (capped by the
    dataset's size, rounded down to even) are compared. `cache_dir` (None: no cache) keeps the
    real images' Inception features between calls (used at alpha = 1 only); `batch_size` is
    images per batch per rank for G, the Inception network and the descriptor extraction.
    """
    t0 = time.time()
    names = parse_metric_names(names)
    check_world(rank, world_size)
    device = torch.device(device)
    data_cfg = data_cfg if data_cfg is not None else DataConfig()
    data_seed = seed if data_seed is None else data_seed
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"metrics: alpha must be in [0, 1] (got {alpha})")
    if num_classes is None:
        num_classes = int(getattr(G_ema, "num_classes", 0) or 0)
    g_channels = getattr(G_ema, "img_channels", None) or G_ema.cfg.img_channels
    top_res = getattr(G_ema, "max_res", None)       # the synthetic pyramid's top

    weights = None
    if any(n in INCEPTION_METRICS for n in names):
        weights = find_inception_weights(fid_weights)
        if weights is None:
            skipped = [n for n in names if n in INCEPTION_METRICS]
            if rank == 0:
                log(f"metrics: {', '.join(skipped)} skipped: no Inception weights "
                    f"({INSTALL_HINT})")
            names = [n for n in names if n not in INCEPTION_METRICS]
    if not names:
        return {}

    dataset_size, data_channels = real_image_count(data_cfg, res)
    if data_channels is not None and data_channels != g_channels:
        raise ValueError(f"metrics: the generator makes {g_channels}-channel images but "
                         f"{data_cfg.path} holds {data_channels}-channel images")
    n = int(num_images) if dataset_size is None else min(int(num_images), dataset_size)
    n -= n % 2
    if n < 2 * world_size:
        raise ValueError(f"metrics: need at least {2 * world_size} images for {world_size} "
                         f"process(es) (num_images {num_images}"
                         f"{'' if dataset_size is None else f', dataset {dataset_size}'})")

    swd = SWDAccumulator(seed, device) if "swd" in names else None
    msssim = MSSSIMAccumulator() if "msssim" in names else None
    inception = None
    real_feats = None
    cache_key = None
    want_inception = any(n in INCEPTION_METRICS for n in names)
    if want_inception:
        inception = InceptionFeatures(weights, device, batch_size=batch_size)
        if cache_dir is not None and alpha >= 1.0:
            cache_key = {"version": FEATURES_VERSION, "weights_sha256": inception.sha256,
                         "dataset": dataset_identity(data_cfg, res, g_channels, data_seed,
                                                     top_res),
                         "res": int(res), "alpha": 1.0, "num_images": n}
            if rank == 0:
                real_feats = load_cached_features(cache_dir, cache_key)
    cache_hit = broadcast_object(real_feats is not None, device)

    # Real images: SWD descriptors and (without a cache hit) Inception features.
    need_real_feats = want_inception and not cache_hit
    if swd is not None or need_real_feats:
        feats, feat_idx = [], []
        for images, index in real_batches(data_cfg, res=res, alpha=alpha, num_images=n,
                                          channels=g_channels, device=device,
                                          batch_size=batch_size, rank=rank,
                                          world_size=world_size, data_seed=data_seed,
                                          top_res=top_res):
            if swd is not None:
                swd.add("real", images, index)
            if need_real_feats:
                feats.append(inception(images).cpu())
                feat_idx.append(index.cpu())
        if need_real_feats:
            real_feats, got = _gather_features(feats, feat_idx)
            if got.numel() != n:
                raise ValueError(f"metrics: the real-image stream gave {got.numel()} images, "
                                 f"expected {n}")
            if cache_key is not None and rank == 0:
                save_cached_features(cache_dir, cache_key, real_feats)

    # Generated images.
    fake_feats, fake_idx = [], []
    for images, index in generate(G_ema, generated_indices(n, rank, world_size), res=res,
                                  alpha=alpha, seed=seed, device=device,
                                  batch_size=max(2, batch_size - batch_size % 2),
                                  num_classes=num_classes, label_sampler=label_sampler):
        if swd is not None:
            swd.add("fake", images, index)
        if msssim is not None:
            msssim.add(images, index)
        if inception is not None:
            fake_feats.append(inception(images).cpu())
            fake_idx.append(index.cpu())

    results: Dict[str, dict] = {}
    if swd is not None:
        results["swd"] = swd.compute(rank, world_size)
    if msssim is not None:
        results["msssim"] = msssim.compute()
    if inception is not None:
        fake, _ = _gather_features(fake_feats, fake_idx)
        if rank == 0:
            # float64 linear algebra on the device: a 2048 x 2048 eigendecomposition takes
            # seconds on 2 CPU cores, and KID's 100 subsets are 300 matrix products.
            real_dev, fake_dev = real_feats.to(device), fake.to(device)
            if "fid" in names:
                results["fid"] = {"value": fid_from_features(real_dev, fake_dev)}
            if "kid" in names:
                results["kid"] = {"value": kid_from_features(real_dev, fake_dev, seed=seed)}
        # FID / KID are computed once, on rank 0; every rank returns the same dict.
        results = broadcast_object(results, device)
    barrier(device)
    seconds = time.time() - t0
    for entry in results.values():
        entry.update(num_images=n, res=int(res), alpha=float(alpha), seconds=seconds)
    return {name: results[name] for name in names}


def _gather_features(feats: list, index: list) -> Tuple[torch.Tensor, torch.Tensor]:
    rows = torch.cat(feats) if feats else torch.zeros(0, 2048)
    idx = torch.cat(index) if index else torch.zeros(0, dtype=torch.int64)
    return gather_rows(rows, idx, out_device=torch.device("cpu"))
