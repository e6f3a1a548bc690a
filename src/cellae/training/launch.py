"""Where a training process stands in a launch: its accelerator and devices, its rank, the run
folder a process of another device joins, and the SLURM job that may be requeued.

Everything here is read from the config, the machine and the environment before a Trainer
exists: the run folder is chosen (and on rank 0 created) before there is a Trainer to ask.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch
from lightning.fabric.plugins.environments import (
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)

from cellae import runs
from cellae.config import Config
from cellae.errors import CellaeError
from cellae.machine import available_cores, gpu_count

# set in the environment by the launching process so that the DDP processes Lightning starts
# for the other devices of its machine know its run folder
RUN_DIR_ENV = "CELLAE_RUN_DIR"


# What Lightning's launcher writes into this process's environment as it starts the processes
# for the other devices. Left set, the next run in this process (a local sweep's next run)
# would read LOCAL_RANK as "started by a launcher", start no processes, and wait for ever for
# the ones it did not start.
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE",
                RUN_DIR_ENV)


@contextlib.contextmanager
def environment_restored(keys: tuple[str, ...]) -> Iterator[None]:
    """The environment variables ``keys`` as they were before, whatever happens inside."""
    saved = {key: os.environ.get(key) for key in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# run.json's record of the SLURM job that made a run, so that the job finds it if requeued
SLURM_JOB_KEY = "slurm_job_id"


def accelerator(config: Config) -> str:
    t = config.train
    if t.accelerator != "auto":
        if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise CellaeError(f"train.accelerator is '{t.accelerator}' but no CUDA GPU is visible")
        return t.accelerator
    return "gpu" if torch.cuda.is_available() else "cpu"


def devices(config: Config, accelerator: str) -> int | str:
    """``train.devices`` checked against the machine: each CPU device is a process of its own,
    and more of them than cores (``train.devices=1000``) only start processes that wait."""
    wanted = config.train.devices
    if accelerator == "cpu":
        if wanted == "auto":
            return 1
        cores = available_cores()
        if isinstance(wanted, int) and wanted > cores:
            raise CellaeError(f"train.devices is {wanted} but this machine gives {cores} CPU "
                              f"cores; on the CPU each device is a process: use at most {cores}")
    elif accelerator in ("gpu", "cuda") and isinstance(wanted, int):
        visible = gpu_count()
        if wanted > visible:
            raise CellaeError(f"train.devices is {wanted} but {visible} GPU(s) are visible")
    return wanted


def _devices_per_node(config: Config) -> int:
    """The processes Lightning runs on each machine: one per device it trains on."""
    chosen = accelerator(config)
    count = devices(config, chosen)
    if count == "auto":  # left as "auto" only off the CPU, where Lightning takes every device
        return gpu_count() if chosen in ("gpu", "cuda") else 1
    return int(count)


class Launch(NamedTuple):
    """Where this process stands in a training launch."""

    rank: int  # the global rank Lightning will give it; rank 0 owns the run folder
    # started by a launcher (torchrun, srun, by hand, or Lightning's own for the other devices
    # of a machine) that starts every process, so Lightning starts none from this one
    external: bool


def process_launch(config: Config) -> Launch:
    """This process's global rank, read from the environment before the Trainer exists: the
    run folder is chosen (and on rank 0 created) before there is a Trainer to ask.

    LOCAL_RANK alone cannot tell: an external launcher sets it in every process, rank 0 too.
    """
    # the cluster launchers Lightning recognises, in the order it tries them; each numbers
    # every process itself
    for environment in (TorchElasticEnvironment, SLURMEnvironment, LSFEnvironment, MPIEnvironment):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SLURM's srun advice: Lightning gives it itself
            found = environment.detect()
        if found:
            return Launch(environment().global_rank(), external=True)
    # Lightning's own environment: processes are counted node by node. LOCAL_RANK is set in a
    # process started by hand and in those Lightning's launcher starts for the other devices;
    # NODE_RANK (or torchrun's GROUP_RANK) is set on every machine but the first.
    local_rank = os.environ.get("LOCAL_RANK")
    node_rank = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    return Launch(node_rank * _devices_per_node(config) + int(local_rank or 0),
                  external=local_rank is not None)


def requeued_run(out: Path, name: str) -> Path | None:
    """The run folder under ``out`` that this SLURM job made before SLURM requeued it, when it
    has a checkpoint to resume from; None otherwise.

    A requeued job (``sbatch --requeue`` after a node failure or a pre-emption, or Lightning's
    own requeue at ``--signal=SIGUSR1@90``) runs its script again from the top, and
    ``cellae train`` would start over in a new folder. ``run.json`` names the job that made a
    run, so the job finds its run again and resumes it from its last completed epoch, in every
    process (``--out`` must then be on a file system they share, as for any resume).
    """
    job = os.environ.get("SLURM_JOB_ID")
    try:
        restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        restarts = 0
    if not job or restarts < 1 or not out.is_dir():
        return None
    # the newest first: a job requeued twice may have started over once
    for info_path in sorted(out.glob(f"*/{runs.RUN_INFO_FILE}"), reverse=True):
        try:
            info = runs.read_run_info(info_path.parent)
        except (CellaeError, OSError, ValueError):
            continue
        if info.get(SLURM_JOB_KEY) != job or info.get("name") != name:
            continue
        run_dir = info_path.parent
        if runs.last_checkpoint(run_dir).is_file():
            print(f"SLURM job {job} was requeued (restart {restarts}): resuming {run_dir}",
                  file=sys.stderr, flush=True)
            return run_dir
        print(f"SLURM job {job} was requeued before {run_dir} finished an epoch: training "
              f"anew", file=sys.stderr, flush=True)
    return None


@contextlib.contextmanager
def rank_dir() -> Iterator[Path]:
    """The folder a process of global rank > 0 trains in; it writes nothing there (Lightning
    saves checkpoints from rank 0 alone, into rank 0's folder).

    Lightning's launcher hands the processes it starts its run folder (RUN_DIR_ENV). A process
    that torchrun or srun started, on this machine or another, has no such folder to join and
    must not make a run folder of its own: it gets a throwaway one.
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        yield Path(inherited)
        return
    with tempfile.TemporaryDirectory(prefix="cellae-rank-", ignore_cleanup_errors=True) as scratch:
        yield Path(scratch)
