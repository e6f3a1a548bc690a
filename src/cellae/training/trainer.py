"""The Lightning Trainer a config asks for: devices, precision, checkpoints and logging."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from cellae.config import Config
from cellae.errors import CellaeError
from cellae.training.callbacks import (
    AtomicCheckpointIO,
    EpochCheckpoints,
    EpochLog,
    LossProgressBar,
)
from cellae.training.launch import accelerator as chosen_accelerator
from cellae.training.launch import devices as chosen_devices


def resolved_precision(setting: str, accelerator: str) -> str:
    """``train.precision`` for this machine: ``auto`` is bf16-mixed on a CUDA GPU with
    bfloat16 (Ampere and later), where it runs the convolutions on the tensor cores at twice
    TF32's rate with float32's range, and 32-true elsewhere (a CPU gains nothing from it)."""
    if setting != "auto":
        return setting
    # compute capability 8.0 is Ampere; is_bf16_supported() also says yes where bfloat16 is
    # only emulated (V100, T4), slowly, and its keyword to say otherwise is recent
    if (accelerator in ("gpu", "cuda") and torch.cuda.is_available() and torch.version.hip is None
            and torch.cuda.get_device_capability() >= (8, 0)):
        return "bf16-mixed"
    return "32-true"


def _quiet_lightning() -> None:
    """Silence advice that does not apply: our loaders yield row numbers, cut on the device."""
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_drop_advert)


def _drop_advert(record: logging.LogRecord) -> bool:
    return "litlogger" not in str(record.msg).lower()


def build_trainer(config: Config, run_dir: Path, callbacks: list[Callback] | None = None) -> L.Trainer:
    """The Lightning Trainer for ``config``: devices, precision, checkpoints and logging."""
    t = config.train
    accelerator = chosen_accelerator(config)
    _quiet_lightning()
    interactive = sys.stderr.isatty()
    # Lightning runs checkpointing last: a checkpoint is saved after EpochLog wrote its epoch's
    # row, so it never exists without it, and never after a NaN epoch
    checkpoints = EpochCheckpoints(run_dir)
    logger: Any = False
    if t.tensorboard:
        try:
            from lightning.pytorch.loggers import TensorBoardLogger

            logger = TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="")
        except ModuleNotFoundError as exc:
            raise CellaeError(
                "train.tensorboard needs TensorBoard: pip install 'cellae[tensorboard]'"
            ) from exc
    if accelerator in ("gpu", "cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # TF32 tensor cores for float32 convolutions: several times faster, ample for images
        torch.set_float32_matmul_precision("high")
    devices = chosen_devices(config, accelerator)
    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=resolved_precision(t.precision, accelerator),
        max_epochs=t.epochs,
        # some GPU kernels have no deterministic version; warn there rather than refuse to train
        deterministic=True if (t.deterministic and accelerator == "cpu") else ("warn" if t.deterministic else False),
        callbacks=[EpochLog(run_dir, plain_lines=not interactive), checkpoints]
        + ([LossProgressBar()] if interactive else []) + list(callbacks or []),
        logger=logger,
        enable_progress_bar=interactive,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        # the datamodule brings its own DistributedSampler, seeded per epoch (see data.datamodule)
        use_distributed_sampler=False,
        # cellae logs epoch means only: no step-level work for Lightning's logger connector
        log_every_n_steps=0,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )
