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


# ---- data.num_workers: auto (the cores of this process) or a count ------------------------


@pytest.mark.parametrize("argv, want", [
    ([], "auto"),                                       # the default
    (["--num-workers", "auto"], "auto"),
    (["--num-workers", "3"], 3),
    (["--num-workers", "0"], 0),
    (["--set", "data.num_workers=5"], 5),
    (["--set", "data.num_workers=auto"], "auto"),
])
def test_num_workers_takes_auto_or_a_count(argv, want):
    assert parse("--config", "pggan-celebahq-1024", *argv).data.num_workers == want


@pytest.mark.parametrize("argv, message", [
    (["--num-workers", "abc"], "data.num_workers must be auto or an integer in [0, 256] "
                               "(got 'abc')"),
    (["--num-workers", "-1"], "data.num_workers must be auto or an integer in [0, 256] (got -1)"),
    (["--num-workers", "257"], "(got 257)"),
    (["--set", "data.num_workers=null"], "data.num_workers must be set (got null)"),
    (["--set", "data.num_workers=true"], "data.num_workers must be an integer (got True)"),
    (["--set", "data.num_workers=1.5"], "data.num_workers must be an integer (got 1.5)"),
    (["--set", "data.num_workers=[2]"], "data.num_workers must be an integer (got [2])"),
])
def test_bad_num_workers_are_refused_in_one_line(argv, message):
    with pytest.raises(ConfigError) as e:
        parse("--config", "pggan-celebahq-1024", *argv)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("cores, env, want", [
    (2, {}, 1),                                         # 2 cores, 1 process: 1 + the trainer
    (1, {}, 1),                                         # at least one
    (16, {}, 8),                                        # capped (AUTO_MAX_WORKERS)
    (64, {"LOCAL_WORLD_SIZE": "8"}, 7),                 # 8 per process, less the trainer
    (16, {"LOCAL_WORLD_SIZE": "4"}, 3),
    (16, {"SLURM_NTASKS_PER_NODE": "8"}, 1),
    (4, {"LOCAL_WORLD_SIZE": "8"}, 1),                  # fewer cores than processes
])
def test_auto_workers_are_the_cores_per_process(monkeypatch, cores, env, want):
    import pggan.training.cpu_threads as ct
    from pggan.config import AUTO_MAX_WORKERS
    from pggan.data.stream import resolve_num_workers
    assert AUTO_MAX_WORKERS == 8
    monkeypatch.setattr(ct, "available_cores", lambda: cores)
    assert resolve_num_workers("auto", env) == want
    assert resolve_num_workers(5, env) == 5 and resolve_num_workers(0, env) == 0


def test_the_stream_starts_the_resolved_workers(monkeypatch):
    import pggan.data.synthetic_stream as ss
    import pggan.training.cpu_threads as ct
    from pggan.config import DataConfig
    from pggan.data.stream import make_train_stream
    monkeypatch.setattr(ct, "available_cores", lambda: 3)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS_PER_NODE", raising=False)
    started = []
    real = ss.batch_stream

    def batch_stream(producer, num_workers, *args, **kwargs):
        started.append(num_workers)
        return real(producer, num_workers, *args, **kwargs)
    monkeypatch.setattr(ss, "batch_stream", batch_stream)
    for value, want in (("auto", 2), (0, 0)):
        stream = make_train_stream(DataConfig(num_workers=value), 4, batch_per_gpu=2, seed=0,
                                   rank=0, world_size=1, start_nimg=0, img_channels=3)
        images, _ = next(stream)
        assert started[-1] == want and tuple(images.shape) == (2, 3, 4, 4)
        del stream


def test_train_compile_values():
    assert parse("--config", "demo-cpu").train.compile == "off"
    assert parse("--config", "demo-cpu", "--compile", "aot_eager").train.compile == "aot_eager"
    # A bare `off` in YAML is false: it means off too.
    assert parse("--config", "demo-cpu", "--set", "train.compile=off").train.compile == "off"
    for bad, message in (("--compile=fast", "train.compile must be one of off, inductor, "
                                            "aot_eager (got 'fast')"),
                         ("--set=train.compile=true", "train.compile: name the backend")):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            parse("--config", "demo-cpu", bad)


# ---- --mirror: on | off -------------------------------------------------------------------


@pytest.mark.parametrize("argv, want", [
    ([], False),                                        # the preset's (a handed dataset)
    (["--mirror", "on"], True), (["--mirror", "ON"], True), (["--mirror", "true"], True),
    (["--mirror", "off"], False), (["--set", "data.mirror=true"], True),
])
def test_mirror_takes_on_or_off(argv, want):
    assert parse("--config", "demo-fashion-mnist", *argv).data.mirror is want
    assert parse("--config", "demo-cpu").data.mirror is True


def test_bad_mirror_is_refused_in_one_line():
    with pytest.raises(ConfigError) as e:
        parse("--config", "demo-cpu", "--mirror", "sometimes")
    assert "data.mirror must be true or false (got 'sometimes')" in str(e.value)
    assert "\n" not in str(e.value)
