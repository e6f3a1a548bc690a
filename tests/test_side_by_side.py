"""Runs side by side (``cellae sweep --jobs N``): shares of the machine, logs, failures, stops."""

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from cellae.sweep.side_by_side import Task, machine_slots, run_side_by_side

HERE = "test_side_by_side"
pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity"),
                                reason="core shares are CPU affinities, which this system lacks")


def report_share(label: str) -> dict:
    """A task: says what its process may use, on its stdout too (for its log)."""
    print(f"task {label} says hello")
    return {"status": "done", "label": label, "cores": sorted(os.sched_getaffinity(0)),
            "omp": os.environ.get("OMP_NUM_THREADS"), "group": os.getpgrp(), "pid": os.getpid()}


def report_torch_threads(label: str) -> dict:
    """A task: the size of torch's thread pool in its process, imported by the task."""
    import torch

    return {"status": "done", "label": label, "threads": torch.get_num_threads()}


def log_through_one_handler(label: str) -> dict:
    """A task that logs as Lightning does: through a handler made by the first task."""
    logger = logging.getLogger("cellae-side-by-side-test")
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler())  # holds the stderr of the first task
    logger.warning("logged by %s", label)
    return {"status": "done"}


def stop_myself(marker: str) -> dict:
    """A task whose own process is signalled, as by `kill` or a scheduler."""
    while not Path(marker).exists():
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)
    return {"status": "done"}


def raise_error() -> dict:
    raise ValueError("a bad value\nsecond line")


def die() -> dict:
    os._exit(3)


def sleep_until_stopped(marker: str) -> dict:
    Path(marker).touch()
    time.sleep(60)
    return {"status": "done"}


def collect(tasks, slots, log_dir):
    started, ended = [], {}
    stopped = run_side_by_side(tasks, slots, log_dir, lambda task, log: started.append(task.name),
                               lambda task, result: ended.__setitem__(task.name, result))
    return stopped, started, ended


def test_jobs_get_contiguous_shares_of_the_cores_and_of_several_gpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(10)))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    slots = machine_slots(3, gpu_count=4)
    assert [s.cores for s in slots] == [(0, 1, 2, 3), (4, 5, 6), (7, 8, 9)]
    assert [s.threads for s in slots] == [4, 3, 3]
    # one GPU each, never several (a run on several would start its ranks anew)
    assert [s.gpus for s in slots] == ["0", "1", "2"]
    # more jobs than cores or GPUs: they share them round the table
    slots = machine_slots(12, gpu_count=2)
    assert [s.cores for s in slots][9:] == [(9,), (0,), (1,)]
    assert [s.gpus for s in slots][:3] == ["0", "1", "0"]
    # one GPU is shared by every job, as the environment has it; the visible list is respected
    assert {s.gpus for s in machine_slots(2, gpu_count=1)} == {None}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-a, GPU-b")
    assert [s.gpus for s in machine_slots(2, gpu_count=2)] == ["GPU-a", "GPU-b"]
    with pytest.raises(ValueError):
        machine_slots(0)


def test_each_task_runs_in_its_share_with_its_output_in_its_log(tmp_path):
    cores = sorted(os.sched_getaffinity(0))
    slots = machine_slots(2)
    tasks = [Task(f"t{i}", f"{HERE}:report_share", (f"t{i}",)) for i in range(3)]
    tasks += [Task("bad", f"{HERE}:raise_error", ()), Task("dead", f"{HERE}:die", ()),
              Task("after", f"{HERE}:report_share", ("after",))]
    stopped, started, ended = collect(tasks, slots, tmp_path / "logs")
    assert not stopped and started == ["t0", "t1", "t2", "bad", "dead", "after"]
    # one process a share runs its tasks one after another; a process that dies is replaced
    assert len({ended[f"t{i}"]["pid"] for i in range(3)}) == 2
    assert ended["after"]["status"] == "done"
    for i in range(3):
        result = ended[f"t{i}"]
        assert result["status"] == "done" and result["label"] == f"t{i}"
        assert set(result["cores"]) <= set(cores) and len(result["cores"]) == len(slots[0].cores)
        assert result["omp"] == str(len(result["cores"]))
        assert result["group"] != os.getpgrp()  # a terminal's Ctrl-C reaches the parent alone
        assert f"task t{i} says hello" in (tmp_path / "logs" / f"t{i}.log").read_text()
    assert ended["bad"]["status"] == "failed" and ended["bad"]["error"] == "a bad value"
    assert "ValueError: a bad value" in (tmp_path / "logs" / "bad.log").read_text()
    assert ended["dead"]["status"] == "failed" and "exit code 3" in ended["dead"]["error"]


def test_a_process_s_later_tasks_log_into_their_own_files(tmp_path):
    tasks = [Task(label, f"{HERE}:log_through_one_handler", (label,)) for label in "ab"]
    stopped, _, ended = collect(tasks, machine_slots(1), tmp_path / "logs")
    assert not stopped and [r["status"] for r in ended.values()] == ["done", "done"]
    for label in "ab":
        text = (tmp_path / "logs" / f"{label}.log").read_text()
        assert f"logged by {label}" in text and "Logging error" not in text


def test_sigterm_stops_every_running_task_and_starts_no_other(tmp_path):
    markers = [tmp_path / f"started-{i}" for i in range(3)]
    tasks = [Task(f"s{i}", f"{HERE}:sleep_until_stopped", (str(m),)) for i, m in enumerate(markers)]

    def stop_when_both_run():
        deadline = time.monotonic() + 60
        while not all(m.exists() for m in markers[:2]) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_when_both_run, daemon=True)
    stopper.start()
    before = signal.getsignal(signal.SIGTERM)
    started_at = time.monotonic()
    stopped, started, ended = collect(tasks, machine_slots(2), tmp_path / "logs")
    assert stopped and started == ["s0", "s1"]
    assert {r["status"] for r in ended.values()} == {"interrupted"} and len(ended) == 2
    assert time.monotonic() - started_at < 50  # they were stopped, not waited for
    assert not markers[2].exists()
    assert signal.getsignal(signal.SIGTERM) is before
    assert "stopped by a signal" in (tmp_path / "logs" / "s0.log").read_text()


def test_a_task_whose_own_process_is_signalled_stops_the_others(tmp_path):
    marker = tmp_path / "started"
    tasks = [Task("sleeper", f"{HERE}:sleep_until_stopped", (str(marker),)),
             Task("signalled", f"{HERE}:stop_myself", (str(marker),)),
             Task("never", f"{HERE}:report_share", ("never",))]
    started_at = time.monotonic()
    stopped, started, ended = collect(tasks, machine_slots(2), tmp_path / "logs")
    assert stopped and started == ["sleeper", "signalled"]
    assert ended["signalled"]["status"] == ended["sleeper"]["status"] == "interrupted"
    assert time.monotonic() - started_at < 50


def test_a_sweep_with_jobs_runs_each_run_in_its_process_and_resumes(tmp_path, capsys):
    from cellae.cli import main
    from cellae.errors import CellaeError
    from cellae.sweep import run_sweep
    from tiny import tiny_config

    base = tiny_config(tmp_path, train={"epochs": 1}).to_dict()
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(yaml.safe_dump({"name": "two", "config": base,
                                          "grid": {"model.latent_dim": [2, 3]}}))
    sweep_dir = run_sweep(sweep_file, tmp_path / "runs", evaluate=False, jobs=2)
    status = yaml.safe_load((sweep_dir / "sweep.json").read_text())["runs"]
    assert {n: r["status"] for n, r in status.items()} == {"z2": "trained",
                                                          "z3": "trained"}
    for name, entry in status.items():
        assert (sweep_dir / name / "checkpoints" / "last.ckpt").is_file()
        assert "epoch 1/1" in (sweep_dir / entry["log"]).read_text()
    capsys.readouterr()
    assert main(["sweep", "--resume", str(sweep_dir), "--jobs", "2"]) == 0
    assert "z2: kept, z3: kept" in capsys.readouterr().err
    with pytest.raises(CellaeError, match="--jobs takes a whole number"):
        run_sweep(sweep_file, tmp_path / "runs", jobs=0)
    with pytest.raises(CellaeError, match="--jobs is for the local launcher"):
        run_sweep(sweep_file, tmp_path / "runs", jobs=2, launcher="slurm")
    # a run on several devices would start its other ranks by running the command again
    with pytest.raises(CellaeError, match="asks for several"):
        run_sweep(sweep_file, tmp_path / "runs", jobs=2, overrides=["train.devices=2"])
    assert len(list((tmp_path / "runs").iterdir())) == 1  # refused before a folder was made


def test_a_worker_imports_torch_only_after_its_share_is_set(tmp_path):
    """torch sizes its thread pools once, when imported: a worker that had it loaded before
    its affinity was set ran two threads on one core, 30 times slower (a sweep of --jobs 2)."""
    code = ("import sys, cellae.sweep.side_by_side; "
            "print('torch' in sys.modules, 'lightning' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
    slots = machine_slots(2)
    tasks = [Task(f"t{i}", f"{HERE}:report_torch_threads", (f"t{i}",)) for i in range(2)]
    results = {}
    run_side_by_side(tasks, slots, tmp_path / "logs", lambda task, log: None,
                     lambda task, result: results.update({task.name: result}))
    assert {r["threads"] for r in results.values()} == {slot.threads for slot in slots}
