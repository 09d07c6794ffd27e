"""ResolutionSchedule: stages, alpha, batch split and learning rate as functions of cur_nimg."""
import pytest

from pggan.config import Config, ConfigError
from pggan.schedule import ResolutionSchedule, ScheduleError, kimg_to_nimg


def paper_config(max_res=1024, total_kimg=12000.0) -> Config:
    """The PGGAN paper's schedule (the defaults): 600k fade + 600k stabilise per resolution."""
    cfg = Config()
    cfg.model.max_res = max_res
    cfg.train.total_kimg = total_kimg
    return cfg


def test_stage_boundaries_follow_the_paper():
    sched = ResolutionSchedule(paper_config())
    starts = {st.res: st.start_nimg for st in sched.stages}
    # 4x4 only stabilises (600k); every later resolution fades 600k then stabilises 600k.
    assert starts == {4: 0, 8: 600_000, 16: 1_800_000, 32: 3_000_000, 64: 4_200_000,
                      128: 5_400_000, 256: 6_600_000, 512: 7_800_000, 1024: 9_000_000}
    last = sched.stages[-1]
    assert last.res == 1024 and last.fade_nimg == 600_000 and last.end_nimg == 12_000_000


def test_points_at_and_around_a_boundary():
    sched = ResolutionSchedule(paper_config())
    before = sched.at(599_999)
    assert (before.res, before.alpha, before.phase) == (4, 1.0, "stab")
    at = sched.at(600_000)
    assert (at.res, at.alpha, at.phase) == (8, 0.0, "fade")
    assert sched.at(900_000).alpha == pytest.approx(0.5)
    end_fade = sched.at(1_200_000)
    assert (end_fade.res, end_fade.alpha, end_fade.phase) == (8, 1.0, "stab")
    assert sched.at(1_199_999).phase == "fade"
    assert sched.at(1_799_999).res == 8 and sched.at(1_800_000).res == 16
    p = sched.at(11_999_999)
    assert (p.res, p.alpha, p.phase, p.stage_end_nimg) == (1024, 1.0, "stab", 12_000_000)


def test_alpha_is_continuous_and_monotone_within_each_stage():
    cfg = paper_config(max_res=64, total_kimg=6000)
    sched = ResolutionSchedule(cfg)
    step = 997                                  # an awkward stride over the whole run
    prev = None
    for nimg in range(0, sched.total_nimg, step):
        p = sched.at(nimg)
        if prev is not None and p.res == prev.res:
            assert p.alpha >= prev.alpha
            # |d alpha| <= d nimg / fade_nimg: no jumps inside a stage
            fade = sched.stage_of(p.res).fade_nimg
            if fade:
                assert p.alpha - prev.alpha <= step / fade + 1e-12
        elif prev is not None:                  # a new stage begins faded out
            assert p.res == 2 * prev.res and prev.alpha == 1.0
            assert p.alpha <= step / sched.stage_of(p.res).fade_nimg + 1e-12
        prev = p
    assert prev.res == 64 and prev.alpha == 1.0


def test_batch_and_lr_change_exactly_at_the_boundary():
    sched = ResolutionSchedule(paper_config(), world_size=8)
    b4, b8 = sched.at(599_999), sched.at(600_000)
    assert (b4.batch, b4.batch_per_gpu, b4.accum_rounds) == (512, 64, 1)
    assert (b8.batch, b8.batch_per_gpu, b8.accum_rounds) == (256, 32, 1)
    p128, p256 = sched.at(6_599_999), sched.at(6_600_000)
    assert (p128.res, p128.lr) == (128, 0.0015)
    assert (p256.res, p256.lr) == (256, 0.002)
    assert sched.at(1_800_000).lr == 0.001          # no lr_by_res entry for 16: schedule.lr
    # 1024: global 32 over 8 GPUs = 4 per GPU, the cap is 4: one round.
    p = sched.at(11_000_000)
    assert (p.res, p.batch, p.batch_per_gpu, p.accum_rounds) == (1024, 32, 4, 1)


def test_per_gpu_cap_becomes_gradient_accumulation():
    cfg = paper_config()
    cfg.schedule.batch_per_gpu_max = 16
    sched = ResolutionSchedule(cfg, world_size=2)
    p = sched.at(0)                                  # 512 over 2 processes, cap 16
    assert (p.batch, p.batch_per_gpu, p.accum_rounds) == (512, 16, 16)
    assert p.batch_per_gpu * p.accum_rounds * 2 == p.batch
    cfg.schedule.batch_by_res = {4: 48}
    cfg.schedule.batch_per_gpu_max = 16               # 24 per process: rounds of 12, not 16
    p = ResolutionSchedule(cfg, world_size=2).at(0)
    assert (p.batch_per_gpu, p.accum_rounds) == (12, 2)


def test_total_images_and_stage_lengths():
    cfg = paper_config(max_res=32, total_kimg=5000)
    cfg.schedule.fade_kimg_by_res = {16: 100}
    cfg.schedule.stab_kimg_by_res = {8: 50}
    sched = ResolutionSchedule(cfg)
    assert sched.total_nimg == 5_000_000
    got = [(st.res, st.start_nimg, st.fade_nimg, st.end_nimg) for st in sched.stages]
    assert got == [(4, 0, 0, 600_000), (8, 600_000, 600_000, 1_250_000),
                   (16, 1_250_000, 100_000, 1_950_000), (32, 1_950_000, 600_000, 5_000_000)]
    # The stages tile [0, total) without gaps or overlaps.
    assert sum(st.end_nimg - st.start_nimg for st in sched.stages) == sched.total_nimg
    # Images the loop shows: steps of the scheduled batch from 0 until total is reached.
    nimg, steps = 0, 0
    while nimg < sched.total_nimg:
        nimg += sched.at(nimg).batch
        steps += 1
    assert sched.total_nimg <= nimg < sched.total_nimg + 512


def test_run_shorter_than_the_growth_stops_at_total():
    sched = ResolutionSchedule(paper_config(max_res=1024, total_kimg=1000))
    assert [st.res for st in sched.reached_stages()] == [4, 8]
    p = sched.at(999_999)
    assert (p.res, p.stage_end_nimg) == (8, 1_000_000)


def test_uneven_split_is_a_clear_error():
    cfg = paper_config()
    cfg.schedule.batch_by_res = {4: 30}
    with pytest.raises(ScheduleError, match=r"batch_by_res\[4\].*multiple of 4"):
        ResolutionSchedule(cfg, world_size=4)
    assert issubclass(ScheduleError, ConfigError)


def test_kimg_to_nimg_rounds():
    assert kimg_to_nimg(0.064) == 64 and kimg_to_nimg(600) == 600_000
    assert kimg_to_nimg(0.1 + 0.2) == 300
