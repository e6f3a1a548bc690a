from __future__ import annotations

import json

import numpy as np
import pytest

from cellae import runs
from cellae.data.splits import split_indices
from cellae.errors import CellaeError


def dataset(n_patients: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Patients of unequal size; some have no infected cells, like the NIH healthy donors."""
    rng = np.random.default_rng(seed)
    patients, labels = [], []
    for p in range(n_patients):
        size = int(rng.integers(20, 120))
        infected_share = 0.0 if p % 4 == 0 else rng.uniform(0.2, 0.8)
        patients += [f"C{p}"] * size
        labels += (rng.random(size) < infected_share).astype(int).tolist()
    return np.array(patients), np.array(labels)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_patient_split_keeps_patients_on_one_side(seed):
    patients, labels = dataset()
    train, test = split_indices(patients, labels, 0.2, seed)
    assert train.dtype == np.int64 and test.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
    assert len(train) + len(test) == len(labels)
    assert not set(train) & set(test)
    assert not set(patients[train]) & set(patients[test])
    assert set(labels[test]) == {0, 1} and set(labels[train]) == {0, 1}
    assert abs(len(test) / len(labels) - 0.2) < 0.05


def test_split_is_deterministic_by_seed():
    patients, labels = dataset()
    a = split_indices(patients, labels, 0.25, seed=5)
    b = split_indices(patients, labels, 0.25, seed=5)
    c = split_indices(patients, labels, 0.25, seed=6)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_image_split_is_stratified():
    patients, labels = dataset()
    train, test = split_indices(patients, labels, 0.3, seed=0, by="image")
    assert len(train) + len(test) == len(labels)
    for value in (0, 1):
        share = (labels[test] == value).sum() / (labels == value).sum()
        assert abs(share - 0.3) < 0.01
    assert set(patients[train]) & set(patients[test])  # images of one patient on both sides
    again = split_indices(patients, labels, 0.3, seed=0, by="image")
    np.testing.assert_array_equal(test, again[1])


def test_one_patient_is_an_error():
    with pytest.raises(CellaeError, match="at least 2 patients"):
        split_indices(["C1"] * 10, [0, 1] * 5, 0.2, 0)


def test_impossible_patient_split_is_an_error():
    # the only infected cells belong to one patient: they cannot be on both sides
    patients = ["C1"] * 5 + ["C2"] * 5 + ["C3"] * 5
    labels = [1] * 5 + [0] * 10
    with pytest.raises(CellaeError, match="every class"):
        split_indices(patients, labels, 0.3, 0)


def test_one_class_splits_by_patient_and_bad_arguments_are_errors():
    # an unlabelled set (every cell of the class "cell") still keeps each patient on one side
    patients = ["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["d"] * 4
    train, test = split_indices(patients, [0] * 16, 0.25, 0)
    assert len(test) == 4 and not {patients[i] for i in train} & {patients[i] for i in test}
    with pytest.raises(CellaeError, match="data.split"):
        split_indices(["a", "b"], [0, 1], 0.5, 0, by="slide")
    with pytest.raises(CellaeError, match="test_fraction"):
        split_indices(["a", "b"], [0, 1], 1.5, 0)


def test_per_file_patients_behave_like_an_image_split():
    labels = np.array([0, 1] * 50)
    patients = np.array([f"file{i}" for i in range(100)])
    train, test = split_indices(patients, labels, 0.2, seed=0)
    assert len(test) == 20 and set(labels[test]) == {0, 1}


def test_write_split_writes_files_per_side(tmp_path):
    files = np.array(["a.png", "b.png", "c.png", "d.png"])
    path = tmp_path / "split.json"
    runs.write_split(tmp_path, files, np.array([0, 2]), np.array([1, 3]))
    document = json.loads(path.read_text())
    assert runs.read_split(tmp_path) == {"train": ["a.png", "c.png"], "test": ["b.png", "d.png"]}
    assert document["train"] == ["a.png", "c.png"]
    assert document["test"] == ["b.png", "d.png"]
    assert document["n_train"] == 2 and document["n_test"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["split.json"]  # no temporary file left
