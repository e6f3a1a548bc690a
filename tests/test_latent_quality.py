"""The options of the latent-quality study: clean fill, per-cell standardisation, patient folds,
training classes (anomaly mode), dihedral augmentation, and the sweep's mean and spread."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cellae import api, run_inputs, runs
from cellae.config import config_from_dict
from cellae.data.augment import dihedral
from cellae.data.preprocess import (
    LOCAL_SCALE,
    STANDARD_MID,
    STANDARD_SCALE,
    PreprocessSettings,
    preprocess,
)
from cellae.data.splits import split_indices, training_rows
from cellae.errors import CellaeError
from cellae.evaluation.anomaly import anomaly_numbers, interior_errors
from cellae.sweep import load_sweep
from cellae.sweep.summary import summarise, write_summary
from conftest import cell_array
from tiny import tiny_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def cut_cell(height: int = 90, width: int = 70) -> np.ndarray:
    """A cell whose right side is cut by the crop's frame, with a pale membrane ring."""
    yy, xx = np.mgrid[0:height, 0:width]
    radius = np.hypot((yy - height / 2) / (height / 2), (xx - width * 0.75) / (width * 0.6))
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[radius < 1.0] = (235, 225, 205)  # the pale membrane
    image[radius < 0.95] = (190, 120, 150)  # the stained interior
    return image


@pytest.mark.parametrize("size", [32, 64, 128])
def test_fill_mean_leaves_no_stub_where_the_frame_cuts_the_cell(size):
    image, mask = preprocess(cut_cell(), PreprocessSettings(size, background="fill_mean"))
    # nothing of the cell's edge stays on the frame: every frame pixel is the fill colour
    fill = image[:, 0, 0]
    frame = np.concatenate([image[:, 0], image[:, -1], image[:, :, 0], image[:, :, -1]], axis=1)
    assert (frame == fill[:, None]).all()
    assert not mask[0].any() and not mask[-1].any() and not mask[:, -1].any()
    # and no pixel of the pale membrane ring is left inside, at most a faint blend with it
    # (the ring lies 45 to 105 grey levels from the stain)
    interior = image[:, mask == 1]
    assert np.abs(interior.astype(int) - np.array([[190], [120], [150]])).max() <= 10


def test_per_cell_standardises_each_channel_of_the_interior():
    settings = PreprocessSettings(64, background="fill_mean", normalize="per_cell")
    cell = cell_array(5, 80, 80, colour=(200, 120, 140))
    image, mask = preprocess(cell, settings)
    inside = image[:, mask == 1].astype(float)
    np.testing.assert_allclose(inside.mean(axis=1), STANDARD_MID, atol=1)
    np.testing.assert_allclose(inside.std(axis=1), STANDARD_SCALE, rtol=0.05)
    assert (image[:, mask == 0] == STANDARD_MID).all()
    # two stains of one cell give the same standardised image
    paler = np.where(cell > 0, np.clip(cell.astype(int) + 25, 0, 255), 0).astype(np.uint8)
    again, _ = preprocess(paler, settings)
    assert np.abs(again.astype(int) - image.astype(int)).max() <= 2
    # a dark parasite lies several standard deviations below the cell's mean in every channel
    cell[35:42, 35:42] = (90, 20, 110)
    infected, _ = preprocess(cell, settings)
    assert (infected[:, 29:33, 29:33].max(axis=(1, 2)) < STANDARD_MID - 2 * STANDARD_SCALE).all()


def test_per_cell_needs_the_fill(tmp_path):
    with pytest.raises(CellaeError, match="'fill_mean' when data.normalize is 'per_cell'"):
        tiny_config(tmp_path, data={"normalize": "per_cell"})
    with pytest.raises(CellaeError, match="'fill_mean' when data.normalize is 'local'"):
        tiny_config(tmp_path, data={"normalize": "local"})


def shaded_cell(centre_gain: float, spot: int = 0) -> np.ndarray:
    """A cell stained darker towards its rim, with a pale centre (as on some slides) whose
    paleness is ``centre_gain``, and a faint parasite ``spot`` grey levels dark near its edge."""
    cell = cell_array(5, 80, 80, colour=(170, 100, 130)).astype(float)
    yy, xx = np.mgrid[0:80, 0:80]
    pallor = np.exp(-((yy - 40) ** 2 + (xx - 40) ** 2) / (2 * 12.0 ** 2))
    cell = np.where(cell > 0, cell + centre_gain * pallor[..., None], 0)
    cell[10:14, 38:42] -= spot
    return np.clip(cell, 0, 255).astype(np.uint8)


def test_local_keeps_the_fine_detail_and_drops_the_shading_of_the_whole_cell():
    local = PreprocessSettings(64, background="fill_mean", normalize="local")
    per_cell = dataclasses.replace(local, normalize="per_cell")
    # the pale centre is the largest thing in the cell: standardised, it is the image; with
    # local, the centre reads as the rest of the cytoplasm, within a robust deviation or two
    image, mask = preprocess(shaded_cell(centre_gain=60), local)
    standardised, _ = preprocess(shaded_cell(centre_gain=60), per_cell)
    centre = (slice(None), slice(28, 36), slice(28, 36))
    assert np.abs(image[centre].astype(int) - STANDARD_MID).mean() < 2 * LOCAL_SCALE
    assert standardised[centre].mean() > STANDARD_MID + STANDARD_SCALE
    assert (image[:, mask == 0] == STANDARD_MID).all()
    # a faint spot stands out as far whether or not the cell has a pale centre: its contrast
    # is measured against the cell's fine texture, not against the pallor's spread
    depth = []
    for gain in (0, 60):
        spotted, _ = preprocess(shaded_cell(centre_gain=gain, spot=30), local)
        depth.append(STANDARD_MID - float(spotted[:, 8:12, 30:34].min()))
    assert depth[0] > 3 * LOCAL_SCALE and abs(depth[0] - depth[1]) < LOCAL_SCALE
    # a flat cell maps to the mid level, not to noise blown up
    flat, flat_mask = preprocess(np.where(cell_array(1, 40, 40) > 0, 150, 0).astype(np.uint8),
                                 local)
    assert (flat == STANDARD_MID).all()


def test_a_wider_local_blur_keeps_a_large_blob_whole():
    # a parasite wider than the blur: the default (2 px at 64) keeps its edge and loses its
    # middle to the blur; data.local_blur 1/8 keeps the middle dark too
    cell = cell_array(5, 80, 80, colour=(170, 100, 130))
    cell[34:46, 34:46] = (120, 50, 90)
    narrow = PreprocessSettings(64, background="fill_mean", normalize="local")
    middle = (slice(None), slice(31, 33), slice(31, 33))
    depth = {blur: STANDARD_MID - float(preprocess(cell, dataclasses.replace(
        narrow, local_blur=blur))[0][middle].mean()) for blur in (1 / 32, 1 / 8)}
    assert depth[1 / 8] > 2 * depth[1 / 32] and depth[1 / 8] > 2 * LOCAL_SCALE
    # the cache key names the blur only where it changes the pixels, so every cache made
    # before it was a setting keeps its key
    assert "local_blur" not in narrow.to_dict()
    assert "local_blur" not in dataclasses.replace(narrow, normalize="per_cell",
                                                   local_blur=1 / 8).to_dict()
    assert dataclasses.replace(narrow, local_blur=1 / 8).to_dict()["local_blur"] == 1 / 8


def test_local_blur_is_a_fraction_of_the_side(tmp_path):
    for bad in (0, -0.1, 0.6):
        with pytest.raises(CellaeError, match="data.local_blur"):
            tiny_config(tmp_path, data={"normalize": "local", "background": "fill_mean",
                                        "local_blur": bad})


def test_patient_folds_cover_every_patient_once_and_ignore_the_seed():
    rng = np.random.default_rng(0)
    patients = np.repeat([f"C{i}" for i in range(23)], rng.integers(5, 40, 23))
    labels = rng.integers(0, 2, len(patients))
    tested = []
    for fold in range(5):
        train, test = split_indices(patients, labels, 0.2, seed=0, folds=5, fold=fold)
        again = split_indices(patients, labels, 0.2, seed=7, folds=5, fold=fold)
        np.testing.assert_array_equal(test, again[1])  # the same folds whatever the seed
        assert not set(patients[train]) & set(patients[test])
        assert len(train) + len(test) == len(patients)
        assert set(labels[test]) == {0, 1}
        tested.extend(test.tolist())
    assert sorted(tested) == list(range(len(patients)))  # each image in test exactly once


def test_folds_are_checked(tmp_path):
    with pytest.raises(CellaeError, match="data.folds=5 needs at least 5 patients, found 3"):
        split_indices(np.array(["a", "b", "c"] * 4), np.arange(12) % 2, 0.2, 0, folds=5)
    with pytest.raises(CellaeError, match="'data.fold' must be a fold number from 0 to 4"):
        tiny_config(tmp_path, data={"folds": 5, "fold": 5})
    with pytest.raises(CellaeError, match="'data.folds' must be 0"):
        tiny_config(tmp_path, data={"folds": 1})


def test_training_rows_keep_the_named_classes_only():
    labels = np.array([0, 1, 0, 1, 1, 0])
    rows = np.array([0, 1, 2, 3])
    np.testing.assert_array_equal(training_rows(rows, labels, ["Parasitized", "Uninfected"], []), rows)
    np.testing.assert_array_equal(
        training_rows(rows, labels, ["Parasitized", "Uninfected"], ["Uninfected"]), [1, 3])
    # the malaria sources name their classes in lower case; the folder's spelling names them too
    np.testing.assert_array_equal(
        training_rows(rows, labels, ["infected", "uninfected"], ["Uninfected"]), [1, 3])
    with pytest.raises(CellaeError, match="names 'Healthy', which is not a class.*Parasitized"):
        training_rows(rows, labels, ["Parasitized", "Uninfected"], ["Healthy"])


def test_a_class_or_fold_mistake_leaves_no_run_folder(tmp_path):
    from cellae.training import train

    with pytest.raises(CellaeError, match="names 'Healthy'"):
        train(tiny_config(tmp_path, data={"train_classes": ["Healthy"]}), tmp_path / "runs")
    with pytest.raises(CellaeError, match="data.folds=7 needs at least 7 patients, found 6"):
        train(tiny_config(tmp_path, data={"folds": 7}), tmp_path / "runs")
    assert not list((tmp_path / "runs").glob("*"))


def test_dihedral_turns_image_and_mask_together_by_a_symmetry_of_the_square():
    torch.manual_seed(0)
    images = torch.rand(64, 3, 8, 8)
    masks = (images[:, 0] > 0.5).to(torch.uint8)
    before = images.clone()
    turned, turned_masks = dihedral(images, masks)
    seen = set()
    for image, mask, out, out_mask in zip(images, masks, turned, turned_masks, strict=True):
        candidates = [torch.rot90(m, k, dims=(-2, -1)) for m in (image, image.flip(-1)) for k in range(4)]
        match = [i for i, c in enumerate(candidates) if torch.equal(c, out)]
        assert len(match) == 1
        mask_candidates = [torch.rot90(m, k, dims=(-2, -1)) for m in (mask, mask.flip(-1)) for k in range(4)]
        assert torch.equal(mask_candidates[match[0]], out_mask)
        seen.add(match[0])
    assert len(seen) == 8
    assert torch.equal(images, before)  # the batch given is left as it was


def test_anomaly_auroc_scores_the_interior_error():
    originals = np.full((4, 3, 8, 8), 0.5, dtype=np.float32)
    recons = originals.copy()
    masks = np.zeros((4, 8, 8), dtype=np.uint8)
    masks[:, 2:6, 2:6] = 1
    recons[2:, :, 3, 3] = 0.0  # the two anomalous cells are missed inside
    recons[:2, :, 0, 0] = 0.0  # an error outside the cell does not count
    errors = interior_errors(originals, recons, masks)
    np.testing.assert_allclose(errors, [0, 0, 0.25 / 16, 0.25 / 16])
    numbers = anomaly_numbers(errors, np.array([1, 1, 0, 0]), ["Parasitized", "Uninfected"],
                              ["Uninfected"])
    assert numbers["auroc"] == 1.0 and numbers["n_normal"] == 2 and numbers["n_anomalous"] == 2
    single = anomaly_numbers(errors, np.array([1, 1, 1, 1]), ["Parasitized", "Uninfected"], ["Uninfected"])
    assert single["auroc"] is None and "undefined" in single["auroc_note"]


def test_an_anomaly_run_trains_on_one_class_and_scores_the_other(tmp_path):
    from cellae.training import train

    config = tiny_config(tmp_path, data={"train_classes": ["Uninfected"], "background": "fill_mean",
                                         "normalize": "per_cell", "folds": 3, "fold": 1},
                         train={"augment": "dihedral", "epochs": 2})
    run_dir = train(config, tmp_path / "runs")
    info = runs.read_run_info(run_dir)
    split = runs.read_split(run_dir)
    assert info["data"]["trained_on"]["classes"] == ["Uninfected"]
    # the model saw only uninfected cells; the split (and the probe) keeps every class
    assert info["data"]["trained_on"]["images"] == info["data"]["train"]["per_class"]["uninfected"]
    assert len(split["train"]) == info["data"]["train"]["images"]
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["anomaly"]["auroc"] <= 1.0
    assert metrics["anomaly"]["n_anomalous"] == metrics["data"]["test"]["per_class"]["infected"]
    assert "anomaly.auroc" in [c["key"] for c in metrics["columns"]]
    assert (run_dir / "figures" / "error_maps.png").is_file()


def test_a_sweep_repeats_each_setting_over_folds_and_seeds(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "config": {}, "folds": 3, "seeds": [4, 5],
        "runs": [{"name": "plain"}, {"name": "std", "data.background": "fill_mean"}],
    }))
    sweep = load_sweep(path)
    names = [sweep.run_name(c) for c in sweep.combinations]
    assert names[:6] == ["plain-f0-s4", "plain-f0-s5", "plain-f1-s4", "plain-f1-s5",
                         "plain-f2-s4", "plain-f2-s5"]
    assert len(names) == 12
    values = sweep.config_values(sweep.combinations[-1])
    config = config_from_dict(values, check_paths=False)
    assert (config.data.folds, config.data.fold, config.seed) == (3, 2, 5)
    assert config.data.background == "fill_mean" and config.name == "std-f2-s5"


@pytest.mark.parametrize(("extra", "message"), [
    ({"folds": 1}, "'folds' must be 0 or an integer of 2 or more"),
    ({"seeds": [1, 1]}, "'seeds' must be a list of distinct integers"),
    ({"seeds": []}, "'seeds' must be a list of distinct integers"),
    ({"folds": 100, "seeds": list(range(11))}, "make 1,100 runs"),
])
def test_bad_repeats_are_refused(tmp_path, extra, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"config": {}, "runs": [{"name": "a"}], **extra}))
    with pytest.raises(CellaeError, match=message):
        load_sweep(path)


def fake_run(sweep_dir: Path, name: str, accuracy: float, auroc: float | None = None,
             spot_auroc: float | None = None) -> None:
    run_dir = sweep_dir / name
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / runs.CONFIG_FILE).write_text("name: x\n")
    (run_dir / runs.RUN_INFO_FILE).write_text("{}")
    (run_dir / "eval" / "metrics.json").write_text(json.dumps({
        "probe": {"accuracy": accuracy, "auroc": auroc},
        "spot_baseline": {"auroc": spot_auroc},
        "columns": [{"key": "probe.accuracy", "title": "probe accuracy"},
                    {"key": "probe.auroc", "title": "probe AUROC"}],
    }))


def test_the_summary_gives_mean_and_spread_never_the_best_seed(tmp_path):
    accuracies = {("a", 0, 0): 0.6, ("a", 0, 1): 0.8, ("a", 1, 0): 0.7, ("a", 1, 1): 0.9,
                  ("b", 0, 0): 0.5}
    for (setting, fold, seed), accuracy in accuracies.items():
        # the AUROC is undefined (None) on all but one of a's runs
        auroc = 0.8 if (setting, fold, seed) == ("a", 0, 0) else None
        fake_run(tmp_path, f"{setting}-f{fold}-s{seed}", accuracy, auroc)
    (tmp_path / "not-a-repeat").mkdir()
    # settings come in the sweep's order, not by name
    runs.write_json(tmp_path / runs.SWEEP_STATUS_FILE, {"order": ["b-f0-s0", "a-f0-s0"]})
    summary = summarise(tmp_path)
    assert list(summary["settings"]) == ["b", "a"]
    a = summary["settings"]["a"]["numbers"]["probe.accuracy"]
    assert a["mean"] == pytest.approx(0.75) and a["n"] == 4
    assert a["sd"] == pytest.approx(np.std([0.6, 0.8, 0.7, 0.9], ddof=1))
    # seed 0 averages 0.65 over the folds, seed 1 0.85
    assert a["seed_sd"] == pytest.approx(np.std([0.65, 0.85], ddof=1))
    b = summary["settings"]["b"]["numbers"]["probe.accuracy"]
    assert b["sd"] is None and b["seed_sd"] is None
    text = write_summary(tmp_path, "study").read_text()
    assert "| a | 4 (2 folds x 2 seeds) | 0.750 ± 0.129 | 0.800 (n=1) |" in text
    assert "| b | 1 (1 fold x 1 seed) | 0.500 |" in text
    assert text.index("| b |") < text.index("| a |")


def test_the_summary_pairs_runs_with_their_spot_features_and_with_the_first_setting(tmp_path):
    # (setting, fold, seed): probe AUROC; the spot features read 0.9 on fold 0, 0.7 on fold 1
    aurocs = {("a", 0, 0): 0.85, ("a", 0, 1): 0.87, ("a", 1, 0): 0.80, ("a", 1, 1): 0.60,
              ("b", 0, 0): 0.95, ("b", 0, 1): 0.86, ("b", 1, 0): 0.75, ("b", 1, 1): 0.62}
    for (setting, fold, seed), auroc in aurocs.items():
        fake_run(tmp_path, f"{setting}-f{fold}-s{seed}", 0.5, auroc, spot_auroc=(0.9, 0.7)[fold])
    runs.write_json(tmp_path / runs.SWEEP_STATUS_FILE, {"order": ["a-f0-s0", "b-f0-s0"]})
    paired = summarise(tmp_path)["settings"]
    spot = paired["b"]["paired"]["probe.auroc vs spot_baseline.auroc"]
    # above 0.9 once on fold 0 (0.95), above 0.7 once on fold 1 (0.75); fold 0's mean 0.905
    # is above 0.9, fold 1's 0.685 below 0.7
    assert (spot["runs_above"], spot["runs"], spot["folds_above"], spot["folds"]) == (2, 4, 1, 2)
    assert spot["mean_difference"] == pytest.approx(np.mean([0.05, -0.04, 0.05, -0.08]))
    first = paired["b"]["paired"]["probe.auroc vs a"]
    assert (first["runs_above"], first["runs"], first["folds_above"]) == (2, 4, 1)
    assert "probe.auroc vs a" not in paired["a"]["paired"]
    assert "probe.accuracy vs spot_baseline.accuracy" not in paired["a"]["paired"]  # no numbers
    text = write_summary(tmp_path, "study").read_text()
    assert "| b | probe.auroc vs spot_baseline.auroc | 2/4 | 1/2 | -0.005 |" in text


def test_the_shipped_latent_quality_sweep_and_configs_load():
    from cellae.config import load_config

    sweep = load_sweep(CONFIGS / "sweeps" / "latent_quality.yaml")
    assert len(sweep.combinations) % 15 == 0
    for combination in sweep.combinations:
        config_from_dict(sweep.config_values(combination), check_paths=False)
    best = load_config(CONFIGS / "malaria" / "best.yaml", check_paths=False)
    anomaly = load_config(CONFIGS / "malaria" / "anomaly.yaml", check_paths=False)
    assert best.model.latent_dim == 64 and best.data.normalize == "local"
    assert anomaly.data.train_classes == ["Uninfected"]
    assert best.model.loss.name == "spot_mse"
    # each shipped config is its setting of the sweep that ranked it, but for the data's path,
    # the patient fold and the seed
    for shipped, setting in ((anomaly, "anomaly-plain-64px"),
                             (best, "best-what-where-8-local-tta-probe-auto")):
        winner = next(c for c in sweep.combinations if c["name"] == f"{setting}-f0-s0")
        ranked = config_from_dict(sweep.config_values(winner), check_paths=False)
        assert ranked.model == shipped.model and ranked.train == shipped.train, setting
        assert dataclasses.replace(ranked.data, folds=0, fold=0) == shipped.data, setting
        assert ranked.eval.anomaly_score == shipped.eval.anomaly_score
        assert ranked.eval.code_views == shipped.eval.code_views, setting
        assert ranked.eval.probe_c == shipped.eval.probe_c, setting
    assert anomaly.eval.anomaly_score == "local_max"


def test_only_runs_the_named_settings_in_the_order_given(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"config": {}, "folds": 2, "seeds": [0], "runs": [
        {"name": "a"}, {"name": "b", "model.latent_dim": 8}, {"name": "c"}]}))
    sweep = load_sweep(path, only=["c", "b"])
    assert [c["name"] for c in sweep.combinations] == ["c-f0-s0", "c-f1-s0", "b-f0-s0", "b-f1-s0"]
    assert sweep.combinations[2]["model.latent_dim"] == 8
    with pytest.raises(CellaeError, match="no setting 'd'; its settings: a, b, c"):
        load_sweep(path, only=["a", "d"])


def test_spot_features_see_a_dark_spot_and_survive_a_flat_cell():
    from cellae.evaluation.spot_features import spot_features

    settings = PreprocessSettings(32, background="fill_mean")
    plain = cell_array(5, 80, 80, colour=(200, 120, 140))
    infected = plain.copy()
    infected[30:40, 35:45] = (90, 20, 110)
    flat = np.where(plain > 0, 150, 0).astype(np.uint8)
    images, masks = zip(*(preprocess(c, settings) for c in (plain, infected, flat)), strict=True)
    features = spot_features(np.stack(images), np.stack(masks))
    assert np.isfinite(features).all()
    share_dark, share_deep, lowest, _, largest = features.T
    assert share_dark[1] > 0.02 > share_dark[0]
    assert share_deep[1] > 0.005 and share_deep[0] == 0
    # the cell's own noise, measured against its own fine texture, reaches some 3 deviations
    assert lowest[1] < -10 < -5 < lowest[0]
    assert largest[1] > 0.02 > largest[0]
    np.testing.assert_array_equal(features[2, [0, 1, 4]], 0)


def test_spot_features_measure_a_spot_against_its_surroundings_not_the_cells_shading():
    """A pale centre (some slides' uninfected cells) is no spot, and does not make a faint
    parasite's spot shallower: what the first, whole-cell version got wrong on such slides."""
    from cellae.evaluation.spot_features import spot_features

    settings = PreprocessSettings(64, background="fill_mean")
    cells = [shaded_cell(centre_gain=gain, spot=spot) for gain in (0, 60) for spot in (0, 30)]
    images, masks = zip(*(preprocess(c, settings) for c in cells), strict=True)
    _, deep, lowest, _, _ = spot_features(np.stack(images), np.stack(masks)).T
    assert deep[0] == deep[2] == 0  # no spot, with or without a pale centre
    assert lowest[1] < -8 and lowest[3] < -8
    assert abs(lowest[1] - lowest[3]) < 0.25 * abs(lowest[1])


def test_spot_features_of_a_stack_are_each_cells_own():
    """Cells are computed together in chunks: a dark spot at one cell's edge must not join one
    at the next cell's, and a chunk boundary must not change anything."""
    from cellae.evaluation import spot_features as spots

    rng = np.random.default_rng(0)
    images = rng.integers(140, 160, size=(7, 3, 16, 16), dtype=np.uint8)
    images[:, :, :, -1] = 5  # a dark column at every cell's right edge, stacked one above another
    masks = np.ones((7, 16, 16), dtype=np.uint8)
    masks[3] = 0  # an empty cell among them
    masks[4] = 0
    masks[4, 0, 0] = 1  # one interior pixel: too few to measure
    together = spots.spot_features(images, masks)
    alone = np.concatenate([spots.spot_features(images[i:i + 1], masks[i:i + 1]) for i in range(7)])
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(together[[3, 4]], 0)
    one = together[0]
    pixels = 16 * 16
    assert one[4] == pytest.approx(16 / pixels)  # the cell's dark column, not seven cells' in a row
    z = spots.local_z(images[:1] / 255.0, masks[:1] != 0, spots.MIN_SPREAD / 4)[0]
    assert one[3] == pytest.approx(max(np.percentile(z, 1), spots.LOWEST_Z), abs=1e-4)
    assert one[2] == pytest.approx(max(z.min(), spots.LOWEST_Z), abs=1e-4)


def test_a_fold_without_a_class_on_one_side_is_refused():
    # four patients, one of them holding every infected cell: some fold tests no infected cell
    patients = np.repeat(["a", "b", "c", "d"], 10)
    labels = np.r_[np.ones(10), np.zeros(30)].astype(int)
    with pytest.raises(CellaeError, match="leaves class 1 out of its (train|test) side"):
        for fold in range(4):
            split_indices(patients, labels, 0.2, 0, folds=4, fold=fold)


def test_an_anomaly_model_is_read_from_its_last_checkpoint(tmp_path):
    from cellae.training import train

    config = tiny_config(tmp_path, data={"train_classes": ["uninfected"]}, train={"epochs": 2},
                         eval={"enabled": False})
    run_dir = train(config, tmp_path / "runs", evaluate=False)
    loaded = api.load_run(run_dir, cache_dir=str(tmp_path / "cache"))
    last = runs.load_checkpoint(run_dir / runs.CHECKPOINT_DIR / runs.LAST_CHECKPOINT)
    expected = runs.model_state_from_checkpoint(last)
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value.cpu(), expected[key].cpu())


def test_a_run_of_an_older_cellae_says_its_images_are_rebuilt(tmp_path, capsys):
    from cellae.training import train

    config = tiny_config(tmp_path, data={"background": "fill_mean"}, train={"epochs": 1})
    run_dir = train(config, tmp_path / "runs", evaluate=False)
    info = runs.read_run_info(run_dir)
    capsys.readouterr()
    run_inputs.run_cache(run_dir, config)
    assert "older cellae" not in capsys.readouterr().err
    del info["data"]["cache_format"]
    info["data"]["cache"] = str(tmp_path / "gone")
    runs.write_json(run_dir / runs.RUN_INFO_FILE, info)
    run_inputs.run_cache(run_dir, config)
    assert "trained on images of an older cellae (cache format before 3)" in capsys.readouterr().err


def test_the_anomaly_scores_see_a_small_dark_spot_that_the_mean_error_dilutes():
    """Two cells with the same interior error in all: one spread thin over the cell, one in a
    3x3 spot where the cell is dark (a parasite the model could not draw)."""
    from cellae.evaluation.anomaly import error_scores, latent_scores

    size = 16
    masks = np.ones((2, size, size), dtype=np.uint8)
    originals = np.full((2, 3, size, size), 0.6)
    originals[1, :, 5:8, 5:8] = 0.2  # the dark spot
    recons = originals.copy()
    recons[0] += 0.05  # everywhere a little
    spot_error = np.sqrt(0.05 ** 2 * size * size / 9)
    recons[1, :, 5:8, 5:8] += spot_error  # the same total squared error, in the spot
    scores = error_scores(originals, recons, masks)
    assert scores["interior_mean"][0] == pytest.approx(scores["interior_mean"][1])
    assert scores["local_max"][1] > 10 * scores["local_max"][0]
    assert scores["dark_error"][1] > scores["dark_error"][0]
    normal = np.random.default_rng(0).normal(size=(200, 4))
    far = latent_scores(normal, np.array([[0.0, 0, 0, 0], [6.0, 6, 6, 6]]))
    assert far["latent_knn"][1] > far["latent_knn"][0]
    assert far["latent_gaussian"][1] > far["latent_gaussian"][0]


def test_eval_anomaly_score_picks_the_headline_and_every_score_is_kept():
    labels = np.array([1, 1, 0, 0])  # Uninfected, Uninfected, Parasitized, Parasitized
    interior = np.array([0.3, 0.1, 0.2, 0.4])  # one normal cell scores above an anomaly
    local = np.array([0.1, 0.2, 0.5, 0.6])
    names = ["Parasitized", "Uninfected"]
    numbers = anomaly_numbers(interior, labels, names, ["Uninfected"], {"local_max": local},
                              headline="local_max")
    assert numbers["auroc"] == 1.0 and numbers["score"] == "local_max"
    assert numbers["scores"] == {"interior_mean": 0.75, "local_max": 1.0}
    # the mean errors stay the interior error's, whatever the headline
    assert numbers["mean_error_normal"] == pytest.approx(0.2)
    with pytest.raises(CellaeError, match="eval.anomaly_score is 'latent_knn'"):
        anomaly_numbers(interior, labels, names, ["Uninfected"], headline="latent_knn")
    config = config_from_dict({"eval": {"anomaly_score": "dark_error"}}, check_paths=False)
    assert config.eval.anomaly_score == "dark_error"
    with pytest.raises(CellaeError, match="eval.anomaly_score"):
        config_from_dict({"eval": {"anomaly_score": "biggest"}}, check_paths=False)


def test_spot_fft_is_spot_mse_plus_a_frequency_term_that_a_blur_pays():
    from cellae.models.losses import LOSSES

    target = torch.full((2, 3, 32, 32), 0.6)
    target[:, :, 10:13, 10:13] = 0.1  # a parasite-sized spot
    mask = torch.ones(2, 32, 32)
    blurred = torch.nn.functional.avg_pool2d(target, 5, stride=1, padding=2)
    logits = torch.logit(blurred.clamp(1e-4, 1 - 1e-4))
    plain = LOSSES.get("spot_mse")(gain=8, background_weight=0)
    none = LOSSES.get("spot_fft")(gain=8, background_weight=0, fft_weight=0.0)
    some = LOSSES.get("spot_fft")(gain=8, background_weight=0, fft_weight=0.1)
    (p, pw), (n, nw), (s, sw) = plain(logits, target, mask), none(logits, target, mask), some(logits, target, mask)
    assert torch.allclose(p, n) and torch.equal(pw, nw) and torch.equal(pw, sw)
    assert (s > p).all()
    exact = torch.logit(target.clamp(1e-4, 1 - 1e-4))
    assert (some(exact, target, mask)[0] < s).all()


def test_the_spot_baseline_can_see_the_cells_at_a_larger_size(tmp_path):
    """eval.spot_size: the same cells, preprocessed the run's way at 64 px, matched by file."""
    from cellae.evaluate import evaluate_run
    from cellae.training import train

    config = tiny_config(tmp_path, eval={"spot_size": 64})
    run_dir = train(config, tmp_path / "runs", evaluate=False)
    spots = evaluate_run(run_dir, quiet=True, cache_dir=str(tmp_path / "cache"))["spot_baseline"]
    assert spots["image_size"] == 64 and 0.0 <= spots["auroc"] <= 1.0
    with pytest.raises(CellaeError, match="eval.spot_size"):
        config_from_dict({"eval": {"spot_size": 48}}, check_paths=False)


def test_dihedral_draws_its_symmetries_as_it_always_has():
    # symmetry k: a mirror if k >= 4, then k % 4 quarter turns; the same draws as before, so a
    # seed trains the weights it trained (the numbers measured in docs/latent_quality.md)
    torch.manual_seed(3)
    images = torch.randint(0, 256, (32, 3, 6, 6), dtype=torch.uint8)
    masks = torch.randint(0, 2, (32, 6, 6), dtype=torch.uint8)
    torch.manual_seed(1)
    turned, turned_masks = dihedral(images, masks)
    torch.manual_seed(1)
    choice = torch.randint(0, 8, (32,))
    for k, image, mask, out, out_mask in zip(choice.tolist(), images, masks, turned, turned_masks,
                                             strict=True):
        expected = [torch.rot90(t.flip(-1) if k >= 4 else t, k % 4, dims=(-2, -1))
                    for t in (image, mask)]
        assert torch.equal(out, expected[0]) and torch.equal(out_mask, expected[1])
