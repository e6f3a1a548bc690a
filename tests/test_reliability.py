"""Bad inputs and faults that other test files do not cover; docs/reliability.md lists them all.

Every case asserts what the user sees: a one-line ``cellae: error: ...`` naming the problem,
a non-zero exit where the command cannot do its job, no traceback, and nothing half-written
left behind to be read later.
"""

from __future__ import annotations

import csv
import errno
import os
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from cellae import files as files_module
from cellae import runs
from cellae.cli import main
from cellae.config import DataConfig, SyntheticConfig
from cellae.data import cache as cache_module
from cellae.data.cache import TEMP_PREFIX, prepare_cache
from cellae.data.decode import BadImage, decode_image
from cellae.data.inspection import inspect_source
from cellae.data.sources import open_source
from cellae.data.sources.class_folders import find_class_folders
from cellae.errors import CellaeError
from cellae.training import resume, train
from conftest import cell_array, png_bytes
from tiny import tiny_config

# ---------------------------------------------------------------- helpers


def one_line_error(err: str) -> str:
    """The single error line the CLI printed; fails on a traceback or several lines."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("cellae: error: "), err
    return lines[0]


def metric_epochs(run_dir: Path) -> list[int]:
    with (run_dir / runs.METRICS_FILE).open(newline="", encoding="utf-8") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming_size(width: int, height: int) -> bytes:
    """A complete, tiny PNG whose header claims ``width`` x ``height`` RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + _chunk(b"IEND", b""))


def two_class_folder(root: Path, n: int = 3) -> Path:
    """``root/A`` and ``root/B`` with ``n`` good cell PNGs each."""
    for c, name in enumerate(("A", "B")):
        (root / name).mkdir(parents=True)
        for i in range(n):
            (root / name / f"cell_{i}.png").write_bytes(png_bytes(cell_array(10 * c + i)))
    return root


# ---------------------------------------------------------------- bad data


def test_corrupt_png_with_intact_ends_is_skipped_with_a_reason(tmp_path):
    root = two_class_folder(tmp_path / "data")
    data = bytearray(png_bytes(cell_array(99, 30, 30)))
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    (root / "A" / "corrupt.png").write_bytes(bytes(data))
    source = open_source(str(root))
    assert len(list(source)) == 6
    assert dict(source.skipped) == {"A/corrupt.png": dict(source.skipped)["A/corrupt.png"]}
    assert "not a readable image" in dict(source.skipped)["A/corrupt.png"]


def test_a_20000_by_20000_png_is_refused_from_its_header(tmp_path):
    bomb = png_claiming_size(20_000, 20_000)
    assert len(bomb) < 100  # nothing is decoded: Pillow's default limit refuses the header
    root = two_class_folder(tmp_path / "data")
    (root / "B" / "bomb.png").write_bytes(bomb)
    started = time.perf_counter()
    report = inspect_source(str(root))
    source = open_source(str(root))
    assert len(list(source)) == 6
    assert time.perf_counter() - started < 5
    assert "decompression-bomb" in dict(source.skipped)["B/bomb.png"]
    assert "skipped: 1 files" in report and "decompression-bomb" in report


def test_a_9000_by_9000_png_under_pillows_limit_is_refused_from_its_header(tmp_path):
    root = two_class_folder(tmp_path / "data")
    (root / "B" / "wide.png").write_bytes(png_claiming_size(9_000, 9_000))  # 81 M pixels
    source = open_source(str(root))
    assert len(list(source)) == 6
    assert "9,000 x 9,000 pixels, more than a cell crop" in dict(source.skipped)["B/wide.png"]


def test_a_1x1_image_is_scaled_up_like_any_other(tmp_path):
    root = two_class_folder(tmp_path / "data")
    (root / "A" / "dot.png").write_bytes(png_bytes(np.full((1, 1, 3), 180, np.uint8)))
    assert decode_image((root / "A" / "dot.png").read_bytes()).shape == (1, 1, 3)
    cache = prepare_cache(DataConfig(source=str(root), cache_dir=str(tmp_path / "cache"),
                                     image_size=32, workers=1), progress=False)
    assert len(cache) == 7 and cache.meta["skipped"] == []
    row = list(cache.files).index("A/dot.png")
    assert cache.images.shape[1:] == (3, 32, 32)
    assert (np.asarray(cache.images[row]) == 180).all()


def test_an_empty_class_folder_beside_two_full_ones_is_noted_not_fatal(tmp_path):
    root = two_class_folder(tmp_path / "data")
    (root / "C").mkdir()
    source = open_source(str(root))
    assert len(source) == 6 and sorted(set(source.labels)) == [0, 1]
    assert "empty class folders: C" in source.ignored
    assert "ignored: empty class folders: C" in inspect_source(str(root))


def test_one_class_only_fails_in_one_line_on_the_command_line(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "A").mkdir(parents=True)
    (root / "A" / "cell.png").write_bytes(png_bytes(cell_array(1)))
    assert main(["data", "inspect", str(root)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert str(root) in line and "expected one subfolder per class" in line
    assert main(["data", "prepare", str(root), "--cache-dir", str(tmp_path / "c")]) == 2
    assert "expected one subfolder per class" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


def test_a_zip_member_that_expands_a_thousandfold_is_refused_unread(tmp_path, monkeypatch):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for c in ("A", "B"):
            for i in range(2):
                z.writestr(f"{c}/cell_{i}.png", png_bytes(cell_array(i)))
        z.writestr("A/huge.png", b"\x00" * (4 << 20))  # 4 MiB of zeros: about 4 kB packed
        z.writestr("B/small_zeros.png", b"\x00" * (512 << 10))  # compresses as much, but small
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo("A/huge.png")
        assert info.file_size / info.compress_size > 1000
    source = open_source(str(archive))
    read = []
    real_read = zipfile.ZipFile.read

    def spy(self, member, *args, **kwargs):
        read.append(getattr(member, "filename", member))
        return real_read(self, member, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "read", spy)
    images = list(source)
    reasons = dict(source.skipped)
    assert len(images) == 4
    assert "zip bomb" in reasons["A/huge.png"] and "4,194,304 bytes" in reasons["A/huge.png"]
    assert "A/huge.png" not in read  # refused from the directory entry, never inflated
    # below 1 MB a high ratio is no danger: the member is read and fails as an image
    assert "zip bomb" not in reasons["B/small_zeros.png"]


def test_a_truncated_zip_fails_in_one_line_on_the_command_line(tmp_path, make_kaggle_zip, capsys):
    archive = make_kaggle_zip(tmp_path / "cells.zip", duplicate=False)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    for command in (["data", "inspect", str(archive)],
                    ["data", "prepare", str(archive), "--cache-dir", str(tmp_path / "c")]):
        assert main(command) == 2
        line = one_line_error(capsys.readouterr().err)
        assert str(archive) in line and "download it again" in line


def test_bad_files_on_the_command_line_are_listed_and_the_rest_used(tmp_path, capsys):
    root = two_class_folder(tmp_path / "data")
    (root / "A" / "empty.png").write_bytes(b"")
    (root / "A" / "text.png").write_text("not an image")
    (root / "B" / "bomb.png").write_bytes(png_claiming_size(20_000, 20_000))
    assert main(["data", "inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert "images: 6" in out and "skipped: 3 files" in out
    assert main(["data", "inspect", str(root), "--strict"]) == 2
    assert "--strict stops at the first bad file" in one_line_error(capsys.readouterr().err)


# ---------------------------------------------------------------- bad configs and arguments


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("modle:\n  latent_dim: 3\n", [], "unknown config key 'modle'"),
        ("train:\n  epochs: ten\n", [], "'train.epochs' must be an integer"),
        ("model:\n  latent_dim: 0\n", [], "'model.latent_dim' must be a positive integer"),
        ("data:\n  test_fraction: 1.5\n", [], "'data.test_fraction' must be between 0 and 1"),
        ("model: [unclosed\n", [], "not valid YAML"),
        ("\x00\x01 binary \xff", [], "not valid YAML"),
        ("name: x\n", ["--set", "model.nope=1"], "config key 'model.nope' is not taken by the 'ae' family"),
        (None, [], "config file not found"),
    ],
    ids=["unknown-key", "wrong-type", "zero-latent", "fraction-above-1", "not-yaml", "binary",
         "set-unknown",
         "missing-file"],
)
def test_bad_configs_fail_in_one_line_before_any_work(tmp_path, capsys, text, overrides, message):
    path = write_config(tmp_path, text) if text is not None else tmp_path / "absent.yaml"
    code = main(["train", str(path), *overrides, "--out", str(tmp_path / "runs")])
    assert code == 2
    assert message in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "runs").exists()  # refused before a run folder was made


def tiny_yaml(tmp_path: Path, epochs: int) -> Path:
    config = tiny_config(tmp_path, train={"epochs": epochs})
    return write_config(tmp_path, config.to_yaml())


def test_out_folder_that_is_not_a_run_gets_a_new_run_inside(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["train", str(tiny_yaml(tmp_path, 1)), "--out", str(out), "--no-eval"]) == 0
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    assert runs.is_run_dir(run_dir) and metric_epochs(run_dir) == [1]
    assert (out / "notes.txt").read_text() == "mine"


def test_out_that_is_a_file_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "results.txt"
    out.write_text("mine")
    assert main(["train", str(tiny_yaml(tmp_path, 1)), "--out", str(out), "--no-eval"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert str(out) in line and "is a file" in line
    assert out.read_text() == "mine"


def test_out_folder_without_write_permission_is_a_clear_error(tmp_path, capsys, monkeypatch):
    out = tmp_path / "locked"
    out.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: False
                        if Path(path) == out and mode & os.W_OK else real_access(path, mode, *a, **k))
    assert main(["train", str(tiny_yaml(tmp_path, 1)), "--out", str(out), "--no-eval"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert str(out) in line and "not writable" in line
    assert list(out.iterdir()) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes through chmod 0o500; the monkeypatched test covers it")
def test_out_folder_with_real_read_only_permissions(tmp_path, capsys):
    out = tmp_path / "locked"
    out.mkdir()
    out.chmod(0o500)
    try:
        assert main(["train", str(tiny_yaml(tmp_path, 1)), "--out", str(out), "--no-eval"]) == 2
    finally:
        out.chmod(0o700)
    assert "not writable" in one_line_error(capsys.readouterr().err)


# ---------------------------------------------------------------- faults during work


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_training(tmp_path: Path, epochs: int) -> tuple[subprocess.Popen, Path]:
    """``cellae train`` in a subprocess; returns once its first checkpoint is on disk."""
    out = tmp_path / "runs"
    process = subprocess.Popen(
        [sys.executable, "-m", "cellae.cli", "train", str(tiny_yaml(tmp_path, epochs)),
         "--out", str(out), "--no-eval"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # as from a terminal: a suite started in the background (`cmd &` in a script) would
        # hand its children SIGINT ignored, and Ctrl-C would never reach training
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        found = list(out.glob("*/checkpoints/last.ckpt")) if out.is_dir() else []
        if found:
            return process, found[0].parent.parent
        if process.poll() is not None:
            pytest.fail(f"training ended before its first checkpoint:\n{process.stderr.read()}")
        time.sleep(0.02)
    process.kill()
    pytest.fail("no checkpoint within 90 s")


EPOCHS = 4


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_training_says_how_to_resume(tmp_path, capsys, signum):
    process, run_dir = start_training(tmp_path, EPOCHS)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.startswith("cellae:")]
    assert "Traceback" not in err
    assert len(lines) == 1 and f"--resume {run_dir}" in lines[0], err
    assert runs.read_run_info(run_dir)["status"] == "interrupted"
    done = metric_epochs(run_dir)
    assert done == list(range(1, len(done) + 1)) and len(done) < EPOCHS
    assert main(["train", "--resume", str(run_dir), "--no-eval"]) == 0
    assert metric_epochs(run_dir) == list(range(1, EPOCHS + 1))
    assert runs.read_run_info(run_dir)["status"] == "finished"


def test_sigkill_during_training_then_resume_gives_every_epoch_once(tmp_path):
    process, run_dir = start_training(tmp_path, EPOCHS)
    process.kill()
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not list((run_dir / "checkpoints").glob("*.tmp"))  # the rename is atomic
    assert len(metric_epochs(run_dir)) < EPOCHS
    assert main(["train", "--resume", str(run_dir), "--no-eval"]) == 0
    # an uninterrupted run has one row per epoch (test_training.py); so has the resumed one
    assert metric_epochs(run_dir) == list(range(1, EPOCHS + 1))


def test_sigkill_during_a_cache_build_leaves_nothing_that_is_read(tmp_path):
    cache_dir = tmp_path / "cache"
    config = DataConfig(source="synthetic", synthetic=SyntheticConfig(n_images=700, n_patients=4),
                        cache_dir=str(cache_dir), workers=1, image_size=32)
    script = (
        "from cellae.config import DataConfig, SyntheticConfig\n"
        "from cellae.data.cache import prepare_cache\n"
        f"prepare_cache(DataConfig(source='synthetic', cache_dir={str(cache_dir)!r}, workers=1,"
        " image_size=32, synthetic=SyntheticConfig(n_images=700, n_patients=4)), progress=False)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    temp: list[Path] = []
    while time.monotonic() < deadline and process.poll() is None:
        temp = list(cache_dir.glob(f"{TEMP_PREFIX}*")) if cache_dir.is_dir() else []
        if temp and (temp[0] / "images.npy").is_file() and (temp[0] / "images.npy").stat().st_size > 4096:
            break
        time.sleep(0.01)
    process.kill()
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    assert [p.name for p in cache_dir.iterdir()] == [temp[0].name]  # only the temporary folder
    cache = prepare_cache(config, progress=False)
    assert len(cache) == 700
    assert [p.name for p in cache_dir.iterdir()] == [cache.path.name]


def test_disk_full_during_a_cache_build(tmp_path, capsys, monkeypatch):
    rows = {"n": 0}
    real_write = cache_module._RowFile.write

    def write(self, index, row):
        rows["n"] += 1
        if rows["n"] == 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(self, index, row)

    monkeypatch.setattr(cache_module._RowFile, "write", write)
    cache_dir = tmp_path / "cache"
    config = DataConfig(source="synthetic", synthetic=SyntheticConfig(n_images=40, n_patients=4),
                        cache_dir=str(cache_dir), workers=1, image_size=32)
    with pytest.raises(CellaeError, match="cannot write the cache .*No space left on device"):
        prepare_cache(config, progress=False)
    assert list(cache_dir.iterdir()) == []
    rows["n"] = 0
    assert main(["data", "prepare", "synthetic", "--size", "32", "--workers", "1",
                 "--cache-dir", str(cache_dir)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "No space left on device" in line and "--cache-dir" in line
    assert list(cache_dir.iterdir()) == []


def test_a_write_refused_only_at_the_flush_fails_the_build(tmp_path, monkeypatch):
    """On NFS a full quota may surface only when written rows are flushed: the build must fail
    then, not keep rows of zeros in a cache that looks whole."""
    def refuse(self):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(cache_module._RowFile, "sync", refuse)
    cache_dir = tmp_path / "cache"
    for workers in (1, 2):
        config = DataConfig(source="synthetic", cache_dir=str(cache_dir), workers=workers,
                            synthetic=SyntheticConfig(n_images=cache_module.IN_PROCESS_LIMIT + 8,
                                                      n_patients=4), image_size=32)
        with pytest.raises(CellaeError, match="cannot write the cache .*Disk quota exceeded"):
            prepare_cache(config, progress=False)
        assert list(cache_dir.iterdir()) == []


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    config = tiny_config(tmp_path, train={"epochs": 3})
    state = {"checkpoints": 0, "writing": False}
    real_write_atomic, real_fsync = runs.write_atomic, os.fsync

    def write_atomic(path, data):
        if Path(path).suffix == ".ckpt":
            state["checkpoints"] += 1
            # epoch 1 writes best.ckpt and last.ckpt; fail from the third checkpoint on
            state["writing"] = state["checkpoints"] >= 3
        try:
            real_write_atomic(path, data)
        finally:
            state["writing"] = False

    def fsync(fd):
        if state["writing"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(runs, "write_atomic", write_atomic)
    monkeypatch.setattr(files_module.os, "fsync", fsync)
    with pytest.raises(CellaeError, match="cannot write the checkpoint .*No space left on device"):
        train(config, tmp_path / "runs", evaluate=False)
    (run_dir,) = (tmp_path / "runs").iterdir()
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]  # no .tmp
    assert runs.load_checkpoint(checkpoints / "last.ckpt")["epoch"] == 0  # epoch 1, intact
    monkeypatch.setattr(runs, "write_atomic", real_write_atomic)
    monkeypatch.setattr(files_module.os, "fsync", real_fsync)
    resume(run_dir, evaluate=False)  # space freed: the run goes on from the kept checkpoint
    assert metric_epochs(run_dir) == [1, 2, 3]


def test_devices_and_workers_are_held_to_what_the_machine_has(tmp_path, monkeypatch, capsys):
    from cellae.data import cache as cache_module
    from cellae.training import train

    monkeypatch.setattr(cache_module, "available_cores", lambda: 2)
    monkeypatch.setattr("cellae.training.launch.available_cores", lambda: 2)
    config = tiny_config(tmp_path, train={"devices": 1000, "accelerator": "cpu"})
    with pytest.raises(CellaeError, match="train.devices is 1000 but this machine gives 2 CPU cores"):
        train(config, tmp_path / "runs")
    assert not (tmp_path / "runs").exists()  # refused before any work
    assert cache_module._workers(48, n_images=10_000) == 2
    assert "data.workers is 48 but this machine gives 2 cores; using 2" in capsys.readouterr().err


def two_class_zip(archive: Path, classes: tuple[str, str], extra: dict[str, bytes]) -> Path:
    """A zip of two class folders (``classes``, as member prefixes) of 3 good cells each, plus
    ``extra`` members."""
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"{classes[0]}/C1P1thinF_{i}.png", png_bytes(cell_array(i)))
            zf.writestr(f"{classes[1]}/C2P2thinF_{i}.png", png_bytes(cell_array(i + 3)))
        for name, data in extra.items():
            zf.writestr(name, data)
    return archive


def test_zip_members_with_endless_names_or_declared_sizes_are_skipped(tmp_path):
    archive = two_class_zip(tmp_path / "cells.zip", ("A", "B"),
                            {"A/" + "x" * 65_000 + ".png": png_bytes(cell_array(7))})
    source = open_source(str(archive))
    assert len(source) == 6
    ((name, reason),) = source.skipped
    assert len(name) < 100 and "a member name of 65,006 characters" in reason
    # a directory that claims a member holds 100 MB: refused from the directory, nothing read
    info = source._infos[source.paths[0]]
    info.file_size = info.compress_size = 100 * 2**20
    with pytest.raises(BadImage, match="the zip says it holds 104,857,600 bytes"):
        source.read_bytes(0)


@pytest.mark.slow
def test_a_listing_of_20000_class_folders_is_linear(tmp_path):
    # each folder's children are found in one pass; asking each of 20,000 folders for its own by
    # scanning them all took minutes (this test would then run for as long)
    files = [f"cells/class{i:05d}/C{i}P1thinF_{i}.png" for i in range(20_000)]
    dirs = {"cells"} | {f"cells/class{i:05d}" for i in range(20_000)}
    listing = find_class_folders(files, dirs, "cells.zip")
    assert listing.root == "cells/" and len(listing.class_files) == 20_000
    assert listing.class_files["class00007"] == ["cells/class00007/C7P1thinF_7.png"]


def test_a_file_name_in_latin_1_is_skipped_with_its_reason(tmp_path):
    root = two_class_folder(tmp_path / "data")
    latin = os.path.join(os.fsencode(root / "A"), "C1P1thinF_caf\xe9.png".encode("latin-1"))
    with open(latin, "wb") as handle:
        handle.write(png_bytes(cell_array(5)))
    source = open_source(str(root))
    assert len(source) == 6
    assert dict(source.skipped) == {
        "A/C1P1thinF_caf\\udce9.png": "its name is not UTF-8 (another encoding?); rename it to read it"}
    config = DataConfig(source=str(root), cache_dir=str(tmp_path / "cache"), workers=1, image_size=32)
    assert len(prepare_cache(config, progress=False).labels) == 6  # the cache holds the rest
    assert "caf\\udce9" in inspect_source(str(root))


def test_a_zip_with_a_doubled_slash_in_its_member_names_is_listed(tmp_path):
    archive = two_class_zip(tmp_path / "double.zip",
                            ("cell_images//Parasitized", "cell_images//Uninfected"), {})
    source = open_source(str(archive))  # the search for the class folders ends
    assert len(source) == 6 and source.class_names == ["uninfected", "infected"]
