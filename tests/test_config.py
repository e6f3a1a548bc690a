from pathlib import Path

import pytest
import yaml

from cellae.config import Config, load_config, load_yaml
from cellae.errors import CellaeError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path: Path, values: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_defaults_and_overrides_are_typed(tmp_path):
    path = write(tmp_path, {"name": "x", "model": {"family": "vae"}})
    config = load_config(path, ["train.epochs=3", "model.latent_dim=50", "train.lr=1e-4",
                                "model.widths=[16, 32]", "train.devices=2"])
    assert config.model.family == "vae"
    assert config.train.epochs == 3 and config.model.latent_dim == 50
    assert config.train.lr == pytest.approx(1e-4) and isinstance(config.train.lr, float)
    assert config.model.widths == [16, 32]
    assert config.train.devices == 2
    assert config.data.source == "synthetic"


def test_resolved_config_round_trips(tmp_path):
    config = load_config(write(tmp_path, {"name": "rt", "seed": 7}),
                         ["model.family=vae", "model.beta=4", "model.loss=masked_mse"])
    assert config.model.beta == 4 and config.model.loss.background_weight == 0.1
    again = load_config(write(tmp_path, yaml.safe_load(config.to_yaml())))
    assert again == config


@pytest.mark.parametrize(
    ("values", "overrides", "message"),
    [
        ({"modle": {}}, [], "unknown config key 'modle'"),
        ({}, ["model.latent_dim=1000000000000"], "'model.latent_dim' must be a positive integer up to 4,096"),
        ({}, ["model.widths=[8,100000]"], "'model.widths' must be a list of 2 to 7 channel counts"),
        ({}, ["seed=18446744073709551617"], "'seed' must be an integer from 0 to 2**32 - 1"),
        ({}, ["name=" + "n" * 300], "'name' must be a non-empty string of at most 100 characters"),
        ({"model": {"latent": 3}}, [], "config key 'model.latent' is not taken by the 'ae' family"),
        ({"model": {"beta": 4}}, [], "config key 'model.beta' is not taken by the 'ae' family"),
        ({"model": {"family": "vae", "latent_l1": 0.1}}, [],
         "config key 'model.latent_l1' is not taken by the 'vae' family"),
        ({"model": {"loss": {"name": "mse", "background_weight": 0.1}}}, [],
         "config key 'model.loss.background_weight' is not taken by the loss 'mse'"),
        ({"model": {"loss": "l2"}}, [], "'model.loss.name' must be one of 'bce', 'masked_bce'"),
        ({"model": {"loss": {"name": "masked_mse", "background_weight": -1}}}, [],
         "'model.loss.background_weight' must be 0 or more"),
        ({"model": {"family": "vae", "free_bits": -1}}, [], "'model.free_bits' must be 0 (off)"),
        ({"model": {"norm": "layer"}}, [], "'model.norm' must be one of 'batch', 'group', 'none'"),
        ({"eval": {"metrics": ["linear_probe", "nope"]}}, [], "'eval.metrics' must be one of"),
        ({"train": {"epochs": "ten"}}, [], "'train.epochs' must be an integer"),
        ({"train": {"epochs": -1}}, [], "'train.epochs' must be a positive integer"),
        ({"model": {"latent_dim": 0}}, [], "'model.latent_dim' must be a positive integer"),
        ({"model": {"family": "gan"}}, [], "'model.family' must be one of 'ae', 'vae'"),
        ({"data": {"image_size": 50}}, [], "'data.image_size' must be one of (32, 64, 128)"),
        ({"data": {"test_fraction": 1.5}}, [], "'data.test_fraction' must be between 0 and 1"),
        ({"train": {"deterministic": "yes"}}, [], "'train.deterministic' must be true or false"),
        ({"data": {"source": "/no/such/cells"}}, [], "data.source: no such file or folder"),
        ({"data": {"image_size": 32}, "model": {"widths": [8, 8, 8, 8, 8, 8]}}, [], "'model.widths'"),
        ({}, ["model.nope=1"], "config key 'model.nope' is not taken by the 'ae' family"),
        ({}, ["nope.x=1"], "no config key 'nope.x'"),
        ({}, ["model.beta=4"], "config key 'model.beta' is not taken by the 'ae' family"),
        ({}, ["train.epochs"], "must look like key.subkey=value"),
        ({}, ["train.epochs=0"], "'train.epochs' must be a positive integer"),
        ({"data": 3}, [], "'data' must be a section"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, values, overrides, message):
    with pytest.raises(CellaeError) as info:
        load_config(write(tmp_path, values), overrides)
    assert message in str(info.value)


def test_missing_and_non_yaml_files(tmp_path):
    with pytest.raises(CellaeError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(CellaeError, match="not valid YAML"):
        load_config(broken)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(CellaeError, match="must hold a mapping"):
        load_config(scalar)


def test_data_path_is_checked_only_when_asked(tmp_path):
    path = write(tmp_path, {"data": {"source": str(tmp_path / "absent")}})
    assert load_config(path, check_paths=False).data.source.endswith("absent")


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    if "sweeps" in path.parts or path.name == "study.yaml":
        from cellae.config import config_from_dict
        from cellae.sweep import load_sweep

        sweep = load_sweep(path)
        for combination in sweep.combinations:
            assert isinstance(config_from_dict(sweep.config_values(combination), check_paths=False), Config)
        return
    config = load_config(path, check_paths=False)
    assert isinstance(config, Config)


def test_a_config_of_cellae_0_1_0_reads_as_it_was_meant():
    from cellae.config import config_from_dict, from_older_cellae

    flat = {"family": "vae", "latent_dim": 8, "widths": [8, 16], "norm": "batch",
            "activation": "relu", "loss": "masked_mse", "background_weight": 0.3,
            "latent_l1": 0.0001, "beta": 2.0, "kl_warmup_epochs": 3}
    config = config_from_dict(from_older_cellae({"model": flat}), check_paths=False)
    assert config.model.beta == 2.0 and config.model.kl_warmup_epochs == 3
    assert config.model.loss.background_weight == 0.3 and not hasattr(config.model, "latent_l1")
    ae = config_from_dict(from_older_cellae({"model": {**flat, "family": "ae", "loss": "mse"}}),
                          check_paths=False)
    assert ae.model.latent_l1 == 0.0001 and not hasattr(ae.model, "beta")
    # today's configs pass unchanged
    assert from_older_cellae({"model": {"family": "ae", "beta": 1}}) == {"model": {"family": "ae", "beta": 1}}


def test_a_relative_file_spec_is_recorded_by_its_absolute_path(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    config = load_config(write(tmp_path, {"model": {
        "family": "docs/examples/denoising_family.py:DenoisingAutoencoder"}}))
    assert config.model.family == f"{root}/docs/examples/denoising_family.py:DenoisingAutoencoder"
    monkeypatch.chdir(tmp_path)
    again = load_config(write(tmp_path, yaml.safe_load(config.to_yaml())))
    assert again == config


@pytest.mark.parametrize("key", ["model.family", "model.loss", "eval.metrics"])
def test_a_spec_that_points_at_something_else_is_refused(tmp_path, key):
    value = "[cellae.config:Config]" if key == "eval.metrics" else "cellae.config:Config"
    with pytest.raises(CellaeError, match="is not a cellae .* plug-in"):
        load_config(write(tmp_path, {}), [f"{key}={value}"])


def test_invalid_yaml_names_its_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  latent_dim: [3\ntrain: 1\n")
    with pytest.raises(CellaeError, match=r"not valid YAML \(line 3, column \d+\)"):
        load_config(path)


def test_a_missing_malaria_folder_says_how_to_fetch_it(tmp_path):
    with pytest.raises(CellaeError, match="cellae data download --to data"):
        load_config(write(tmp_path, {"data": {"source": str(tmp_path / "data" / "cell_images")}}))


def test_hostile_yaml_is_refused_in_one_line_before_any_work(tmp_path):
    cases = {
        # nine lists of nine aliases: 490 million values from 342 bytes
        "aliases.yaml": 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
            f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)),
        "cycle.yaml": "a: &a [*a]\n",
        "twice.yaml": "train: {epochs: 5}\nmodel: {latent_dim: 8}\ntrain: {lr: 0.01}\n",
        "deep.yaml": "[" * 6000,
    }
    expected = {"aliases.yaml": "490,329,064 values", "cycle.yaml": "a cycle",
                "twice.yaml": "line 3, column 1): the key 'train' is given twice",
                "deep.yaml": "nests too deeply"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(CellaeError, match="not valid YAML") as info:
            load_config(tmp_path / name)
        assert expected[name] in str(info.value) and "\n" not in str(info.value)
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 200_000)
    with pytest.raises(CellaeError, match="a config is at most"):
        load_config(big)
    # aliases in moderation, and a merge whose keys are overridden, stay allowed
    assert load_yaml("a: &a {x: 1, y: 2}\nb: {<<: *a, y: 3}\nc: [*a, *a]\n") == {
        "a": {"x": 1, "y": 2}, "b": {"x": 1, "y": 3}, "c": [{"x": 1, "y": 2}] * 2}
    # a merged mapping constructed after the one that merges it is not mistaken for a repeat
    load_yaml("a: &a {x: 1}\nouter: {b: &b {<<: *a, x: 2}}\nc: {<<: *b}\n")
