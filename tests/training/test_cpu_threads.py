"""The trainer's CPU thread count: a share of the free cores per process, the user's
OMP_NUM_THREADS kept, a resumed run's recorded count reused."""
from pggan.training.cpu_threads import choose_cpu_threads, local_processes, threads_for


def test_a_share_of_the_cores_other_programs_leave():
    assert threads_for(1, 2, 0.1) == 2                  # idle 2-core machine
    assert threads_for(1, 2, 1.2) == 1                  # the other core is busy
    assert threads_for(1, 2, 7.0) == 1                  # overloaded: still one thread
    assert threads_for(2, 16, 0.0) == 8                 # two processes on 16 cores
    assert threads_for(4, 2, 0.0) == 1                  # more processes than cores
    assert threads_for(1, 1, 0.0) == 1                  # pinned to one core


def test_the_users_setting_and_a_saved_count_win():
    assert choose_cpu_threads(None, {"OMP_NUM_THREADS": "1"}) is None
    assert choose_cpu_threads(3, {"OMP_NUM_THREADS": "1"}) is None
    assert choose_cpu_threads(3, {}) == 3
    assert choose_cpu_threads(None, {}) >= 1


def test_processes_per_node_from_the_launcher():
    assert local_processes({}) == 1
    assert local_processes({"LOCAL_WORLD_SIZE": "4"}) == 4
    assert local_processes({"SLURM_NTASKS_PER_NODE": "8"}) == 8
    assert local_processes({"LOCAL_WORLD_SIZE": "x", "SLURM_NTASKS_PER_NODE": ""}) == 1
