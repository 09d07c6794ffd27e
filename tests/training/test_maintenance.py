"""maintenance_due: ticks, snapshots, metrics and checkpoints fall on the images the config
names, across stage boundaries where the batch size changes, and a resumed run decides what an
uninterrupted one decides from the same position on."""
import pytest

from pggan.config import Config, config_from_dict, validate
from pggan.schedule import ResolutionSchedule
from pggan.training.maintenance import crossed, interval_nimg, maintenance_due

# Stages: 4x4 [0, 100), 8x8 [100, 260) (fade 60 + stab 100), 16x16 [260, 700). Batches 8 / 12 /
# 5 do not divide the stage lengths, so each first step of a stage starts past its boundary.
CFG = {
    "model": {"max_res": 16, "fmap_base": 64, "fmap_max": 16, "latent_dim": 8},
    "schedule": {"fade_kimg": 0.06, "stab_kimg": 0.1, "stab_kimg_by_res": {4: 0.1},
                 "batch_by_res": {4: 8, 8: 12, 16: 5}, "batch_per_gpu_by_res": {},
                 "lr_by_res": {}},
    "train": {"total_kimg": 0.7, "tick_kimg": 0.05, "snapshot_kimg": 0.2},
    "metrics": {"names": ["swd"], "interval_kimg": 0.3},
}


def make(overrides=None):
    cfg = config_from_dict(CFG, Config())
    if overrides:
        cfg = config_from_dict(overrides, cfg)
    cfg = validate(cfg)
    return cfg, ResolutionSchedule(cfg)


def walk(cfg, schedule, start_nimg=0, prev_nimg=None):
    """[(cur_nimg, prev_nimg, Maintenance)] of every pass from start_nimg to the end, stepping
    by the schedule's batch as the loop does."""
    out, cur, prev = [], start_nimg, prev_nimg
    while True:
        due = maintenance_due(schedule, cfg, cur, prev)
        out.append((cur, prev, due))
        if cur >= schedule.total_nimg:
            return out
        prev, cur = cur, cur + schedule.at(cur).batch


def test_crossed_and_interval():
    assert crossed(95, 100, 100) and crossed(99, 205, 100) and not crossed(100, 199, 100)
    assert not crossed(None, 100, 100) and not crossed(0, 10 ** 6, 0)
    assert interval_nimg(0.0) == 0 and interval_nimg(0.0001) == 1 and interval_nimg(0.2) == 200


def test_events_fall_on_their_multiples_across_batch_changes():
    cfg, schedule = make()
    passes = walk(cfg, schedule)
    positions = [cur for cur, _, _ in passes]
    assert positions[:3] == [0, 8, 16] and 104 in positions and positions[-1] == 700
    for cur, prev, due in passes:
        if prev is None:
            assert due.tick and not due.any_save and not due.metrics
            continue
        assert due.tick == (cur // 50 > prev // 50 or cur >= 700)
        new_stage = schedule.stage_at(cur).res != schedule.stage_at(prev).res
        assert due.boundary_res == (schedule.stage_at(cur).res if new_stage else None)
        kind = "boundary" if new_stage else "final" if cur >= 700 else \
            "interval" if cur // 200 > prev // 200 else None
        assert due.checkpoint == kind and due.snapshot == (kind is not None)
        assert due.metrics == (cur // 300 > prev // 300 or cur >= 700)
    # 8x8 starts at 100: the 4x4 steps end at 96 + 8 = 104 (batch 8); 16x16 starts at 260,
    # reached by 8x8 steps of 12 from 104: 104 + 13 * 12 = 260.
    boundaries = [(cur, due.boundary_res) for cur, _, due in passes if due.boundary_res]
    assert boundaries == [(104, 8), (260, 16)]
    intervals = [cur for cur, _, due in passes if due.checkpoint == "interval"]
    assert intervals == [200, 400, 600]            # 8x8: 200 = 104 + 8 * 12; 16x16: steps of 5
    assert [cur for cur, _, due in passes if due.checkpoint == "final"] == [700]
    assert [cur for cur, _, due in passes if due.metrics] == [300, 600, 700]   # 260 + 8 * 5
    ticks = [cur for cur, _, due in passes if due.tick]
    assert ticks[:5] == [0, 56, 104, 152, 200] and ticks[-1] == 700
    assert len(ticks) == 1 + 700 // 50


def test_a_resumed_run_decides_as_the_uninterrupted_one():
    cfg, schedule = make()
    full = walk(cfg, schedule)
    for i in range(1, len(full) - 1):
        resumed = walk(cfg, schedule, start_nimg=full[i][0])
        assert resumed[0][2].tick and not resumed[0][2].any_save     # the first pass: status
        assert resumed[1:] == full[i + 1:]


def test_a_boundary_that_is_also_an_interval_and_the_end():
    # 16x16 starts at 260 and the run ends there (total 0.26): the state is a boundary one.
    cfg, schedule = make({"train": {"total_kimg": 0.26, "snapshot_kimg": 0.26}})
    last = walk(cfg, schedule)[-1]
    assert last[0] == 260 and last[2].checkpoint == "boundary" and last[2].boundary_res == 16
    assert last[2].tick and last[2].metrics


def test_metrics_interval_zero_means_at_the_end_only_and_no_names_never():
    cfg, schedule = make({"metrics": {"interval_kimg": 0.0}})
    assert [cur for cur, _, due in walk(cfg, schedule) if due.metrics] == [700]
    cfg, schedule = make({"metrics": {"names": []}})
    assert not any(due.metrics for _, _, due in walk(cfg, schedule))


@pytest.mark.parametrize("world", [1, 4])
def test_world_size_does_not_move_the_events(world):
    cfg, _ = make({"schedule": {"batch_by_res": {4: 8, 8: 12, 16: 4}}})
    one = walk(cfg, ResolutionSchedule(cfg, 1))
    many = walk(cfg, ResolutionSchedule(cfg, world))
    assert one == many
