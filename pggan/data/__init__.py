"""Data: the stream of real images for one resolution, and their conversion on the device.

make_train_stream / make_epoch_stream (stream.py), load_dataset_info (dataset_info.py),
prepare_reals (reals.py), synthetic_images (synthetic.py, the built-in source).
"""
from .dataset_info import DatasetError, DatasetInfo, ShardInfo, load_dataset_info
from .reals import prepare_reals
from .stream import make_epoch_stream, make_train_stream
from .synthetic import synthetic_images

__all__ = ["DatasetError", "DatasetInfo", "ShardInfo", "load_dataset_info", "prepare_reals",
           "make_epoch_stream", "make_train_stream", "synthetic_images"]
