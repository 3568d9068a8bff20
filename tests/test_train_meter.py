"""Logged training metrics: means over the logging window and over ranks (real gloo all-reduce), and
images/s over step time only."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xpl.train.meter import WindowMeter

REPO = Path(__file__).resolve().parents[1]
RANK = """
import json, sys, torch, torch.distributed as dist
from xpl.train.meter import WindowMeter
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=2)
meter = WindowMeter()
for step in range(2):
    meter.add(10.0 * rank + step, {"loss_a": float(rank)}, 2, 0.5 + rank)
print(json.dumps(meter.summary(torch.device("cpu"))))
dist.destroy_process_group()
"""


def test_window_mean_not_the_last_step():
    meter = WindowMeter()
    for loss, seconds in ((1.0, 0.5), (2.0, 0.5), (6.0, 1.0)):
        meter.add(loss, {"loss_mask": loss / 2}, 4, seconds)
    assert meter.summary(torch.device("cpu")) == {"loss": 3.0, "loss_mask": 1.5, "images_per_s": 6.0}
    meter.add(5.0, {"loss_mask": 1.0}, 2, 2.0)  # a new window: checkpoint time between steps never counts
    assert meter.summary(torch.device("cpu")) == {"loss": 5.0, "loss_mask": 1.0, "images_per_s": 1.0}


def test_mean_over_ranks_with_a_real_all_reduce(tmp_path):
    ranks = [subprocess.Popen([sys.executable, "-c", RANK, str(r), str(tmp_path / "rendezvous")], cwd=REPO,
                              stdout=subprocess.PIPE, text=True) for r in range(2)]
    outputs = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in ranks]
    assert all(p.returncode == 0 for p in ranks)
    # rank 0 logged 0, 1; rank 1 logged 10, 11; 8 images over the slowest rank's 3 s of steps
    expected = {"loss": 5.5, "loss_a": 0.5, "images_per_s": pytest.approx(8 / 3)}
    assert outputs == [expected, expected]


def test_sum_and_count_parts_become_a_ratio_over_the_window():
    meter = WindowMeter()
    meter.add(1.0, {"sigma.sum": 3.0, "sigma.count": 2.0, "empty.sum": 0.0, "empty.count": 0.0}, 1, 1.0)
    meter.add(1.0, {"sigma.sum": 1.0, "sigma.count": 6.0, "empty.sum": 0.0, "empty.count": 0.0}, 1, 1.0)
    # (3 + 1) / (2 + 6) over the window, not the mean of the steps' ratios (0.79); nothing counted: left out
    assert meter.summary(torch.device("cpu")) == {"loss": 1.0, "sigma": 0.5, "images_per_s": 1.0}


def test_phase_clock_times_each_phase_and_their_sum():
    import time

    from xpl.train.engine import PhaseClock

    clock = PhaseClock(torch.device("cpu"))
    time.sleep(0.02)
    clock.lap("data")
    clock.lap("forward")
    assert set(clock.ms) == {"ms_data", "ms_forward"} and clock.ms["ms_data"] >= 20
    assert clock.total * 1000 == pytest.approx(clock.ms["ms_data"] + clock.ms["ms_forward"])
