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


def test_runs_may_name_themselves_and_carry_their_familys_own_keys(tmp_path):
    sweep = load_sweep(write(tmp_path / "s.yaml", {
        "config": {"name": "inline"},
        "runs": [{"name": "sparse-ae", "model.family": "ae", "model.latent_l1": 0.01},
                 {"name": "warm-vae", "model.family": "vae", "model.kl_warmup_epochs": 2}],
    }))
    assert [sweep.run_name(c) for c in sweep.combinations] == ["sparse-ae", "warm-vae"]
    assert sweep.config_values(sweep.combinations[0])["name"] == "sparse-ae"


def test_a_key_of_the_other_family_in_a_grid_is_refused(tmp_path):
    with pytest.raises(CellaeError, match="'model.beta' is not taken by the 'ae' family"):
        load_sweep(write(tmp_path / "s.yaml", {
            "config": {"model": {"beta": 2.0}}, "grid": {"model.family": ["ae", "vae"]},
        }))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"config": {}, "grid": {"model.nope": [1]}}, "'model.nope' is not taken by the 'ae' family"),
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


def test_a_failing_run_does_not_stop_the_others_and_resume_trains_only_what_is_left(
    tmp_path, make_kaggle_folder
):
    from cellae import runs
    from cellae.sweep import run_sweep
    from tiny import tiny_config

    one_class = make_kaggle_folder(tmp_path / "data", n_per_class=6, n_patients=3)
    missing = sorted((one_class / "cell_images" / "Uninfected").iterdir())
    for path in missing:
        path.unlink()  # a single class: this run fails when its data is prepared
    base = tiny_config(tmp_path, train={"epochs": 1}).to_dict()
    sweep_file = write(tmp_path / "s.yaml", {
        "name": "mixed", "config": base,
        "grid": {"data.source": ["synthetic", str(one_class / "cell_images")]},
    })
    with pytest.raises(CellaeError, match="1 of 2 runs failed"):
        run_sweep(sweep_file, tmp_path / "runs", evaluate=False, overrides=["train.batch_size=16"])
    (sweep_dir,) = (tmp_path / "runs").iterdir()
    status = yaml.safe_load((sweep_dir / "sweep.json").read_text())["runs"]
    finished = [n for n, r in status.items() if r["status"] == "trained"]
    failed = [n for n, r in status.items() if r["status"] == "failed"]
    assert len(finished) == 1 and len(failed) == 1
    assert "only one class" in status[failed[0]]["error"]
    kept_weights = (sweep_dir / finished[0] / "checkpoints" / "last.ckpt").read_bytes()
    # --set reached every run, and is frozen into the sweep folder for --resume
    assert yaml.safe_load((sweep_dir / finished[0] / "config.yaml").read_text())["train"]["batch_size"] == 16

    for path in missing:  # the user fixes the data and resumes
        path.write_bytes((one_class / "cell_images" / "Parasitized").glob("*.png").__next__().read_bytes())
    run_sweep(sweep_file, tmp_path / "runs", resume=str(sweep_dir), evaluate=False)
    status = yaml.safe_load((sweep_dir / "sweep.json").read_text())["runs"]
    assert status[finished[0]]["status"] == "kept"
    assert status[failed[0]]["status"] == "trained"
    assert (sweep_dir / finished[0] / "checkpoints" / "last.ckpt").read_bytes() == kept_weights
    assert len(runs.run_dirs_in(sweep_dir)) == 2


def test_a_grid_too_large_is_refused_before_it_is_built(tmp_path):
    # 10^8 combinations from one line per key: said at once, in one line, without building them
    grid = {"train.lr": [0.001 * i for i in range(1, 101)], "seed": list(range(100)),
            "model.latent_dim": list(range(1, 101)), "train.epochs": list(range(1, 101))}
    path = tmp_path / "huge.yaml"
    path.write_text(yaml.safe_dump({"config": {"name": "x"}, "grid": grid}))
    with pytest.raises(CellaeError, match=r"makes 100,000,000 runs \(100 x 100 x 100 x 100\)"):
        load_sweep(path)
    path.write_text(yaml.safe_dump({"config": {"name": "x"},
                                    "runs": [{"seed": i} for i in range(1001)]}))
    with pytest.raises(CellaeError, match="lists 1,001 runs; a sweep has at most 1,000"):
        load_sweep(path)


def test_a_sweep_resumes_from_its_folder_alone(tmp_path, capsys):
    from cellae.cli import main
    from cellae.sweep import run_sweep
    from tiny import tiny_config

    base = tiny_config(tmp_path, train={"epochs": 1}).to_dict()
    sweep_file = write(tmp_path / "s.yaml", {"name": "one", "config": base, "runs": [{"name": "a"}]})
    sweep_dir = run_sweep(sweep_file, tmp_path / "runs")
    sweep_file.unlink()  # the folder holds its own frozen copy
    assert main(["sweep", "--resume", str(sweep_dir)]) == 0
    assert "a: kept" in capsys.readouterr().err


def test_an_interrupted_run_stops_the_sweep(tmp_path, monkeypatch):
    from cellae import sweep as sweep_module
    from cellae.sweep import local as sweep_local
    from cellae.training import TrainingInterrupted
    from tiny import tiny_config

    base = tiny_config(tmp_path, train={"epochs": 1}).to_dict()
    sweep_file = write(tmp_path / "s.yaml", {"name": "two", "config": base,
                                              "runs": [{"name": "a"}, {"name": "b"}]})
    started = []

    def interrupted(sweep_dir, name, values, evaluate):
        started.append(name)
        raise TrainingInterrupted("training interrupted (Ctrl-C or SIGTERM)")

    monkeypatch.setattr(sweep_local, "run_one", interrupted)
    with pytest.raises(TrainingInterrupted):
        sweep_module.run_sweep(sweep_file, tmp_path / "runs")
    assert started == ["a"]  # b was never begun
    (sweep_dir,) = (tmp_path / "runs").iterdir()
    assert yaml.safe_load((sweep_dir / "sweep.json").read_text())["runs"]["a"]["status"] == "interrupted"
