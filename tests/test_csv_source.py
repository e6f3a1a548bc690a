"""The CSV source: a table of file, label and patient, read from the CSV's folder."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from cellae.cli import main
from cellae.config import DataConfig
from cellae.data.cache import prepare_cache
from cellae.data.inspection import inspect_source
from cellae.data.sources import csv_source as csv_module
from cellae.data.sources import open_source
from cellae.data.sources.csv_source import CsvSource
from cellae.errors import CellaeError
from conftest import cell_array, cell_name, png_bytes


def write_images(root: Path, n_per_class: int = 3) -> list[tuple[str, str]]:
    """(relative path, folder label) of small NIH-named PNGs in two class folders."""
    rows = []
    for c, label in enumerate(("Parasitized", "Uninfected")):
        (root / "images" / label).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            relative = f"images/{label}/{cell_name(1 + i % 2, i)}"
            (root / relative).write_bytes(png_bytes(cell_array(10 * c + i, 20 + i, 18)))
            rows.append((relative, label))
    return rows


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def labelled(tmp_path) -> Path:
    """labels.csv over six good images, with a patient column."""
    rows = write_images(tmp_path)
    return write_csv(tmp_path / "labels.csv", ["file,label,patient"] + [
        f"{file},{label},P{i % 3}" for i, (file, label) in enumerate(rows)
    ])


def test_opens_with_labels_patients_and_class_names(labelled):
    source = open_source(str(labelled))
    assert isinstance(source, CsvSource) and source.kind == "csv"
    assert len(source) == 6
    # the malaria folder names follow the malaria convention: uninfected 0, infected 1
    assert source.class_names == ["uninfected", "infected"]
    assert source.label_map == {"Parasitized": 1, "Uninfected": 0}
    assert source.labels == [1, 1, 1, 0, 0, 0]
    assert source.patients == ["P0", "P1", "P2", "P0", "P1", "P2"]
    assert source.files[0].startswith("images/Parasitized/C1P11thinF")
    assert source.skipped == [] and source.unmatched_patients == 0
    assert source.layout == "CSV (file, label, patient), malaria labels"
    samples = list(source)
    assert len(samples) == 6 and samples[0].image.shape == (20, 18, 3)
    np.testing.assert_array_equal(samples[0].image, cell_array(0, 20, 18))


def test_without_a_patient_column_the_patient_comes_from_the_name(tmp_path):
    rows = write_images(tmp_path, n_per_class=2)
    (tmp_path / "plain.png").write_bytes(png_bytes(cell_array(7)))
    write_csv(tmp_path / "t.csv", ["label,file"] + [f"{label},{file}" for file, label in rows]
              + ["Uninfected,plain.png"])
    source = open_source(str(tmp_path / "t.csv"))
    assert source.patients == ["C1", "C2", "C1", "C2", "plain.png"]
    assert source.unmatched_patients == 1  # a name without an id is its own patient
    assert source.layout == "CSV (file, label), malaria labels"


def test_an_empty_patient_falls_back_to_the_name(tmp_path):
    rows = write_images(tmp_path, n_per_class=1)
    write_csv(tmp_path / "t.csv", ["file,label,patient", f"{rows[0][0]},a,", f"{rows[1][0]},b,X"])
    assert open_source(str(tmp_path / "t.csv")).patients == ["C1", "X"]


def test_other_labels_are_numbered_in_natural_order(tmp_path):
    rows = write_images(tmp_path)
    labels = ["stage10", "stage2", "stage1", "stage2", "stage10", "stage1"]
    write_csv(tmp_path / "t.csv", ["file,label"] + [
        f"{file},{label}" for (file, _), label in zip(rows, labels, strict=True)
    ])
    source = open_source(str(tmp_path / "t.csv"))
    assert source.class_names == ["stage1", "stage2", "stage10"]
    assert source.labels == [2, 1, 0, 1, 2, 0]
    assert source.layout == "CSV (file, label)"


def test_spreadsheet_conventions_are_read(tmp_path):
    """A byte-order mark, capitalised headers, CRLF lines, quoted names and Windows paths."""
    rows = write_images(tmp_path, n_per_class=1)
    (tmp_path / "images" / "with, comma.png").write_bytes(png_bytes(cell_array(3)))
    windows = rows[0][0].replace("/", "\\")
    text = "\r\n".join([" File , Label ", f"{windows},x", '"images/with, comma.png",y', ""])
    (tmp_path / "t.csv").write_bytes(b"\xef\xbb\xbf" + text.encode())
    source = open_source(str(tmp_path / "t.csv"))
    assert source.files == [rows[0][0], "images/with, comma.png"]
    assert source.skipped == []


def bad_csv(tmp_path: Path) -> Path:
    rows = write_images(tmp_path / "data")
    outside = tmp_path / "outside.png"
    outside.write_bytes(png_bytes(cell_array(9)))
    (tmp_path / "data" / "images" / "empty.png").write_bytes(b"")
    (tmp_path / "data" / "images" / "broken.png").write_bytes(b"not a png at all")
    (tmp_path / "data" / "notes.txt").write_text("hello")
    good = [f"{file},{label}" for file, label in rows]
    return write_csv(tmp_path / "data" / "labels.csv", ["file,label", *good[:3], *[
        "images/missing.png,Parasitized",  # row 5
        "only-one-value",  # row 6
        ",Uninfected",  # row 7
        f"{rows[0][0]},",  # row 8
        "../outside.png,Uninfected",  # row 9
        f"{outside},Uninfected",  # row 10
        "images\\..\\..\\outside.png,Uninfected",  # row 11
        "C:/outside.png,Uninfected",  # row 12
        "notes.txt,Uninfected",  # row 13
        "images/empty.png,Uninfected",  # row 14
        "images/broken.png,Uninfected",  # row 15
        "images,Uninfected",  # row 16
        "images/a\0.png,Uninfected",  # row 17
    ], *good[3:]])


def test_bad_rows_missing_and_unsafe_files_are_skipped_and_listed(tmp_path):
    source = open_source(str(bad_csv(tmp_path)))
    assert len(source) == 7  # the six good images and broken.png, found bad only when read
    assert not any("outside" in file for file in source.files)
    reasons = dict(source.skipped)
    assert reasons == {
        "images/missing.png": "row 5: no such file",
        "row 6": "1 values for 2 columns (quote a file name that holds a comma)",
        "row 7": "no file name",
        "images/Parasitized/C1P11thinF_IMG_20150101_120000_cell_0.png": "row 8: no label",
        "../outside.png": "row 9: unsafe path (absolute or with '..'), not read",
        str(tmp_path / "outside.png"): "row 10: unsafe path (absolute or with '..'), not read",
        "images/../../outside.png": "row 11: unsafe path (absolute or with '..'), not read",
        "C:/outside.png": "row 12: unsafe path (absolute or with '..'), not read",
        "notes.txt": "row 13: not an image file (.txt)",
        "images/empty.png": "row 14: empty file (0 bytes)",
        "images": "row 16: not an image file (no suffix)",
        "images/a\0.png": "row 17: not a file name (it holds a NUL byte)",
    }
    images = list(source)
    assert len(images) == 6
    assert "not a readable image" in dict(source.skipped)["images/broken.png"]


def test_a_file_listed_twice_is_used_once(tmp_path):
    rows = write_images(tmp_path, n_per_class=1)
    write_csv(tmp_path / "t.csv", ["file,label", f"{rows[0][0]},a", f"{rows[1][0]},b",
                                   f"./{rows[0][0]},b"])
    source = open_source(str(tmp_path / "t.csv"))
    assert source.files == [rows[0][0], rows[1][0]] and source.labels == [0, 1]
    assert dict(source.skipped) == {f"./{rows[0][0]}": "row 4: listed again (row 2 is used)"}


def test_strict_stops_at_the_first_bad_row(tmp_path):
    with pytest.raises(CellaeError, match=r"images/missing.png: row 5: no such file .*--strict"):
        open_source(DataConfig(source=str(bad_csv(tmp_path)), strict=True))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"path,class\na.png,x\n", "has no 'file' and 'label' header"),
        (b"", "has no 'file' and 'label' header"),
        (b"file,label\n", "lists no usable image"),
        (b"file,label\nx.png,a\n", r"lists no usable image \(1 rows skipped"),
        (b"file,label\n\xff\xfe,a\n", "is not UTF-8 text"),
        (b"file,label\nx.png,a\n" + b"y" * 200_000 + b",b\n", "line 3: not a readable CSV"),
    ],
)
def test_unreadable_tables_are_one_line_errors(tmp_path, content, message):
    (tmp_path / "t.csv").write_bytes(content)
    with pytest.raises(CellaeError, match=message) as error:
        open_source(str(tmp_path / "t.csv"))
    assert "\n" not in str(error.value)


def test_one_class_is_an_error(tmp_path):
    rows = write_images(tmp_path, n_per_class=2)
    write_csv(tmp_path / "t.csv", ["file,label"] + [f"{file},same" for file, _ in rows])
    with pytest.raises(CellaeError, match=r"one class only \(same\)"):
        open_source(str(tmp_path / "t.csv"))


def test_a_csv_over_the_limit_is_refused_unread(tmp_path, monkeypatch):
    rows = write_images(tmp_path)
    path = write_csv(tmp_path / "t.csv", ["file,label"] + [f"{f},{label}" for f, label in rows])
    monkeypatch.setattr(csv_module, "MAX_CSV_BYTES", path.stat().st_size - 1)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("the CSV was read"))
    with pytest.raises(CellaeError, match="a label CSV is refused above"):
        open_source(str(path))


def test_missing_csv_and_a_folder_named_like_one(tmp_path, make_kaggle_folder):
    with pytest.raises(CellaeError, match="no such file: .*nope.csv"):
        open_source(str(tmp_path / "nope.csv"))
    folder = make_kaggle_folder(tmp_path / "data.csv")
    assert open_source(str(folder)).kind == "folder"


def test_inspect_reports_classes_patients_and_skipped_rows(tmp_path, labelled):
    report = inspect_source(str(labelled))
    assert f"source: {labelled} (csv, CSV (file, label, patient), malaria labels)" in report
    assert "labels: Uninfected = uninfected = 0, Parasitized = infected = 1" in report
    assert "images: 6" in report and "Parasitized: 3" in report and "Uninfected: 3" in report
    assert "patients: 3" in report
    assert "images per patient: min 2, median 2, max 2" in report
    assert "P0 " in report and "P2 " in report
    assert "skipped: 0 files" in report
    report = inspect_source(str(bad_csv(tmp_path / "bad")))
    assert "skipped: 13 files" in report  # twelve rows, and broken.png found from its header
    assert "  row 7: no file name" in report
    assert "  ../outside.png: row 9: unsafe path" in report


def test_cellae_data_inspect_on_a_csv(labelled, capsys):
    assert main(["data", "inspect", str(labelled)]) == 0
    assert "patients: 3" in capsys.readouterr().out
    labelled.write_text("name,class\n", encoding="utf-8")
    assert main(["data", "inspect", str(labelled)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cellae: error: ") and "\n" not in err and "header" in err


def test_prepare_builds_a_cache_and_any_change_rebuilds_it(tmp_path, labelled):
    config = DataConfig(source=str(labelled), cache_dir=str(tmp_path / "cache"), workers=1,
                        image_size=32)
    cache = prepare_cache(config, progress=False)
    assert len(cache) == 6 and cache.images.shape == (6, 3, 32, 32)
    assert cache.meta["source"]["kind"] == "csv"
    assert cache.class_names == ["uninfected", "infected"]
    assert cache.patients.tolist() == ["P0", "P1", "P2", "P0", "P1", "P2"]
    assert prepare_cache(config, progress=False).path == cache.path

    lines = labelled.read_text(encoding="utf-8").splitlines()
    labelled.write_text("\n".join([*lines[:-1], lines[-1].replace(",P2", ",P9")]) + "\n",
                        encoding="utf-8")
    edited = prepare_cache(config, progress=False)
    assert edited.path != cache.path and edited.patients[-1] == "P9"

    image = labelled.parent / edited.files[0]
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert prepare_cache(config, progress=False).path not in (cache.path, edited.path)


def test_a_source_crosses_to_a_worker_process(labelled):
    source = open_source(str(labelled))
    copy = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(copy.load(2), source.load(2))
    assert copy.fingerprint() == source.fingerprint()


def test_a_csv_over_the_malaria_sample(tmp_path, malaria_sample):
    names = {c: sorted(p.name for p in (malaria_sample / c).iterdir())[:5]
             for c in ("Parasitized", "Uninfected")}
    (tmp_path / "sample").symlink_to(malaria_sample)  # a link below the CSV's folder is followed
    path = write_csv(tmp_path / "sample.csv", ["file,label"] + [
        f"sample/{c}/{name},{c}" for c, files in names.items() for name in files
    ])
    source = open_source(str(path))
    assert len(source) == 10 and source.skipped == []
    assert source.class_names == ["uninfected", "infected"]
    assert source.unmatched_patients == 0
    assert all(sample.image.ndim == 3 for sample in source)


def test_csv_labels_infected_and_uninfected_follow_the_malaria_convention():
    from cellae.data.sources.labels import classes_from_names

    classes = classes_from_names(["infected", "uninfected", "infected"])
    assert classes.names == ["uninfected", "infected"] and classes.malaria
    assert classes.label_map == {"infected": 1, "uninfected": 0}
