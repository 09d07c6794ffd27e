"""AdaController: ADA's running sums of sign(D(real)), applied to p every `interval` steps,
reduced over processes, folded into one copy for a training state, dropped after NaN."""
import pytest
import torch

from pggan.config import AugmentConfig
from pggan.data.augment import AdaController, AugmentPipe
from pggan.training.engine import Engine


def controller(interval=2, p=0.0, ada_kimg=1.0, target=0.6):
    pipe = AugmentPipe(AugmentConfig(mode="ada", p=p, ada_kimg=ada_kimg, target=target), 3)
    return AdaController(pipe, interval, torch.device("cpu"))


class TwoRanks(Engine):
    """A stand-in for one of two processes: all_reduce_sum_ adds the other rank's tensor."""

    def __init__(self, rank, other):
        self.rank, self.world_size, self.other = rank, 2, other

    def all_reduce_sum_(self, tensor):
        tensor += self.other.to(tensor.dtype)
        return tensor


def test_p_moves_only_every_interval_steps_by_images_over_ada_kimg():
    ada = controller(interval=2)
    ada.observe(torch.tensor([1.0, 2.0, 3.0, -1.0]))           # mean sign 0.5 < 0.6
    ada.after_step(1, Engine())
    assert ada.pipe.p == 0.0 and ada.state() == [2.0, 4.0]      # not yet: kept
    ada.observe(torch.ones(4, 1))                               # now 6 / 8 = 0.75 > 0.6
    ada.after_step(2, Engine())
    assert ada.pipe.p == pytest.approx(8 / 1000) and ada.state() == [0.0, 0.0]
    ada.observe(-torch.ones(16))                                 # D unsure: p shrinks again
    ada.after_step(4, Engine())
    assert ada.pipe.p == 0.0                                     # clamped at 0 (8 - 16 < 0)


def test_no_observations_leave_p_alone():
    ada = controller(interval=1, p=0.3)
    ada.after_step(1, Engine())
    assert ada.pipe.p == 0.3


def test_sums_of_both_processes_decide_on_each():
    mine = controller(interval=1)
    mine.observe(-torch.ones(4))                                 # alone: p would stay at 0
    other = torch.tensor([20.0, 20.0], dtype=torch.float64)       # the other rank: all +1
    mine.after_step(1, TwoRanks(0, other))
    # (20 - 4) / 24 = 0.67 > 0.6: p grows by the 24 images of both ranks
    assert mine.pipe.p == pytest.approx(24 / 1000) and mine.state() == [0.0, 0.0]


def test_fold_keeps_one_copy_on_the_main_process():
    other = torch.tensor([3.0, 5.0], dtype=torch.float64)
    main, worker = controller(), controller()
    main.observe(torch.ones(2))
    worker.observe(-torch.ones(5))
    main.fold_(TwoRanks(0, other))
    worker.fold_(TwoRanks(1, other))
    assert main.state() == [5.0, 7.0] and worker.state() == [0.0, 0.0]
    single = controller()
    single.observe(torch.ones(3))
    single.fold_(Engine())                                       # one process: unchanged
    assert single.state() == [3.0, 3.0]


def test_state_round_trip_on_the_main_process_only():
    saved = [4.0, 9.0]
    main, worker = controller(), controller()
    main.load_state(saved, is_main=True)
    worker.observe(torch.ones(2))
    worker.load_state(saved, is_main=False)
    assert main.state() == saved and worker.state() == [0.0, 0.0]
    main.load_state(None, is_main=True)                          # a state without ADA sums
    assert main.state() == [0.0, 0.0]


def test_nonfinite_sums_are_dropped():
    ada = controller()
    ada.observe(torch.ones(3))
    ada.drop_nonfinite()
    assert ada.state() == [3.0, 3.0]
    # torch's CPU sign() maps NaN to 0; a sum can still become NaN/Inf where it does not
    ada.accum[0] = float("nan")
    ada.drop_nonfinite()
    assert ada.state() == [0.0, 0.0]


def test_refuses_a_pipe_that_is_not_adaptive_and_a_bad_interval():
    fixed = AugmentPipe(AugmentConfig(mode="fixed", p=0.2), 3)
    with pytest.raises(ValueError, match="augment.mode ada"):
        AdaController(fixed, 4, torch.device("cpu"))
    with pytest.raises(ValueError, match="augment.interval"):
        controller(interval=0)


def test_a_dropped_step_takes_back_its_signs_on_the_device():
    ada = controller()
    ada.observe(torch.ones(3))
    ada.begin_step()
    ada.observe(torch.full((2,), -1.0))
    ada.keep_step(torch.tensor(False))              # the guard dropped the step
    assert ada.state() == [3.0, 3.0]
    ada.begin_step()
    ada.observe(torch.full((2,), -1.0))
    ada.keep_step(torch.tensor(True))
    assert ada.state() == [1.0, 5.0]
