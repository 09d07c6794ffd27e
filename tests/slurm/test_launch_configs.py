"""The files in launch/ load with the tools that read them, and say what their names say."""
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"


@pytest.mark.parametrize("name, kind, machines, processes", [
    ("1gpu.yaml", "NO", 1, 1),
    ("8gpu.yaml", "MULTI_GPU", 1, 8),
    ("multi-node.yaml", "MULTI_GPU", 2, 16),
])
def test_accelerate_configs(name, kind, machines, processes):
    from accelerate.commands.config.config_args import load_config_from_file

    # The loader rejects unknown keys, so a typo in a file fails here.
    cfg = load_config_from_file(str(LAUNCH / name))
    assert str(getattr(cfg.distributed_type, "value", cfg.distributed_type)) == kind
    assert (cfg.num_machines, cfg.num_processes) == (machines, processes)
    assert str(getattr(cfg.mixed_precision, "value", cfg.mixed_precision)) == "bf16"
    assert cfg.use_cpu is False


@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_configs(stage):
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = json.loads((LAUNCH / f"deepspeed-zero{stage}.json").read_text())
    # The batch sizes change with the resolution schedule; the engine supplies them.
    assert not {"train_batch_size", "train_micro_batch_size_per_gpu"} & raw.keys()
    cfg = DeepSpeedConfig({**raw, "train_micro_batch_size_per_gpu": 4,
                           "gradient_accumulation_steps": 2})
    assert cfg.zero_optimization_stage == stage
    assert cfg.bfloat16_config.enabled
    assert cfg.train_batch_size == 8
