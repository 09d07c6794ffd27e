import argparse
import subprocess
import sys

import pytest
import yaml

from pggan.config import (Config, ConfigError, add_config_args, config_from_args, load_preset,
                          validate)


def parse(*argv):
    p = argparse.ArgumentParser()
    add_config_args(p)
    return config_from_args(p.parse_args(list(argv)))


def test_presets_load_and_validate():
    big = load_preset("pggan-celebahq-1024")
    assert big.model.max_res == 1024 and big.loss.kind == "wgan-gp"
    assert big.schedule.batch_by_res[4] == 512 and big.schedule.lr_by_res[1024] == 0.003
    demo = load_preset("demo-cpu")
    assert demo.model.max_res == 32 and demo.model.fmap_max == 64
    assert demo.loss.kind == "r3gan"            # its own choice (see configs/demo-cpu.yaml)
    assert demo.optim.beta2 == 0.99             # inherited from its base preset
    # The paper's per-step EMA in the paper preset; the demo resets it to a half-life.
    assert big.ema.beta_per_step == 0.999 and big.ema.ema_rampup is None
    assert demo.ema.beta_per_step is None and demo.ema.ema_kimg == 1.0
    for name in ("demo-fashion-mnist", "demo-emoji-64", "stylegan-ffhq-1024"):
        validate(load_preset(name))
    validate(big), validate(demo)


def test_cli_overrides_preset():
    cfg = parse("--config", "demo-cpu", "--max-res", "64", "--total-kimg", "7",
                "--seed", "3", "--set", "loss.r1_gamma=2.5", "--metrics", "swd,kid")
    assert cfg.model.max_res == 64 and cfg.train.total_kimg == 7.0 and cfg.train.seed == 3
    assert cfg.loss.r1_gamma == 2.5 and cfg.metrics.names == ["swd", "kid"]


@pytest.mark.parametrize("argv, message", [
    (["--max-res", "1000"], "max-res must be a power of two between 8 and 1024"),
    (["--max-res", "2048"], "max-res must be a power of two between 8 and 1024"),
    (["--set", "model.fmapbase=3"], "unknown option model.fmapbase (did you mean model.fmap_base?)"),
    (["--set", "loss.kind=wgan"], "loss.kind must be one of"),
    (["--set", "train.total_kimg=abc"], "train.total_kimg must be a number"),
    (["--set", "schedule.batch_by_res={5: 3}"], "not a power-of-two resolution"),
    (["--config", "no-such-preset"], "no such preset"),
    (["--engine", "horovod"], "engine must be one of"),
])
def test_bad_values_give_one_line_errors(argv, message):
    with pytest.raises(ConfigError) as e:
        parse(*argv)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_yaml_file_with_unknown_key_names_file(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("base: demo-cpu\nmodel:\n  max_ress: 64\n")
    with pytest.raises(ConfigError, match=r"mine.yaml: unknown option model.max_ress"):
        parse("--config", str(p))


def test_round_trip_yaml():
    cfg = parse("--config", "demo-cpu")
    again = Config()
    from pggan.config import config_from_dict
    config_from_dict(yaml.safe_load(cfg.to_yaml()), again)
    assert again == cfg
