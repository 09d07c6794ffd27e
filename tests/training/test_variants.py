"""Other objectives, the StyleGAN-style generator and augmentation in the same loop: each trains,
stops on SIGUSR1 with exit code 3, and resumes bit-for-bit (module randomness such as style
mixing, noise and augmentation is seeded per step from (seed, rank, cur_nimg); the ADA
probability and its pending counters are part of the state)."""
import json
import os
import signal
import threading
import time

import pytest
import torch

from pggan.train import main
from trainkit import assert_states_equal, final_state, index_entries, write_tiny_config

SHORT = ["--total-kimg", "0.3", "--set", "schedule.batch_by_res={4: 8, 8: 8, 16: 8}"]
VARIANTS = {
    "stylegan-lazy-r1-ada": [
        "--arch", "stylegan", "--loss", "logistic-r1", "--augment", "ada",
        "--set", "loss.r1_interval=3", "--set", "augment.interval=2",
        "--set", "augment.p=0.2", "--set", "augment.ada_kimg=1",
        "--set", "augment.target=0.0",
        "--set", "model.w_dim=16", "--set", "model.mapping_layers=2"],
    "pggan-hinge-fixed-augment": ["--loss", "hinge", "--augment", "fixed",
                                  "--set", "augment.p=0.5"],
    "pggan-lsgan-accumulation": ["--loss", "lsgan", "--batch-per-gpu", "2"],
    # R3GAN with every one of its ramps running across the resume point, Adam also reset where
    # each fade ends, fixed augmentation with a ramped p, and gradient accumulation.
    "pggan-r3gan-ramps-accumulation": [
        "--loss", "r3gan", "--augment", "fixed", "--batch-per-gpu", "4",
        "--set", "optim.reset_on_stab=true",
        "--set", "schedule.lr_ramp={start: 0.002, end: 0.0005, kimg: 0.25}",
        "--set", "optim.beta2_ramp={start: 0.9, end: 0.99, kimg: 0.25}",
        "--set", "loss.gamma_ramp={start: 1.0, end: 0.1, kimg: 0.25}",
        "--set", "ema.ema_kimg_ramp={start: 0.01, end: 0.1, kimg: 0.25}",
        "--set", "augment.p_ramp={start: 0.0, end: 0.4, kimg: 0.25}"],
    # R3GAN's R1 + R2 lazily, every 3 D steps (a D_reg phase).
    "stylegan-lazy-r3gan-ada": [
        "--arch", "stylegan", "--loss", "r3gan", "--augment", "ada",
        "--set", "loss.r1_interval=3",
        "--set", "augment.interval=2", "--set", "augment.p=0.2", "--set", "augment.ada_kimg=1",
        "--set", "augment.target=0.0",
        "--set", "model.w_dim=16", "--set", "model.mapping_layers=2"],
}


def signal_after_first_checkpoint(run_dir, sig=signal.SIGUSR1, timeout=120):
    """Send `sig` to this process once the run has written a training state."""
    def watch():
        deadline = time.time() + timeout
        while time.time() < deadline:
            if index_entries(run_dir):
                os.kill(os.getpid(), sig)
                return
            time.sleep(0.005)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_trains_stops_on_sigusr1_and_resumes_exactly(name, tmp_path, one_thread,
                                                           capsys):
    config = write_tiny_config(tmp_path)
    common = ["--config", str(config), "--resume", "auto"] + SHORT + VARIANTS[name]
    run_a, run_b = tmp_path / "A", tmp_path / "B"
    assert main(common + ["--run-dir", str(run_a)]) == 0

    watcher = signal_after_first_checkpoint(run_b)
    assert main(common + ["--run-dir", str(run_b)]) == 3
    watcher.join()
    signal_entries = [e for e in index_entries(run_b) if e["kind"] == "signal"]
    assert len(signal_entries) == 1 and signal_entries[0]["cur_nimg"] < 300
    assert "stopped by signal SIGUSR1" in capsys.readouterr().out
    assert main(common + ["--run-dir", str(run_b)]) == 0
    assert "resuming at kimg" in capsys.readouterr().out

    a, b = final_state(run_a, 304), final_state(run_b, 304)
    assert_states_equal(a, b)
    if "augment" in name or "ada" in name:
        assert torch.equal(a["augment"]["p_buf"], b["augment"]["p_buf"])
    ticks = [json.loads(line) for line in (run_a / "stats.jsonl").read_text().splitlines()]
    if "r1" in name:                         # the lazy R1 phase ran and was reported
        assert any("Loss/D/r1" in t for t in ticks)
        assert not any("Loss/D/gp" in t for t in ticks)
    if "r3gan" in name:                      # R1 and R2 in every tick (a tick > 3 steps)
        trained = [t for t in ticks if "Loss/D/adv" in t]
        assert trained and all("Loss/D/r1" in t and "Loss/D/r2" in t for t in trained)
        # every step: inside D_main; lazy: in a D_reg phase of their own
        assert all(("Loss/D_reg/total" in t) == ("lazy" in name) for t in trained)
    if "ramps" in name:                      # the ramps reached the loop, as scheduled
        gammas = [t["Progress/gamma"] for t in ticks]
        assert gammas[0] == pytest.approx(1.0) and gammas[-1] == pytest.approx(0.1)
        assert gammas == sorted(gammas, reverse=True)
        ps = [float(t["Augment/p"]) for t in ticks]
        assert ps[0] == pytest.approx(0.0) and ps[-1] == pytest.approx(0.4)
    if "augment" in name or "ada" in name:
        assert all("Augment/p" in t for t in ticks)
    if "ada" in name:
        # target 0: D(real) > 0 on average moves p up, < 0 down; it must have moved.
        assert float(a["augment"]["p_buf"]) != 0.2


def test_metrics_during_training(tmp_path, one_thread, capsys):
    config = write_tiny_config(tmp_path)
    run = tmp_path / "run"
    assert main(["--config", str(config), "--run-dir", str(run), "--metrics", "swd,msssim",
                 "--set", "metrics.num_images=32", "--set", "metrics.interval_kimg=0.15"]) == 0
    for name in ("swd", "msssim"):
        lines = [json.loads(x) for x in (run / f"metric-{name}.jsonl").read_text().splitlines()]
        # every 0.15 kimg (the first step at or past 150 and 300) and at the end (400)
        assert [x["cur_nimg"] for x in lines] == [152, 304, 400]
        assert [x["res"] for x in lines] == [8, 16, 16]
        assert all(x["num_images"] == 32 and x["value"] > 0 for x in lines)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("Metrics/swd")] == [152, 304, 400]
    assert "Metrics/msssim" in acc.Tags()["scalars"]
