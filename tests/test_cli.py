import subprocess
import sys
from pathlib import Path

import pytest

from cellae.cli import main


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cellae.cli", *args], capture_output=True, text=True, cwd=cwd,
        timeout=120,
    )


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("data", "train", "evaluate", "embed", "sweep", "report"):
        assert command in out


@pytest.mark.parametrize("command", [["data", "inspect"], ["data", "prepare"], ["data", "download"],
                                     ["train"], ["evaluate"], ["embed"], ["sweep"], ["report"]])
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    assert "usage: cellae" in capsys.readouterr().out


def test_user_mistakes_are_one_line_without_traceback(tmp_path):
    result = run_cli("train", str(tmp_path / "missing.yaml"))
    assert result.returncode != 0
    assert result.stderr.strip() == f"cellae: error: config file not found: {tmp_path / 'missing.yaml'}"
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path):
    for args in (["--debug", "train", str(tmp_path / "x.yaml")], ["train", str(tmp_path / "x.yaml"), "--debug"]):
        result = run_cli(*args)
        assert result.returncode != 0
        assert "Traceback" in result.stderr and "CellaeError" in result.stderr


def test_print_config_applies_overrides(capsys):
    assert main(["train", "--print-config", "--set", "model.latent_dim=50", "train.epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "latent_dim: 50" in out and "epochs: 3" in out


def test_missing_run_folder_is_named(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert f"no such run folder: {tmp_path / 'nope'}" in capsys.readouterr().err
    (tmp_path / "plain").mkdir()
    assert main(["train", "--resume", str(tmp_path / "plain")]) == 2
    assert "is not a cellae run folder" in capsys.readouterr().err
