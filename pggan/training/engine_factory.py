"""train.engine -> the Engine the loop runs on. Its own module so that engine.py (the base
class and the Accelerate engine) and deepspeed_engine.py (which subclasses it) need not import
each other."""
from __future__ import annotations

from typing import Optional

from ..config import ENGINES, ConfigError, TrainConfig
from .engine import AccelerateEngine, Engine


def make_engine(train_cfg: TrainConfig, deepspeed_config: Optional[str] = None) -> Engine:
    """--engine ddp: AccelerateEngine; --engine deepspeed: DeepSpeedEngine (ZeRO-1/2), with
    `deepspeed_config` (default launch/deepspeed-zero<stage>.json)."""
    if train_cfg.engine not in ENGINES:
        raise ConfigError(f"engine {train_cfg.engine}: choose one of {', '.join(ENGINES)}")
    if train_cfg.engine == "deepspeed":
        from .deepspeed_engine import DeepSpeedEngine     # imports deepspeed: only when asked
        return DeepSpeedEngine(train_cfg, deepspeed_config)
    if deepspeed_config is not None:
        raise ConfigError("--deepspeed-config needs --engine deepspeed")
    return AccelerateEngine(train_cfg)
