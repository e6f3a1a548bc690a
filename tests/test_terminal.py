"""What a person sees while a command runs: a progress bar on a terminal, plain lines in a log."""

from __future__ import annotations

import csv
import errno
import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import yaml

from cellae.config import DataConfig, SyntheticConfig
from cellae.data import cache as cache_module
from tiny import tiny_config


def run_in_terminal(*args: str, cwd: Path) -> tuple[int, str]:
    """Run ``python -m cellae.cli ARGS`` with a pseudo-terminal as its stdout and stderr."""
    leader, follower = pty.openpty()
    # a wide terminal, so that tqdm does not cut the losses off the end of the line
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
    env = dict(os.environ, COLUMNS="250", PYTHONPATH=os.pathsep.join(sys.path))
    process = subprocess.Popen([sys.executable, "-m", "cellae.cli", *args], stdin=follower,
                               stdout=follower, stderr=follower, cwd=cwd, env=env,
                               close_fds=True)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError as exc:  # EIO: the command ended and closed the terminal
            if exc.errno != errno.EIO:
                raise
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=120), b"".join(chunks).decode("utf-8", errors="replace")


def test_training_on_a_terminal_shows_losses_epochs_from_1_and_the_test_pass(tmp_path):
    config = tiny_config(tmp_path, model={"family": "vae", "kl_warmup_epochs": 1},
                         train={"epochs": 2})
    (tmp_path / "tiny.yaml").write_text(config.to_yaml())
    code, output = run_in_terminal("train", "tiny.yaml", "--no-eval", "--out", "runs",
                                   cwd=tmp_path)
    assert code == 0, output[-3000:]
    for seen in ("Epoch 1/2", "Epoch 2/2", "test", "train_loss=", "test_loss=", "test_kl=",
                 "kl_weight="):
        assert seen in output, f"{seen!r} not in:\n{output[-3000:]}"
    for unseen in ("Epoch 0", "Validation DataLoader", "Validation"):
        assert unseen not in output, f"{unseen!r} in:\n{output[-3000:]}"
    # the bar reads the losses only when new ones are logged: each epoch's still reach it
    (run_dir,) = (tmp_path / "runs").iterdir()
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    for row in rows:
        for key in ("train_loss", "test_loss"):
            shown = f"{key}={float(row[key]):.4g}"
            assert shown in output, f"{shown!r} (epoch {row['epoch']}) not in:\n{output[-3000:]}"


def test_training_off_a_terminal_prints_one_plain_line_per_epoch(tmp_path):
    config = tiny_config(tmp_path, model={"family": "vae"}, train={"epochs": 2})
    (tmp_path / "tiny.yaml").write_text(config.to_yaml())
    result = subprocess.run([sys.executable, "-m", "cellae.cli", "train", "tiny.yaml", "--no-eval",
                             "--out", "runs"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert all("train_loss" in line and "test_kl" in line for line in lines)
    assert "\r" not in result.stdout + result.stderr  # no progress bar redraws in a log


def test_a_cache_build_off_a_terminal_says_how_far_it_got(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cache_module, "PLAIN_PROGRESS_SECONDS", 0.0)
    data = DataConfig(source="synthetic", synthetic=SyntheticConfig(n_images=40, n_patients=4),
                      cache_dir=str(tmp_path / "cache"), workers=1, image_size=32)
    cache_module.prepare_cache(data, progress=False)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("cache: 1 of 40 images (2%), ")
    assert lines[-1].startswith("cache: 40 of 40 images (100%), ") and lines[-1].endswith(" s")


def test_a_quick_cache_build_off_a_terminal_is_silent(tmp_path, capsys):
    data = DataConfig(source="synthetic", synthetic=SyntheticConfig(n_images=40, n_patients=4),
                      cache_dir=str(tmp_path / "cache"), workers=1, image_size=32)
    cache_module.prepare_cache(data, progress=False)
    assert capsys.readouterr().err == ""


def test_a_sweep_counts_its_runs(tmp_path, monkeypatch, capsys):
    from cellae import sweep
    from cellae.sweep import local as sweep_local

    monkeypatch.setattr(sweep_local, "run_one", lambda *args: "trained")
    base = tiny_config(tmp_path).to_dict()
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "count", "config": base,
                                    "grid": {"model.latent_dim": [2, 3, 4]}}))
    sweep.run_sweep(path, tmp_path / "runs", evaluate=False)
    err = capsys.readouterr().err
    for i, name in enumerate(["z2", "z3", "z4"], start=1):
        assert f"[sweep count] run {i} of 3: {name}\n" in err
