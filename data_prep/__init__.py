"""data_prep: images (folder, zip, tar, built-in sources) -> webdataset shard sets, one per
resolution 4 .. max-res, plus dataset.json. Run `python -m data_prep --help`."""
from .cli import main
from .errors import PrepError
from .prepare import PrepOptions, prepare

__all__ = ["main", "PrepError", "PrepOptions", "prepare"]
