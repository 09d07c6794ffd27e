"""report() / Collector, image grids."""
import numpy as np
import pytest
import torch

from pggan.stats import Collector, image_grid, report


def test_report_outside_a_run_goes_nowhere():
    assert report("Loss/x", 3.0) == 3.0          # returns its value, nothing collected
    col = Collector()
    report("Loss/x", 5.0)
    assert col.reduce() == {}


def test_mean_over_every_reported_element_and_reset():
    col = Collector()
    with col.active():
        report("Loss/D", torch.tensor([1.0, 2.0, 3.0]))
        report("Loss/D", 6.0)
        report("Scores/real", torch.tensor([[-1.0], [1.0]]))
    assert col.reduce() == {"Loss/D": pytest.approx(3.0), "Scores/real": 0.0}
    assert col.reduce() == {}                   # a tick starts empty


def test_collectors_nest_and_restore():
    outer, inner = Collector(), Collector()
    with outer.active():
        report("a", 1.0)
        with inner.active():
            report("a", 10.0)
        report("a", 3.0)
    assert outer.reduce() == {"a": 2.0} and inner.reduce() == {"a": 10.0}


def test_image_grid_layout():
    imgs = torch.full((5, 3, 2, 2), -1.0)
    imgs[4] = 1.0                                 # last image white
    grid = image_grid(imgs)                       # 3 columns, 2 rows
    assert grid.shape == (4, 6, 3) and grid.dtype == np.uint8
    assert (grid[2:4, 2:4] == 255).all() and (grid[0:2, 0:6] == 0).all()
    assert (grid[2:4, 4:6] == 0).all()            # the empty sixth cell
