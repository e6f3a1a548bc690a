from __future__ import annotations

import re
import time

import numpy as np
import pytest

from cellae.config import DataConfig, SyntheticConfig
from cellae.data import synthetic
from cellae.data.preprocess import PreprocessSettings, cell_mask, preprocess
from cellae.data.sources import open_source


@pytest.fixture(scope="module")
def plan():
    return synthetic.plan(SyntheticConfig(n_images=400, n_patients=8, infected_fraction=0.4))


@pytest.fixture(scope="module")
def cells(plan):
    return [synthetic.draw_cell(plan, i) for i in range(len(plan.files))]


def test_plan_labels_patients_and_names(plan):
    assert len(plan.files) == 400
    assert int(plan.labels.sum()) == 160  # the infected fraction, exactly
    assert sorted(set(plan.patients)) == [f"S{k:02d}" for k in range(1, 9)]
    for file, label, patient in zip(plan.files, plan.labels, plan.patients, strict=True):
        folder = "infected" if label == 1 else "uninfected"
        assert re.fullmatch(rf"{folder}/{patient}_cell_\d{{5}}\.png", file)
    # every patient has cells of both classes, so patient splits have something to choose
    for patient in set(plan.patients):
        labels = {int(v) for v, p in zip(plan.labels, plan.patients, strict=True) if p == patient}
        assert labels == {0, 1}


def test_deterministic_by_seed():
    config = SyntheticConfig(n_images=20, n_patients=3, seed=7)
    a, b = synthetic.plan(config), synthetic.plan(config)
    assert a.files == b.files
    for i in (0, 5, 19):
        np.testing.assert_array_equal(synthetic.draw_cell(a, i), synthetic.draw_cell(b, i))
    other = synthetic.plan(SyntheticConfig(n_images=20, n_patients=3, seed=8))
    assert not any(
        np.array_equal(synthetic.draw_cell(a, i), synthetic.draw_cell(other, i)) for i in range(3)
    )


def test_frames_vary_like_the_real_crops(plan, cells):
    heights = [c.shape[0] for c in cells]
    widths = [c.shape[1] for c in cells]
    assert 80 <= min(heights) < 100 and 140 < max(heights) <= 160
    assert 80 <= min(widths) < 100 and 140 < max(widths) <= 160
    assert len({c.shape for c in cells}) > 50
    for i, cell in enumerate(cells[:50]):
        assert cell.dtype == np.uint8 and cell.shape[2] == 3
        assert synthetic.frame_size(plan, i) == cell.shape[:2]
        assert cell[0, 0].max() == 0 and cell[-1, -1].max() == 0  # black padding in the corners
        mask = cell_mask(cell)
        assert 0.6 < mask.mean() < 0.95
        # the cell touches all four sides of its frame, as in a tight crop
        assert mask[0].any() and mask[-1].any() and mask[:, 0].any() and mask[:, -1].any()


def _mean_colour(cell: np.ndarray) -> np.ndarray:
    return cell[cell_mask(cell)].mean(axis=0)


def test_classes_do_not_differ_by_mean_colour(plan, cells):
    means = np.array([_mean_colour(c) for c in cells])
    labels = plan.labels
    class_gap = np.abs(means[labels == 1].mean(axis=0) - means[labels == 0].mean(axis=0))
    patients = np.array(plan.patients)
    per_patient = np.array([means[patients == p].mean(axis=0) for p in np.unique(patients)])
    stain_spread = per_patient.std(axis=0)
    assert stain_spread.mean() > 8  # slides really differ in stain
    assert np.all(class_gap < 0.25 * stain_spread), (class_gap, stain_spread)


def _dark_spot_fraction(cell: np.ndarray) -> float:
    """Share of cell pixels much darker in green than the cell's typical pixel: parasites."""
    inside = cell_mask(cell)
    green = cell[..., 1].astype(float)
    typical = np.median(green[inside])
    return float(((green < 0.6 * typical) & inside).mean())


def test_infected_cells_carry_parasites_and_uninfected_do_not(plan, cells):
    dark = np.array([_dark_spot_fraction(c) for c in cells])
    infected, uninfected = dark[plan.labels == 1], dark[plan.labels == 0]
    assert (infected > 0.001).mean() > 0.9
    assert (uninfected > 0.001).mean() < 0.05
    # parasites are small: a few percent of the cell at most
    assert np.median(infected) < 0.03


def test_synthetic_source_matches_the_plan():
    config = SyntheticConfig(n_images=30, n_patients=3, seed=2)
    source = open_source(DataConfig(synthetic=config))
    assert source.class_names == ["uninfected", "infected"]
    assert len(source) == 30 and source.unmatched_patients == 0
    sample = next(iter(source))
    assert sample.file.startswith(("infected/", "uninfected/"))
    assert source.probe(0) == (sample.image.shape[1], sample.image.shape[0])
    assert source.fingerprint() == open_source(DataConfig(synthetic=config)).fingerprint()
    config.seed = 3
    assert source.fingerprint() != open_source(DataConfig(synthetic=config)).fingerprint()


def test_generate_and_preprocess_is_fast():
    config = SyntheticConfig(n_images=300, n_patients=5)
    settings = PreprocessSettings()
    started = time.perf_counter()
    source = open_source(DataConfig(synthetic=config))
    for sample in source:
        preprocess(sample.image, settings)
    per_image = (time.perf_counter() - started) / 300
    assert per_image < 0.01  # 2000 images in well under 20 s on one slow core
