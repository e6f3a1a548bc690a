"""Trust, round 2: resume, reports, sweeps and the API never give a wrong answer or lose a file.

One test per promise of docs/reliability.md's "Trust" section; the fault-injection tests at
the end kill training, evaluation, a sweep and a report with SIGKILL at seeded random points.
"""

import errno
import http.server
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cellae import runs
from cellae.cli import main
from cellae.errors import CellaeError
from cellae.training import train
from tiny import tiny_config

CLI = [sys.executable, "-m", "cellae.cli"]


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("cellae: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def class_folder(root: Path, per_class: int, start: int = 0, patients: int = 4) -> Path:
    rng = np.random.default_rng(start)
    for label in ("Parasitized", "Uninfected"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + per_class):
            cell = np.zeros((30, 30, 3), dtype=np.uint8)
            cell[5:25, 5:25] = rng.integers(80, 250, (20, 20, 3))
            if label == "Parasitized":
                cell[12:15, 12:15] = 40
            Image.fromarray(cell).save(root / label / f"C{i % patients + 1}P1thinF_{label}{i}.png")
    return root


@pytest.fixture
def tiny_run(tmp_path) -> Path:
    config = tiny_config(tmp_path, train={"epochs": 2}, eval={"enabled": False})
    return train(config, tmp_path / "runs", evaluate=False)


# ---------------------------------------------------------------- resume


def test_resume_keeps_the_runs_split_when_the_source_gained_images(tmp_path, capsys):
    source = class_folder(tmp_path / "cells", per_class=12)
    config = tiny_config(tmp_path, data={"source": str(source)}, train={"epochs": 1},
                         eval={"enabled": False})
    run_dir = train(config, tmp_path / "runs", evaluate=False)
    before = runs.read_split(run_dir)
    class_folder(source, per_class=12, start=100, patients=8)  # new images and new patients
    capsys.readouterr()
    from cellae.training import run as run_module

    seen = {}
    original = run_module.CellDataModule

    def recording(cache, fit_idx, test_idx, *args, **kwargs):
        files = np.asarray(cache.files)
        seen["fit"], seen["test"] = set(files[fit_idx]), set(files[test_idx])
        return original(cache, fit_idx, test_idx, *args, **kwargs)

    run_module.CellDataModule = recording
    try:
        assert main(["train", "--resume", str(run_dir), "--set", "train.epochs=2",
                     "--no-eval"]) == 0
    finally:
        run_module.CellDataModule = original
    err = capsys.readouterr().err
    assert "24 images" in err and "left out of the resumed epochs" in err
    assert seen["fit"] == set(before["train"]) and seen["test"] == set(before["test"])
    assert runs.read_split(run_dir) == before


def test_resume_honours_epochs_and_refuses_every_other_override(tiny_run, tmp_path, capsys):
    assert main(["train", "--resume", str(tiny_run), "--set", "model.latent_dim=8"]) == 2
    assert "only train.epochs can change" in one_line(capsys.readouterr().err)
    other = tmp_path / "other.yaml"
    other.write_text((tiny_run / "config.yaml").read_text())
    assert main(["train", str(other), "--resume", str(tiny_run)]) == 2
    assert "not both" in one_line(capsys.readouterr().err)
    assert main(["train", "--resume", str(tiny_run), "--set", "train.epochs=1"]) == 2
    assert "already trained 2 epochs" in one_line(capsys.readouterr().err)
    assert main(["train", "--resume", str(tiny_run), "--set", "train.epochs=3", "--no-eval"]) == 0
    rows = runs.read_metrics(tiny_run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert yaml.safe_load((tiny_run / "config.yaml").read_text())["train"]["epochs"] == 3


def test_resume_of_an_edited_config_is_one_line(tiny_run, capsys):
    path = tiny_run / "config.yaml"
    values = yaml.safe_load(path.read_text())
    values["model"]["latent_dim"] = 9
    values["train"]["epochs"] = 4
    path.write_text(yaml.safe_dump(values))
    assert main(["train", "--resume", str(tiny_run)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "does not fit the model config.yaml describes" in line and "restore" in line


# ---------------------------------------------------------------- one process per folder


def test_a_second_sweep_process_on_one_sweep_folder_is_refused(tmp_path, capsys):
    sweep = tmp_path / "sweep.yaml"
    config = tiny_config(tmp_path, train={"epochs": 1}, eval={"enabled": False})
    sweep.write_text(yaml.safe_dump({"name": "s", "config": yaml.safe_load(config.to_yaml()),
                                     "grid": {"seed": [1, 2]}}))
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out")]) == 0
    sweep_dir = next((tmp_path / "out").iterdir())
    finished = {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/run.json")}
    with runs.run_lock(sweep_dir):
        capsys.readouterr()
        assert main(["sweep", "--resume", str(sweep_dir)]) == 2
        line = one_line(capsys.readouterr().err)
        assert f"in use by process {os.getpid()} on" in line
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/run.json")} == finished


# ---------------------------------------------------------------- the API


def test_the_api_refuses_arrays_it_would_misread(tiny_run):
    from cellae import load_run

    run = load_run(tiny_run, checkpoint="last")  # the documented keyword, from the package
    images, _ = run.test_images()
    codes = run.encode(images[:2])
    assert codes.shape == (2, 4)
    with pytest.raises(CellaeError, match="int64 arrays are ambiguous"):
        run.encode(images[:2].astype(np.int64))
    with pytest.raises(CellaeError, match="must be in \\[0, 1\\].*divide 0-255 values by 255"):
        run.encode(images[:2].astype(np.float32))
    np.testing.assert_allclose(run.encode(images[:2].astype(np.float32) / 255), codes, atol=1e-5)
    with pytest.raises(CellaeError, match="checkpoint must be one of best, last"):
        load_run(tiny_run, checkpoint="lats")


# ---------------------------------------------------------------- files cellae writes


def test_report_replaces_only_what_a_report_wrote(tiny_run, tmp_path, capsys):
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "report.md").write_text("my notes\n")
    (folder / "index.html").write_text("<html>my page</html>")
    for out in ("report.html", "index.html"):  # a user's report.md beside, a user's page at
        assert main(["report", str(tiny_run), "--out", str(folder / out)]) == 2
        assert "was not written by cellae report; pass --overwrite" in one_line(
            capsys.readouterr().err)
    assert (folder / "report.md").read_text() == "my notes\n"
    assert (folder / "index.html").read_text() == "<html>my page</html>"
    assert main(["report", str(tiny_run), "--out", str(folder / "index.html"),
                 "--overwrite"]) == 0
    # its own page and Markdown it replaces without being asked
    assert main(["report", str(tiny_run), "--out", str(folder / "index.html")]) == 0
    (folder / "old.html").mkdir()
    assert main(["report", str(tiny_run), "--out", str(folder / "old.html")]) == 2
    assert "is a folder" in one_line(capsys.readouterr().err)


def test_embed_does_not_write_through_a_link(tiny_run, tmp_path, capsys):
    target = tmp_path / "precious.npz"
    target.write_bytes(b"keep")
    link = tmp_path / "codes.npz"
    link.symlink_to(target)
    assert main(["embed", str(tiny_run), "synthetic", "--out", str(link), "--overwrite"]) == 2
    assert "is a link" in one_line(capsys.readouterr().err)
    assert target.read_bytes() == b"keep"


@pytest.mark.parametrize("command", ["evaluate", "embed", "report"])
def test_a_file_too_large_for_the_disk_is_one_line(tiny_run, tmp_path, capsys, monkeypatch,
                                                   command):
    import cellae.files

    real = os.replace

    def refuse(source, target, *args, **kwargs):
        if str(target).endswith((".json", ".npz", ".html", ".png", ".md", ".h5ad", ".csv")):
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG), str(target))
        return real(source, target, *args, **kwargs)

    monkeypatch.setattr(cellae.files.os, "replace", refuse)
    argv = {"evaluate": ["evaluate", str(tiny_run)],
            "embed": ["embed", str(tiny_run), "synthetic", "--out", str(tmp_path / "c.csv")],
            "report": ["report", str(tiny_run), "--out", str(tmp_path / "r.html")]}[command]
    assert main(argv) == 2
    line = one_line(capsys.readouterr().err)
    assert "File too large" in line and "files written earlier are intact" in line
    assert not list(tmp_path.glob(".*.tmp")) and not list(tiny_run.rglob(".*.tmp"))


def test_temporaries_of_a_killed_process_are_removed_by_the_next_run(tiny_run):
    from cellae.files import temporary_path

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    ours = temporary_path(tiny_run / "eval" / "metrics.json")
    left = ours.with_name(ours.name.replace(f".{os.getpid()}-", f".{pid}-"))
    left.parent.mkdir(exist_ok=True)
    left.write_text("half")
    ours.write_text("being written by a live process")
    assert main(["evaluate", str(tiny_run)]) == 0
    assert not left.exists() and ours.exists()


# ---------------------------------------------------------------- bounded inputs and values


@pytest.mark.parametrize("override, message", [
    ("train.lr=inf", "train.lr' must be a finite number"),
    ("train.lr=.nan", "train.lr' must be a finite number"),
    ("model.family=vae model.free_bits=.inf", "free_bits' must be a finite number"),
    ("data.synthetic.n_images=1000000000", "from 10 to 300,000"),
])
def test_values_without_bounds_are_refused(override, message, capsys):
    argv = ["train", "configs/quickstart.yaml", "--print-config", "--set", *override.split()]
    assert main(argv) == 2
    assert message in one_line(capsys.readouterr().err)


def test_a_huge_file_named_like_a_cell_is_refused_unread(tmp_path, capsys):
    source = class_folder(tmp_path / "cells", per_class=4)
    huge = source / "Parasitized" / "C1P1thinF_huge.png"
    with huge.open("wb") as handle:
        handle.truncate(1536 * 2**20)  # 1.5 GB, sparse: no disk used, read whole it costs 1.5 GB
    assert main(["data", "inspect", str(source)]) == 0
    out = capsys.readouterr().out
    assert "C1P1thinF_huge.png: refused: 1,610,612,736 bytes" in out


def test_inspect_refuses_the_whole_machine_and_proc(capsys):
    for folder, message in (("/", "the whole file system"), ("/proc", "a system folder")):
        assert main(["data", "inspect", folder]) == 2
        assert message in one_line(capsys.readouterr().err)


def test_a_download_larger_than_the_cap_is_refused(tmp_path, capsys):
    class Endless(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the handler's name
            self.send_response(200)
            self.send_header("Content-Length", str(20 * 2**30))
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Endless)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/cell_images.zip"
        assert main(["data", "download", "--url", url, "--to", str(tmp_path)]) == 2
        assert "cellae downloads at most 8 GB" in one_line(capsys.readouterr().err)
    finally:
        server.shutdown()
    assert not list(tmp_path.iterdir()) or all(p.stat().st_size == 0 for p in tmp_path.iterdir())


def test_a_run_name_in_another_encoding_is_drawn(tmp_path):
    config = tiny_config(tmp_path, name="caf\udce9", train={"epochs": 1})
    run_dir = train(config, tmp_path / "runs")
    assert (run_dir / "figures" / "latent_tsne.png").is_file()
    assert main(["evaluate", str(run_dir)]) == 0


# ---------------------------------------------------------------- fault injection (SIGKILL)


def _tiny_yaml(tmp_path: Path, epochs: int, evaluate: bool = True) -> Path:
    config = tiny_config(tmp_path, train={"epochs": epochs},
                         eval={"enabled": evaluate, "tsne_max_points": 60})
    path = tmp_path / "tiny.yaml"
    path.write_text(config.to_yaml())
    return path


def _kill_after(argv: list[str], delay: float) -> int:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    return process.returncode


def _final(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    return {k: metrics["reconstruction"][k] for k in ("loss", "psnr", "ssim")} | {
        "epochs": [int(r["epoch"]) for r in runs.read_metrics(run_dir)]}


@pytest.mark.slow
def test_sigkill_at_random_points_of_training_and_evaluation_loses_nothing(tmp_path):
    """Killed at seeded random moments (cache build, an epoch, the evaluation), a run resumed
    as often as needed ends where an uninterrupted one does: every epoch once, an evaluation
    whose reconstruction numbers match the uninterrupted run's, no temporaries left."""
    reference = train(tiny_config(tmp_path / "ref", train={"epochs": 3},
                                  eval={"tsne_max_points": 60}), tmp_path / "ref" / "runs")
    rng = random.Random(7)
    out = tmp_path / "runs"
    yaml_path = _tiny_yaml(tmp_path, 3)
    start = [*CLI, "train", str(yaml_path), "--out", str(out)]
    _kill_after(start, rng.uniform(1.0, 4.0))
    run_dirs = [p for p in out.iterdir() if p.is_dir()] if out.is_dir() else []
    for _ in range(6):
        if not run_dirs:  # killed before the run folder: nothing to resume, start again
            _kill_after(start, rng.uniform(3.0, 8.0))
            run_dirs = [p for p in out.iterdir() if p.is_dir()] if out.is_dir() else []
            continue
        run_dir = run_dirs[0]
        if runs.read_status(run_dir) == "finished" and (run_dir / "eval" / "metrics.json").is_file():
            break
        if runs.last_checkpoint(run_dir).is_file():
            _kill_after([*CLI, "train", "--resume", str(run_dir)], rng.uniform(1.0, 6.0))
        else:  # killed before its first checkpoint: the folder says so; train anew beside it
            shutil.rmtree(run_dir)
            run_dirs = []
            continue
    else:
        if not run_dirs:  # the last try was killed before its first checkpoint: once more, whole
            assert main(["train", str(yaml_path), "--out", str(out)]) == 0
            run_dirs = [p for p in out.iterdir() if p.is_dir()]
        run_dir = run_dirs[0]
    if runs.read_status(run_dir) != "finished":
        assert main(["train", "--resume", str(run_dir)]) == 0
    if not (run_dir / "eval" / "metrics.json").is_file():
        assert main(["evaluate", str(run_dir)]) == 0
    got, want = _final(run_dir), _final(reference)
    assert got["epochs"] == want["epochs"] == [1, 2, 3]
    for key in ("loss", "psnr", "ssim"):
        assert got[key] == pytest.approx(want[key], rel=1e-4), key
    # an evaluation killed midway and run again leaves no half-written file
    _kill_after([*CLI, "evaluate", str(run_dir)], rng.uniform(0.5, 3.0))
    assert main(["evaluate", str(run_dir)]) == 0
    assert _final(run_dir) == got
    assert not list(run_dir.rglob(".*.tmp"))


@pytest.mark.slow
def test_sigkill_of_a_sweep_and_a_report_changes_no_finished_result(tmp_path):
    config = tiny_config(tmp_path, train={"epochs": 1}, eval={"tsne_max_points": 60})
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "config": yaml.safe_load(config.to_yaml()),
                                     "grid": {"seed": [1, 2, 3]}}))
    out = tmp_path / "out"
    argv = [*CLI, "sweep", str(sweep), "--out", str(out)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    # killed once its first run has finished, while another is on its way
    while time.monotonic() < deadline:
        done = [p for p in out.glob("*/*/eval/metrics.json")] if out.is_dir() else []
        if done or process.poll() is not None:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    sweep_dir = next(out.iterdir())
    finished = {p.parent.parent.name: p.read_bytes() for p in sweep_dir.glob("*/eval/metrics.json")
                if runs.read_status(p.parent.parent) == "finished"}
    assert main(["sweep", "--resume", str(sweep_dir)]) == 0
    after = {p.parent.parent.name: p.read_bytes() for p in sweep_dir.glob("*/eval/metrics.json")}
    assert len(after) == 3
    assert all(after[name] == content for name, content in finished.items())
    # a report killed while it writes leaves the previous report whole
    report = tmp_path / "report.html"
    assert main(["report", str(sweep_dir), "--out", str(report)]) == 0
    page = report.read_bytes()
    for delay in (0.3, 0.8, 1.5):
        _kill_after([*CLI, "report", str(sweep_dir), "--out", str(report)], delay)
        assert report.read_bytes()[:200] == page[:200] and report.stat().st_size > 1000
    assert main(["report", str(sweep_dir), "--out", str(report)]) == 0
    assert not list(tmp_path.glob(".*.tmp"))
