from pathlib import Path

import pytest
import yaml

from cellae.errors import CellaeError
from cellae.sweep import load_sweep

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(path: Path, values: dict) -> Path:
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def test_grid_expands_every_combination_with_readable_names(tmp_path):
    base = write(tmp_path / "base.yaml", {"name": "b", "train": {"epochs": 2}})
    sweep = load_sweep(write(tmp_path / "s.yaml", {
        "base": base.name,
        "set": {"train.epochs": 1},
        "grid": {"model.family": ["ae", "vae"], "data.background": ["keep", "fill_mean"],
                 "model.latent_dim": [20, 50]},
    }))
    names = [sweep.run_name(c) for c in sweep.combinations]
    assert len(names) == 8 and len(set(names)) == 8
    assert "vae-fill_mean-z50" in names and "ae-keep-z20" in names
    values = sweep.config_values({"model.family": "vae", "data.background": "fill_mean",
                                  "model.latent_dim": 50})
    assert values["model"]["latent_dim"] == 50 and values["train"]["epochs"] == 1
    assert values["name"] == "vae-fill_mean-z50"


def test_explicit_list_of_runs(tmp_path):
    sweep = load_sweep(write(tmp_path / "s.yaml", {
        "config": {"name": "inline"},
        "runs": [{"model.family": "ae"}, {"model.family": "vae", "model.beta": 4.0}],
    }))
    assert [sweep.run_name(c) for c in sweep.combinations] == ["ae", "vae-beta4.0"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config": {}, "grid": {"model.nope": [1]}}, "no config key 'model.nope'"),
        ({"config": {}, "grid": {"model.latent_dim": [0, 5]}}, "'model.latent_dim' must be a positive"),
        ({"config": {}}, "exactly one of 'grid' or 'runs'"),
        ({"grid": {"seed": [1]}}, "exactly one of 'base'"),
        ({"config": {}, "grid": {"seed": []}}, "non-empty list"),
        ({"config": {}, "grid": {"seed": [1]}, "colour": 1}, "unknown key 'colour'"),
        ({"config": {}, "runs": [{"seed": 1}, {"seed": 1}]}, "share the name"),
    ],
)
def test_bad_sweeps_are_refused_before_training(tmp_path, values, message):
    with pytest.raises(CellaeError, match=message):
        load_sweep(write(tmp_path / "s.yaml", values))


@pytest.mark.parametrize("name", ["malaria/study.yaml", "sweeps/quickstart.yaml"])
def test_shipped_sweeps_hold_the_studys_eight_runs(name):
    sweep = load_sweep(CONFIGS / name)
    assert len(sweep.combinations) == 8
    families = {c["model.family"] for c in sweep.combinations}
    backgrounds = {c["data.background"] for c in sweep.combinations}
    assert families == {"ae", "vae"} and backgrounds == {"keep", "fill_mean"}
