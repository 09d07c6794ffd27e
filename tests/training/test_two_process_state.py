"""1 process vs 2 processes on the same global batch, both with gradient accumulation: the final
training states (G, D, G_ema and both Adam states) agree to rounding.

Global batch 8 in micro-batches of 2 (schedule.batch_per_gpu_max 2): 1 process x 4 rounds vs
2 processes x 2 rounds, 12 steps (4x4, then the 8x8 fade-in: an Adam reset and a new active
set). Micro-batch m of a step holds global rows 2m, 2m + 1 in both runs (round k of rank r is
m = k * world + r), so every forward pass sees the same images, latents and penalty weights, and
model.mbstd_group 2 keeps minibatch-stddev groups inside a micro-batch. What differs is the
order of the float32 additions that form the gradient: four terms g_m / 4 accumulated in turn
vs (g_0 / 2 + g_2 / 2) and (g_1 / 2 + g_3 / 2) averaged by the all-reduce, a relative
difference of a few units of roundoff (2^-24).

Tolerances. Adam (beta1 0) moves each weight by at most about lr per step whatever the
gradient's scale, so a relative gradient difference of 1e-7 moves weights by ~1e-7 lr, grown
by the steps that follow and most where a gradient element is near zero (its sign then decides
a whole step of the first update after a reset). We allow 5% of one step, 5e-2 lr = 5e-5
(measured: 2.8e-6), per element of G, D and G_ema; and 5e-3 of each Adam moment tensor's
largest magnitude (measured: 1.6e-4). Faults are far outside: rows of latents and reals paired
differently change D's loss itself (measured: weights 8e-3 apart, D's exp_avg_sq 0.8 of its
largest value), and a sum instead of a mean over 2 processes doubles every gradient, which
Adam's normalisation hides in the weights but which leaves exp_avg x2 and exp_avg_sq x4 (the
negative control below).
"""
from pathlib import Path

import pytest
import torch

from pggan.train import main
from trainkit import final_state, run_train, write_tiny_config

LR = 0.001
TOTAL_NIMG = 96
WEIGHT_ATOL = 5e-2 * LR
MOMENT_RTOL = 5e-3

SUM_WORKER = Path(__file__).resolve().parent / "sum_reduce_worker.py"


def common_args(config):
    return ["--config", config, "--total-kimg", TOTAL_NIMG / 1000,
            "--set", "schedule.batch_per_gpu_max=2", "--set", "model.mbstd_group=2",
            "--set", f"schedule.lr={LR}"]


def float_leaves(a, b, path=""):
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys differ"
        for k in a:
            yield from float_leaves(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            yield from float_leaves(x, y, f"{path}[{i}]")
    elif torch.is_tensor(a) and a.is_floating_point():
        assert a.shape == b.shape, f"{path}: shapes differ"
        yield path, a.double(), b.double()
    elif torch.is_tensor(a):
        assert torch.equal(a, b), f"{path}: differs"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def state_mismatches(one: dict, two: dict) -> list:
    """Paths where the two states differ by more than the tolerances above."""
    bad = []
    assert (one["cur_nimg"], one["step_index"]) == (two["cur_nimg"], two["step_index"])
    for key in ("G", "D", "G_ema"):
        for path, a, b in float_leaves(one[key], two[key], key):
            err = (a - b).abs().max().item()
            if err > WEIGHT_ATOL:
                bad.append(f"{path}: {err:.3g} > {WEIGHT_ATOL:g}")
    for key in ("G_opt", "D_opt"):
        for path, a, b in float_leaves(one[key], two[key], key):
            err = (a - b).abs().max().item()
            tol = MOMENT_RTOL * a.abs().max().item()
            if err > tol:
                bad.append(f"{path}: {err:.3g} > {tol:.3g}")
    return bad


@pytest.fixture(scope="module")
def one_process_state(tmp_path_factory):
    base = tmp_path_factory.mktemp("one-accum")
    config = write_tiny_config(base)
    assert main([str(a) for a in common_args(config) + ["--run-dir", base / "run"]]) == 0
    return final_state(base / "run", TOTAL_NIMG), config


@pytest.mark.slow
def test_final_states_match_one_process(tmp_path, one_process_state, one_thread):
    one, config = one_process_state
    proc = run_train(common_args(config) + ["--run-dir", tmp_path / "two"], nproc=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = final_state(tmp_path / "two", TOTAL_NIMG)
    assert two["world_size"] == 2 and one["world_size"] == 1
    bad = state_mismatches(one, two)
    assert not bad, bad[:8]
    # The comparison covers trained state: both Adam states hold moments, and G_ema moved.
    assert one["G_opt"]["state"] and one["D_opt"]["state"]


@pytest.mark.slow
def test_a_sum_instead_of_a_mean_over_processes_is_rejected(tmp_path, one_process_state,
                                                           one_thread):
    """Negative control: the same 2-process run with gradients summed over the processes
    (sum_reduce_worker.py) fails the comparison, on the Adam moments."""
    one, config = one_process_state
    proc = run_train(common_args(config) + ["--run-dir", tmp_path / "sum"], nproc=2,
                     script=SUM_WORKER)
    assert proc.returncode == 0, proc.stderr[-3000:]
    bad = state_mismatches(one, final_state(tmp_path / "sum", TOTAL_NIMG))
    assert any(".exp_avg_sq" in b for b in bad) and any(".exp_avg:" in b for b in bad), bad[:8]
