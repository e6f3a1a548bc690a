"""train.lr_schedule: the learning rate over a run."""

import csv
import math

import pytest

from cellae.errors import CellaeError
from cellae.training import train
from cellae.training.lr_schedule import lr_factor
from tiny import tiny_config


def test_cosine_runs_from_the_full_rate_down_to_nothing():
    assert lr_factor("cosine", 0.0) == 1.0
    assert lr_factor("cosine", 0.5) == pytest.approx(0.5)
    assert lr_factor("cosine", 1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("constant", 0.7) == 1.0
    with pytest.raises(ValueError, match="lr_schedule"):
        lr_factor("linear", 0.5)


def test_a_cosine_run_logs_the_rate_of_each_epochs_last_step(tmp_path):
    config = tiny_config(tmp_path, train={"epochs": 3, "lr_schedule": "cosine"},
                         eval={"enabled": False})
    run_dir = train(config, tmp_path / "runs", evaluate=False)
    with open(run_dir / "metrics.csv") as f:
        rates = [float(row["lr"]) for row in csv.DictReader(f)]
    assert len(rates) == 3 and rates[0] > rates[1] > rates[2] > 0
    # the last step of the run (progress just under 1) takes a small fraction of train.lr
    assert rates[2] < 0.1 * config.train.lr
    # epoch 1's last step is a third of the way through less one step
    assert rates[0] == pytest.approx(config.train.lr * 0.5 * (1 + math.cos(math.pi / 3)),
                                     rel=0.2)


def test_an_unknown_schedule_is_refused(tmp_path):
    with pytest.raises(CellaeError, match="train.lr_schedule"):
        tiny_config(tmp_path, train={"lr_schedule": "step"})
