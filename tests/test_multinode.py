"""Training over several machines: ranks read from the launcher's environment, and DDP over two
simulated nodes on localhost, which must train the weights a single process trains."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cellae import runs
from cellae.training import Launch, process_launch, train
from tiny import tiny_config

# what a launcher or an earlier run in this process may have left in the environment
LAUNCH_VARIABLES = (
    "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE",
    "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE",
    "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_JOB_NAME", "SLURM_JOB_ID",
    "LSB_JOBID", "PL_GLOBAL_SEED", "CELLAE_RUN_DIR",
)


@pytest.mark.parametrize(("environment", "expected"), [
    ({}, Launch(0, external=False)),
    # the processes Lightning's own launcher starts for the other devices of its machine
    ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, Launch(1, external=True)),
    # by hand, as the test below: the first process of the second machine of two devices each
    ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, Launch(2, external=True)),
    # `cellae train` run once on the second machine; Lightning starts its devices there
    ({"NODE_RANK": "1"}, Launch(2, external=False)),
    # torchrun numbers every process itself, and sets LOCAL_RANK in rank 0 too
    ({"TORCHELASTIC_RUN_ID": "x", "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0"},
     Launch(0, external=True)),
    ({"TORCHELASTIC_RUN_ID": "x", "RANK": "3", "LOCAL_RANK": "1", "GROUP_RANK": "1"},
     Launch(3, external=True)),
    # srun: SLURM's numbering, with no LOCAL_RANK at all
    ({"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_PROCID": "2",
      "SLURM_LOCALID": "0", "SLURM_NODEID": "1", "SLURM_JOB_NAME": "cells"},
     Launch(2, external=True)),
    # an interactive SLURM shell is no srun launch: Lightning (and so cellae) ignores SLURM
    ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_JOB_NAME": "bash"},
     Launch(0, external=False)),
])
def test_the_global_rank_is_read_as_lightning_assigns_it(tmp_path, monkeypatch, environment,
                                                         expected):
    monkeypatch.setattr("cellae.training.launch.available_cores", lambda: 8)
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    config = tiny_config(tmp_path, train={"accelerator": "cpu", "devices": 2})
    assert process_launch(config) == expected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_weights(run_dir: Path) -> dict:
    return runs.model_state_from_checkpoint(runs.load_checkpoint(run_dir / "checkpoints" / "last.ckpt"))


BATCH = 10  # per process; the two nodes together take 20 a step


def test_ddp_over_two_nodes_trains_the_weights_one_process_trains(tmp_path):
    # 60 training images (80 over 4 patients, a fifth of them held out): 3 whole steps of 20.
    # No batch norm: its statistics would be taken over each process's half-batch alone.
    sections = {"data": {"synthetic": {"n_images": 80, "n_patients": 4}}, "model": {"norm": "none"},
                "eval": {"enabled": False},
                "train": {"epochs": 3, "accelerator": "cpu", "devices": 1, "augment": "none"}}
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(tiny_config(tmp_path, **sections).to_yaml())

    # the same global batch in one process; this also builds the cache both nodes open
    sections["train"]["batch_size"] = 2 * BATCH
    single = train(tiny_config(tmp_path, **sections), tmp_path / "single", evaluate=False)
    train_images = runs.read_run_info(single)["data"]["train"]["images"]
    assert train_images % (2 * BATCH) == 0, "the sampler would pad the last batch"

    out = tmp_path / "runs"
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    # Lightning's environment for processes started by hand: LOCAL_RANK set in each
    base.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2",
                LOCAL_RANK="0", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "cellae.cli", "train", str(config_path), "--out", str(out),
               "--set", "train.num_nodes=2", "train.devices=1", "train.strategy=ddp",
               f"train.batch_size={BATCH}"]
    started = time.perf_counter()
    nodes = [subprocess.Popen(command, env={**base, "NODE_RANK": str(rank)}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    outputs = []
    try:
        for node in nodes:
            # a rank waiting for the other forever fails the test rather than blocking CI
            outputs.append(node.communicate(timeout=120))
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.communicate()
    elapsed = time.perf_counter() - started
    for rank, (node, (_, stderr)) in enumerate(zip(nodes, outputs, strict=True)):
        assert node.returncode == 0, f"node {rank}:\n{stderr[-3000:]}"

    (run_dir,) = out.iterdir()  # rank 0's; rank 1 made none of its own
    info = runs.read_run_info(run_dir)
    assert info["status"] == "finished" and info["nodes"] == 2 and info["devices"] == 1
    assert [int(r["epoch"]) for r in runs.read_metrics(run_dir)] == [1, 2, 3]
    assert f"run folder: {run_dir}" in outputs[0][0]

    a, b = last_weights(run_dir), last_weights(single)
    assert a.keys() == b.keys()
    difference = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"two nodes: {elapsed:.1f} s; largest weight difference from one process: {difference:.2e}")
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-5), (key, difference)


def test_a_local_sweep_of_runs_on_two_devices_trains_each_run_once(tmp_path):
    # Lightning starts each run's second process by running `cellae sweep FILE` again: that
    # process must join the run in hand, not start the sweep anew (it made a sweep folder of
    # its own and trained the first run's model beside the second's, which DDP refused)
    import yaml

    base = tiny_config(tmp_path, eval={"enabled": False},
                       train={"epochs": 1, "accelerator": "cpu", "devices": 2,
                              "strategy": "ddp"}).to_dict()
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(yaml.safe_dump({"name": "ddp", "config": base,
                                          "grid": {"model.latent_dim": [2, 3]}}))
    environment = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES}
    done = subprocess.run([sys.executable, "-m", "cellae.cli", "sweep", str(sweep_file), "--out",
                           str(tmp_path / "runs")], env=environment | {"OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "runs").iterdir()
    for name in ("z2", "z3"):
        info = runs.read_run_info(sweep_dir / name)
        assert info["status"] == "finished" and info["devices"] == 2
