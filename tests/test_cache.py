from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from cellae.config import DataConfig, SyntheticConfig
from cellae.data import cache as cache_module
from cellae.data.cache import TEMP_PREFIX, CellCache, open_cache, prepare_cache
from cellae.errors import CellaeError
from conftest import cell_array, png_bytes


def synthetic_config(tmp_path, **changes) -> DataConfig:
    settings = {
        "source": "synthetic",
        "synthetic": SyntheticConfig(n_images=40, n_patients=4),
        "cache_dir": str(tmp_path / "cache"),
        "workers": 1,
        "image_size": 32,
        **changes,
    }
    return DataConfig(**settings)


def cache_folders(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache").iterdir())


def test_build_gives_the_contracted_arrays(tmp_path):
    cache = prepare_cache(synthetic_config(tmp_path), progress=False)
    assert isinstance(cache, CellCache)
    assert len(cache) == 40
    assert isinstance(cache.images, np.memmap) and isinstance(cache.masks, np.memmap)
    assert cache.images.shape == (40, 3, 32, 32) and cache.images.dtype == np.uint8
    assert cache.masks.shape == (40, 32, 32) and set(np.unique(cache.masks)) == {0, 1}
    assert cache.labels.dtype == np.int64 and set(cache.labels.tolist()) == {0, 1}
    assert cache.patients.shape == (40,) and cache.patients[0].startswith("S")
    assert cache.files[0].startswith(("infected/", "uninfected/"))
    assert cache.class_names == ["uninfected", "infected"]
    assert cache.path.name == cache.meta["key"][:16]
    assert cache.meta["counts"] == {"uninfected": 24, "infected": 16}
    assert cache.meta["preprocess"]["image_size"] == 32
    assert cache.meta["skipped"] == []
    assert cache.images.max(axis=(1, 2, 3)).min() > 0  # no empty slot


def test_reuse_is_fast_and_changes_rebuild(tmp_path):
    config = synthetic_config(tmp_path)
    first = prepare_cache(config, progress=False)
    started = time.perf_counter()
    again = prepare_cache(config, progress=False)
    assert time.perf_counter() - started < 0.5
    assert again.path == first.path
    assert again.meta["created"] == first.meta["created"]
    for change in (
        {"background": "fill_mean"},
        {"image_size": 64},
        {"color": "gray"},
        {"resize": "pad"},
        {"synthetic": SyntheticConfig(n_images=40, n_patients=4, seed=1)},
    ):
        other = prepare_cache(synthetic_config(tmp_path, **change), progress=False)
        assert other.path != first.path, change
    gray = prepare_cache(synthetic_config(tmp_path, color="gray"), progress=False)
    assert gray.images.shape == (40, 1, 32, 32)
    assert len(cache_folders(tmp_path)) == 6


def test_touching_a_file_rebuilds(tmp_path, make_kaggle_folder):
    root = make_kaggle_folder(tmp_path / "data")
    config = DataConfig(source=str(root), cache_dir=str(tmp_path / "cache"), workers=1)
    first = prepare_cache(config, progress=False)
    assert len(first) == 12 and first.images.shape[1:] == (3, 64, 64)
    assert prepare_cache(config, progress=False).path == first.path
    some_file = root / "cell_images" / first.files[0]
    stat = some_file.stat()
    os.utime(some_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert prepare_cache(config, progress=False).path != first.path


def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    config = synthetic_config(tmp_path)
    calls = {"n": 0}
    real = cache_module.preprocess

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 20:
            raise KeyboardInterrupt  # the user pressed Ctrl-C half-way
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_module, "preprocess", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare_cache(config, progress=False)
    assert cache_folders(tmp_path) == []  # no cache under its key, no temporary folder
    monkeypatch.setattr(cache_module, "preprocess", real)
    cache = prepare_cache(config, progress=False)
    assert len(cache) == 40
    assert cache_folders(tmp_path) == [cache.path.name]


def test_abandoned_temporary_folders_are_removed(tmp_path):
    cache_dir = tmp_path / "cache"
    dead = cache_dir / f"{TEMP_PREFIX}0123456789abcdef-999999999-abcd1234"
    dead.mkdir(parents=True)
    (dead / "images.npy").write_bytes(b"half")
    alive = cache_dir / f"{TEMP_PREFIX}0123456789abcdef-{os.getpid()}-abcd1234"
    alive.mkdir()
    # another machine of a cluster sharing the folder: its process ids mean nothing here
    elsewhere = cache_dir / f"{TEMP_PREFIX}0123456789abcdef-999999999-abcd1234-node-b.cluster"
    elsewhere.mkdir()
    stale = cache_dir / f"{TEMP_PREFIX}0123456789abcdef-999999999-abcd1234-node-c.cluster"
    stale.mkdir()
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (two_days_ago, two_days_ago))
    cache = prepare_cache(synthetic_config(tmp_path), progress=False)
    assert not dead.exists() and not stale.exists()
    assert alive.exists()  # a build still running in a live process is left alone
    assert elsewhere.exists()  # and one on another machine, until it has been idle a day
    assert sorted(cache_folders(tmp_path)) == sorted([cache.path.name, alive.name, elsewhere.name])


def test_files_bad_on_decode_are_skipped_and_arrays_compacted(tmp_path, make_kaggle_folder):
    root = make_kaggle_folder(tmp_path / "data", n_per_class=5, n_patients=2)
    good = png_bytes(cell_array(9, 40, 40))
    bad = root / "cell_images" / "Parasitized" / "C1P11thinF_bad_cell_3.png"
    bad.write_bytes(good[:-30])  # header intact, data cut off: found only when decoding
    (root / "cell_images" / "Uninfected" / "C2P12thinF_empty_cell_4.png").write_bytes(b"")
    config = DataConfig(source=str(root), cache_dir=str(tmp_path / "cache"), workers=1)
    cache = prepare_cache(config, progress=False)
    assert len(cache) == 10
    assert "Parasitized/C1P11thinF_bad_cell_3.png" not in cache.files.tolist()
    assert cache.images.max(axis=(1, 2, 3)).min() > 0  # no gap where the bad file was
    assert cache.masks.reshape(10, -1).max(axis=1).min() == 1
    reasons = {s["file"]: s["reason"] for s in cache.meta["skipped"]}
    assert "truncated" in reasons["Parasitized/C1P11thinF_bad_cell_3.png"]
    assert "empty" in reasons["Uninfected/C2P12thinF_empty_cell_4.png"]
    # each stored image is the preprocessed version of the file named beside it
    from PIL import Image

    from cellae.data.preprocess import PreprocessSettings, preprocess
    for i in (0, 4, 9):
        decoded = np.asarray(Image.open(root / "cell_images" / cache.files[i]).convert("RGB"))
        np.testing.assert_array_equal(cache.images[i], preprocess(decoded, PreprocessSettings())[0])
    # strict: the same folder is refused, both on reuse and on a fresh build
    strict = DataConfig(source=str(root), cache_dir=str(tmp_path / "cache"), strict=True)
    with pytest.raises(CellaeError, match="strict"):
        prepare_cache(strict, progress=False)
    (root / "cell_images" / "Uninfected" / "C2P12thinF_empty_cell_4.png").unlink()
    strict.cache_dir = str(tmp_path / "other")  # now the bad file is found only while building
    with pytest.raises(CellaeError, match="C1P11thinF_bad_cell_3.png"):
        prepare_cache(strict, progress=False)
    assert list((tmp_path / "other").iterdir()) == []


def test_names_are_saved_a_slice_at_a_time_as_numpy_would_save_them(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "STRING_SLICE", 3)  # several slices, a short last one
    names = ["Parasitized/C1P11thinF_a.png", "b", "", "Uninfected/été_細胞.png", "c" * 70, "d", "e"]
    rows = np.array([0, 1, 2, 3, 4, 6])  # row 5 skipped
    cache_module._save_strings(tmp_path / "names.npy", names, rows)
    np.save(tmp_path / "numpy.npy", np.array([names[i] for i in rows], dtype=str))
    assert (tmp_path / "names.npy").read_bytes() == (tmp_path / "numpy.npy").read_bytes()
    cache_module._save_strings(tmp_path / "empty.npy", ["", ""], np.array([0, 1]))
    assert np.load(tmp_path / "empty.npy").tolist() == ["", ""]


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_parallel_build_matches_in_process_build(tmp_path, monkeypatch, start):
    if start == "fork" and not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    monkeypatch.setattr(cache_module, "_start_method", lambda: start)
    n = cache_module.IN_PROCESS_LIMIT + 44
    synthetic = SyntheticConfig(n_images=n, n_patients=5)
    one = prepare_cache(
        synthetic_config(tmp_path / "a", synthetic=synthetic, workers=1), progress=False
    )
    two = prepare_cache(
        synthetic_config(tmp_path / "b", synthetic=synthetic, workers=2), progress=False
    )
    assert one.meta["workers"] == 1 and two.meta["workers"] == 2
    assert two.meta["worker_start"] == start
    np.testing.assert_array_equal(one.images, two.images)
    np.testing.assert_array_equal(one.masks, two.masks)
    np.testing.assert_array_equal(one.labels, two.labels)


def test_workers_fork_only_where_torch_is_not_loaded():
    import subprocess
    import sys

    import torch  # noqa: F401  (a process that has loaded torch spawns its workers)

    assert cache_module._start_method() == "spawn"
    fresh = subprocess.run(
        [sys.executable, "-c", "from cellae.data.cache import _start_method; print(_start_method())"],
        capture_output=True, text=True, check=True)
    assert fresh.stdout.strip() == ("fork" if sys.platform.startswith("linux") else "spawn")


def test_zip_source_builds(tmp_path, make_kaggle_zip):
    archive = make_kaggle_zip(tmp_path / "cell_images.zip")
    config = DataConfig(source=str(archive), cache_dir=str(tmp_path / "cache"), workers=1)
    cache = prepare_cache(config, progress=False)
    assert len(cache) == 12
    assert cache.meta["source"]["kind"] == "zip"
    assert cache.meta["label_map"] == {"Parasitized": 1, "Uninfected": 0}


def test_open_cache_refuses_incomplete_folders(tmp_path):
    cache = prepare_cache(synthetic_config(tmp_path), progress=False)
    with pytest.raises(CellaeError, match="no cache folder"):
        open_cache(tmp_path / "missing")
    meta = json.loads((cache.path / "meta.json").read_text())
    (cache.path / "meta.json").write_text(json.dumps({**meta, "format_version": -1}))
    with pytest.raises(CellaeError, match="another cellae version"):
        open_cache(cache.path)
    (cache.path / "meta.json").unlink()
    with pytest.raises(CellaeError, match="incomplete"):
        open_cache(cache.path)
    # prepare_cache replaces a damaged folder instead of failing
    assert len(prepare_cache(synthetic_config(tmp_path), progress=False)) == 40


def test_malaria_sample_subset_builds(tmp_path, malaria_sample):
    # a quick end-to-end check on a few real files, copied so that the test stays fast
    for class_name in ("Parasitized", "Uninfected"):
        target = tmp_path / "cell_images" / class_name
        target.mkdir(parents=True)
        for path in sorted((malaria_sample / class_name).iterdir())[:15]:
            (target / path.name).write_bytes(path.read_bytes())
    config = DataConfig(
        source=str(tmp_path), cache_dir=str(tmp_path / "cache"), background="fill_mean"
    )
    cache = prepare_cache(config, progress=False)
    assert len(cache) == 30
    assert cache.meta["unmatched_patients"] == 0
    assert (cache.images.max(axis=1) > 12).all()  # fill_mean: no black padding anywhere


def test_parallel_build_skips_or_stops_on_bad_files(tmp_path, make_kaggle_folder):
    n_per_class = cache_module.IN_PROCESS_LIMIT // 2 + 10
    root = make_kaggle_folder(tmp_path / "data", n_per_class=n_per_class, junk=False)
    good = png_bytes(cell_array(9, 40, 40))
    (root / "cell_images" / "Uninfected" / "C1P11thinF_bad_cell_0.png").write_bytes(good[:-30])
    strict = DataConfig(source=str(root), cache_dir=str(tmp_path / "s"), workers=2, strict=True)
    with pytest.raises(CellaeError, match="C1P11thinF_bad_cell_0.png"):
        prepare_cache(strict, progress=False)
    assert list((tmp_path / "s").iterdir()) == []
    config = DataConfig(source=str(root), cache_dir=str(tmp_path / "c"), workers=2)
    cache = prepare_cache(config, progress=False)
    assert len(cache) == 2 * n_per_class
    assert [s["file"] for s in cache.meta["skipped"]] == ["Uninfected/C1P11thinF_bad_cell_0.png"]
    assert cache.images.max(axis=(1, 2, 3)).min() > 0
    # the workers wrote each image at its own row, moved up past the skipped one
    from PIL import Image

    from cellae.data.preprocess import PreprocessSettings, preprocess
    for i in (0, n_per_class - 1, n_per_class, len(cache) - 1):
        decoded = np.asarray(Image.open(root / "cell_images" / cache.files[i]).convert("RGB"))
        image, mask = preprocess(decoded, PreprocessSettings())
        np.testing.assert_array_equal(cache.images[i], image)
        np.testing.assert_array_equal(cache.masks[i], mask)
