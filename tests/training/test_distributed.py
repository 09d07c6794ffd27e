"""2 processes (torchrun, gloo): both ranks hold identical parameters after training through
two new resolutions and their fade-ins (the parameters that get gradients change four times:
8x8 fade, 8x8 stable, 16x16 fade, 16x16 stable), and the losses match a 1-process run with
the same global batch."""
import json
import math

import torch
import yaml

from pggan.config import Config, config_from_dict
from pggan.nets import build_discriminator, build_generator
from trainkit import TINY_YAML, tensor_diffs


def ticks(run_dir):
    with open(run_dir / "stats.jsonl") as f:
        return [json.loads(line) for line in f]


def test_ranks_hold_identical_parameters(two_proc_run):
    rank0 = torch.load(two_proc_run.ranks_dir / "rank0.pt", weights_only=True)
    rank1 = torch.load(two_proc_run.ranks_dir / "rank1.pt", weights_only=True)
    assert rank0["cur_nimg"] == rank1["cur_nimg"] == 400
    for key in ("G", "D", "G_ema", "G_opt", "D_opt"):
        diffs = tensor_diffs(rank0[key], rank1[key], key)
        assert not diffs, diffs[:5]
    # ... and they trained: every stage's blocks moved away from their initialisation.
    cfg = config_from_dict(yaml.safe_load(TINY_YAML), Config())
    torch.manual_seed(cfg.train.seed)
    G0, D0 = build_generator(cfg.model), build_discriminator(cfg.model)
    for net0, key in ((G0, "G"), (D0, "D")):
        for name, p0 in net0.state_dict().items():
            assert not torch.equal(p0, rank0[key][name]), f"{key}.{name} never trained"


def test_losses_match_one_process_with_the_same_global_batch(tiny_run, two_proc_run):
    """Same global batch (1 x 8 vs 2 x 4), same rows, latents and penalty weights: the runs
    differ by rounding only (a mean of 8 vs a mean over ranks of means of 4). Adam normalises
    each gradient by its own running magnitude, so once a rounding difference flips the sign
    of a near-zero gradient the trajectories separate (measured: ~1e-7 relative up to the
    first ticks at 16x16, ~1e-3 twenty steps later). The ticks compared here cover 4x4, the
    8x8 fade-in and stabilisation and the start of the 16x16 fade-in: two optimizer resets
    and three changes of the active parameter set."""
    one, two = ticks(tiny_run.run_dir), ticks(two_proc_run.run_dir)
    assert [t["cur_nimg"] for t in one] == [t["cur_nimg"] for t in two]
    keys = ("Loss/D/adv", "Loss/G/adv", "Loss/D/gp", "Loss/D/drift", "Scores/real",
            "Scores/fake")
    compared = [t["cur_nimg"] for t in one if "Loss/D/adv" in t and t["cur_nimg"] <= 224]
    assert compared == [56, 104, 152, 200]       # a tick where a step crosses a multiple of 50
    for t1, t2 in zip(one, two):
        if t1["cur_nimg"] not in compared:
            continue
        for k in keys:
            assert math.isclose(t1[k], t2[k], rel_tol=1e-4, abs_tol=1e-7), \
                (t1["cur_nimg"], k, t1[k], t2[k])


def test_r3gan_pairs_and_losses_match_one_process(tmp_path):
    """R3GAN pairs real i with fake i inside each process's micro-batch. The loop gives each
    rank its rows of the global batch (reals and latents alike), so 1 x 8 and 2 x 4 form the
    same pairs: the pairing loss, R1 and R2 agree as the other kinds' do (same tolerance and
    the same reason, see above)."""
    from trainkit import run_train, write_tiny_config
    config = write_tiny_config(tmp_path)
    common = ["--config", config, "--loss", "r3gan", "--set", "loss.r1_gamma=0.5",
              "--total-kimg", "0.232", "--resume", "auto"]
    one, two = tmp_path / "one", tmp_path / "two"
    for run_dir, nproc in ((one, 1), (two, 2)):
        proc = run_train(common + ["--run-dir", run_dir], nproc=nproc)
        assert proc.returncode == 0, proc.stderr[-3000:]
    t1, t2 = ticks(one), ticks(two)
    keys = ("Loss/D/adv", "Loss/G/adv", "Loss/D/r1", "Loss/D/r2", "Scores/real", "Scores/fake")
    compared = [t["cur_nimg"] for t in t1 if "Loss/D/adv" in t and t["cur_nimg"] <= 224]
    assert compared == [56, 104, 152, 200]       # a tick where a step crosses a multiple of 50
    assert [t["cur_nimg"] for t in t1] == [t["cur_nimg"] for t in t2]
    for a, b in zip(t1, t2):
        if a["cur_nimg"] in compared:
            for k in keys:
                assert math.isclose(a[k], b[k], rel_tol=1e-4, abs_tol=1e-7), \
                    (a["cur_nimg"], k, a[k], b[k])
