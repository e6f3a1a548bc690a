"""Checkpoints and run folders from strangers must not be able to run code."""

import pickle
import shutil

import pytest
import torch
import yaml

from cellae import api, runs
from cellae.config import Config
from cellae.errors import CellaeError
from cellae.evaluate import evaluate_run
from cellae.training import train
from tiny import tiny_config


class Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def evil_checkpoint(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.ckpt"
    with path.open("wb") as handle:
        torch.save({"state_dict": {}, "payload": Payload(marker)}, handle, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    return path, marker


def test_a_pickled_payload_is_refused_and_never_runs(tmp_path):
    path, marker = evil_checkpoint(tmp_path)
    with pytest.raises(CellaeError, match="refusing to load"):
        runs.load_checkpoint(path)
    assert not marker.exists()


def test_load_run_refuses_an_evil_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    runs.write_atomic(run_dir / runs.CONFIG_FILE, Config().to_yaml())
    runs.write_json(run_dir / runs.RUN_INFO_FILE, {"status": "finished", "channels": 3})
    path, marker = evil_checkpoint(tmp_path)
    path.replace(run_dir / "checkpoints" / "best.ckpt")
    with pytest.raises(CellaeError, match="refusing to load"):
        api.load_run(run_dir)
    assert not marker.exists()


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"model.w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CellaeError, match="cannot read checkpoint .* damaged or incomplete"):
        runs.load_checkpoint(path)


@pytest.mark.parametrize("spelling", ["..", ".", "../..", "x/..", "/", "figures", "metrics.json",
                                      ".hidden", "latents.npz"])
def test_evaluation_on_another_source_never_writes_over_the_runs_own_files(tmp_path, monkeypatch,
                                                                           spelling):
    run_dir = tmp_path / "classes" / "run"
    run_dir.mkdir(parents=True)
    monkeypatch.chdir(run_dir)  # "cellae evaluate RUN --data .." typed from inside a folder
    out = runs.eval_dir(run_dir, spelling)
    assert out.parent == run_dir / runs.EVAL_DIR
    assert out.name not in ("", ".", "..", runs.EVAL_METRICS_FILE, runs.LATENTS_FILE,
                            runs.RECONSTRUCTIONS_FILE, runs.FIGURES_DIR)
    assert not out.name.startswith(".")


def test_a_strangers_run_folder_never_has_cellae_write_where_its_config_says(tmp_path, monkeypatch):
    run_dir = train(tiny_config(tmp_path, train={"epochs": 1}), tmp_path / "runs", evaluate=False)
    shutil.rmtree(tmp_path / "cache")  # the cache it was trained on is gone: evaluation rebuilds
    config = yaml.safe_load((run_dir / runs.CONFIG_FILE).read_text())
    elsewhere = tmp_path / "victim"
    elsewhere.mkdir()
    (elsewhere / ".tmp-precious").mkdir()  # what a cache build would clear as abandoned
    config["data"]["cache_dir"] = str(elsewhere)
    (run_dir / runs.CONFIG_FILE).write_text(yaml.safe_dump(config))
    me = tmp_path / "me"
    me.mkdir()
    monkeypatch.chdir(me)
    evaluate_run(run_dir)
    assert [p.name for p in elsewhere.iterdir()] == [".tmp-precious"]
    assert (me / ".cellae-cache").is_dir()  # the reader's own cache


DAMAGED = [("metrics.csv", ""), ("metrics.csv", "garbage,\x00\n1,2,3\n"),
           ("eval/metrics.json", ""), ("eval/metrics.json", "{garbage"), ("eval/metrics.json", "[1]"),
           ("run.json", ""), ("run.json", "{garbage"), ("run.json", "[]"),
           ("config.yaml", ""), ("config.yaml", "{garbage"), ("config.yaml", "- a\n- b\n"),
           ("split.json", ""), ("split.json", "{garbage"), ("split.json", "[]")]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("trained")
    return train(tiny_config(tmp_path, train={"epochs": 1}), tmp_path / "runs", timestamped=False)


@pytest.mark.parametrize(("name", "text"), DAMAGED, ids=[f"{n}={t[:8]!r}" for n, t in DAMAGED])
def test_a_damaged_run_file_is_a_one_line_error_or_read_around(trained_run, tmp_path, name, text,
                                                               capsys):
    from cellae.cli import main

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    (run_dir / name).write_text(text)
    for command in (["report", str(run_dir), "--out", str(tmp_path / "r.html")],
                    ["evaluate", str(run_dir)], ["train", "--resume", str(run_dir), "--no-eval"]):
        code = main(command)  # anything but a CellaeError would raise here, with its traceback
        err = capsys.readouterr().err
        if code != 0:
            assert err.strip().startswith("cellae: error:") and "Traceback" not in err, err


def test_a_bare_tensor_or_a_checkpoint_of_another_shape_is_a_one_line_error(trained_run, tmp_path,
                                                                           capsys):
    from cellae.cli import main

    tensor_run = tmp_path / "tensor"
    shutil.copytree(trained_run, tensor_run)
    for name in (runs.BEST_CHECKPOINT, runs.LAST_CHECKPOINT):
        torch.save(torch.zeros(3), tensor_run / runs.CHECKPOINT_DIR / name)
    resized = tmp_path / "resized"
    shutil.copytree(trained_run, resized)
    values = yaml.safe_load((resized / runs.CONFIG_FILE).read_text())
    values["model"]["latent_dim"] += 5
    (resized / runs.CONFIG_FILE).write_text(yaml.safe_dump(values))
    for run_dir, expected in ((tensor_run, "holds a Tensor, not a cellae checkpoint"),
                              (resized, "does not fit the model config.yaml describes")):
        for command in (["evaluate", str(run_dir)],
                        ["embed", str(run_dir), "synthetic", "--out", str(tmp_path / "c.npz")]):
            assert main(command) == 2
            assert expected in capsys.readouterr().err


def test_a_full_disk_during_report_evaluate_or_embed_is_one_line_and_leaves_no_debris(
        trained_run, tmp_path, monkeypatch, capsys):
    import errno

    from cellae import files
    from cellae.cli import main

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    out = tmp_path / "out"
    for command in (["report", str(run_dir), "--out", str(out / "r.html")],
                    ["evaluate", str(run_dir)],
                    ["embed", str(run_dir), "synthetic", "--out", str(out / "codes.npz")]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "No space left on device" in err and "cannot write" in err, err
    leftovers = [p for p in [*run_dir.rglob("*"), *tmp_path.glob("out/**/*")]
                 if p.is_file() and p.name.endswith(".tmp")]
    assert leftovers == []
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != ".lock"} == {
        p: b for p, b in before.items() if p.name != ".lock"}
    assert not (out / "r.html").exists() and not (out / "codes.npz").exists()
