"""TrainingState: what a trainer captures survives the file and loads back into a fresh trainer
unchanged (networks, Adam states, ADA's p and pending sums, position); states in the layout
written before TrainingState existed still load; a damaged one is refused in one line."""
import pytest
import torch
import yaml

from pggan.config import Config, config_from_dict, validate
from pggan.training.checkpoint import (CheckpointError, TrainingState, read_training_state,
                                       state_file_name)
from pggan.training.engine import Engine
from pggan.training.loop import Trainer
from trainkit import TINY_YAML, tensor_diffs


def tiny_trainer(run_dir, ada: bool = True) -> Trainer:
    cfg = config_from_dict(yaml.safe_load(TINY_YAML), Config())
    cfg.train.run_dir = str(run_dir)
    if ada:
        cfg = config_from_dict({"augment": {"mode": "ada", "p": 0.5, "interval": 3,
                                             "ada_kimg": 0.1}},
                               cfg)
    return Trainer(validate(cfg), Engine(), run_dir, print_fn=lambda *a, **k: None)


def train(trainer: Trainer, steps: int):
    point = None
    for _ in range(steps):
        point = trainer.schedule.at(trainer.cur_nimg)
        trainer.enter_stage(point)
        trainer.train_step(point)
    return point


def assert_same(a: TrainingState, b: TrainingState) -> None:
    """Bitwise, everything but the config (whose run_dir differs between the trainers)."""
    pa, pb = a.to_payload(), b.to_payload()
    assert pa.pop("config")["train"]["total_kimg"] == pb.pop("config")["train"]["total_kimg"]
    assert tensor_diffs(pa, pb) == []


def test_round_trip_through_the_file_and_a_fresh_trainer(tmp_path, one_thread):
    first = tiny_trainer(tmp_path / "a")
    last = train(first, 5)                          # 5 steps: ADA applied once, 2 pending
    assert first.ada.state()[1] > 0 and first.augment.p != 0.5   # 24 images: p moves 0.24
    state = first.training_state("interval", None, last)
    assert state.cur_nimg == 40 and state.step_index == 5 and state.res == 4
    assert state.trained_res == 4 and state.ada_accum == first.ada.state()
    assert state.cpu_threads == torch.get_num_threads()
    path = state.save(tmp_path / "a", keep_last=2)
    assert path.name == state_file_name(40)
    loaded = TrainingState.load(path)
    assert_same(state, loaded)

    second = tiny_trainer(tmp_path / "b")
    second._load_state(loaded, path)
    assert (second.cur_nimg, second.step_index, second.active_res) == (40, 5, 4)
    assert second.augment.p == first.augment.p and second.ada.state() == first.ada.state()
    assert_same(state, second.training_state("interval", None, last))
    # ... and both continue identically: the next ADA update sees the restored sums
    train(first, 1)
    train(second, 1)
    assert second.augment.p == first.augment.p
    assert_same(first.training_state("interval", None, last),
                second.training_state("interval", None, last))


def test_the_layout_written_before_training_state_loads(tmp_path, one_thread):
    trainer = tiny_trainer(tmp_path / "a", ada=False)
    point = train(trainer, 2)
    # The dict pggan wrote before TrainingState: the same keys, ada_accum always a list.
    old = trainer.training_state("interval", None, point).to_payload()
    old.update(ada_accum=[0.0, 0.0], format="pggan-training-state", version=1)
    path = tmp_path / "old.pt"
    torch.save(old, path)
    state = TrainingState.load(path)
    assert (state.cur_nimg, state.step_index, state.kind) == (16, 2, "interval")
    fresh = tiny_trainer(tmp_path / "b", ada=False)
    fresh._load_state(read_training_state(path), path)      # the dict form is accepted too
    assert fresh.cur_nimg == 16
    assert_same(trainer.training_state("interval", None, point),
                fresh.training_state("interval", None, point))


def test_a_state_without_a_required_entry_is_one_line(tmp_path):
    with pytest.raises(CheckpointError) as e:
        TrainingState.from_payload({"cur_nimg": 8, "step_index": 1, "res": 4}, tmp_path / "x.pt")
    message = str(e.value)
    assert "x.pt" in message and "does not load" in message and "\n" not in message
