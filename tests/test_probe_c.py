"""eval.probe_c: the linear probes' regularisation, given or chosen on the train side alone."""

import json

import numpy as np
import pytest

from cellae import runs
from cellae.errors import CellaeError
from cellae.evaluation.latent import PROBE_C_GRID, linear_probe
from cellae.training import train
from tiny import tiny_config


def few_cells_many_noise_numbers(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """One number carries the class, forty carry noise: a probe that needs regularising."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    codes = rng.normal(size=(n, 41))
    codes[:, 0] += 1.5 * labels
    return codes, labels


def test_auto_regularises_a_probe_of_few_cells_and_many_numbers():
    train_x, train_y = few_cells_many_noise_numbers(60, seed=0)
    test_x, test_y = few_cells_many_noise_numbers(2000, seed=1)
    patients = np.repeat(np.arange(12), 5)
    auto = linear_probe(train_x, train_y, test_x, test_y, c="auto", train_groups=patients)
    fixed = linear_probe(train_x, train_y, test_x, test_y)
    assert auto["c"] in PROBE_C_GRID and auto["c"] < 1.0
    assert "12 patients" in auto["c_choice"]
    assert (fixed["c"], fixed["c_choice"]) == (1.0, None)
    assert auto["auroc"] > fixed["auroc"]


def test_the_choice_of_c_never_sees_the_test_side():
    train_x, train_y = few_cells_many_noise_numbers(80, seed=0)
    patients = np.repeat(np.arange(8), 10)
    chosen = {linear_probe(train_x, train_y, *few_cells_many_noise_numbers(50, seed=s),
                           c="auto", train_groups=patients)["c"] for s in (1, 2, 3)}
    assert len(chosen) == 1


def test_without_patients_the_inner_folds_are_of_cells():
    train_x, train_y = few_cells_many_noise_numbers(60, seed=0)
    result = linear_probe(train_x, train_y, train_x, train_y, c="auto")
    assert "cells" in result["c_choice"]


def test_a_given_c_is_the_one_used():
    train_x, train_y = few_cells_many_noise_numbers(60, seed=0)
    assert linear_probe(train_x, train_y, train_x, train_y, c=0.01)["c"] == 0.01


def test_patients_must_match_the_train_codes():
    train_x, train_y = few_cells_many_noise_numbers(60, seed=0)
    with pytest.raises(ValueError, match="train_groups"):
        linear_probe(train_x, train_y, train_x, train_y, c="auto", train_groups=np.zeros(5))


@pytest.mark.parametrize("value", [0, -1.0, "big"])
def test_config_refuses_a_c_that_is_neither_positive_nor_auto(tmp_path, value):
    with pytest.raises(CellaeError, match="eval.probe_c"):
        tiny_config(tmp_path, eval={"probe_c": value})


def test_every_probe_of_an_evaluation_chooses_its_c(tmp_path):
    run_dir = train(tiny_config(tmp_path, train={"epochs": 1}, eval={"probe_c": "auto"}),
                    tmp_path / "runs")
    metrics = json.loads((runs.eval_dir(run_dir) / "metrics.json").read_text())
    for block in ("probe", "pca_baseline", "spot_baseline"):
        assert metrics[block]["c"] in PROBE_C_GRID
        assert "patients" in metrics[block]["c_choice"]
