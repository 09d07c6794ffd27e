"""Image-quality metrics of a generator: multi-scale SWD and MS-SSIM (no pretrained network),
FID and KID (Inception features from offline TorchScript weights).

`compute_metrics` (runner.py) is the single entry point for the training loop and for
`pggan-evaluate`.
"""
from .runner import METRIC_NAMES, compute_metrics, parse_metric_names

__all__ = ["METRIC_NAMES", "compute_metrics", "parse_metric_names"]
