"""Training on Lightning: the LightningModule, the Trainer built from the config, and ``train``/``resume``.

``train(config, out)`` prepares the cache, splits it, trains, checkpoints and leaves a complete
run folder; ``resume(run_dir)`` continues an interrupted run from ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.environments import (
    LSFEnvironment,
    MPIEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerStatus

from cellae import __version__, runs
from cellae.config import Config
from cellae.data.augment import augment
from cellae.data.cache import FORMAT_VERSION, CellCache, available_cores, prepare_cache
from cellae.data.datamodule import CellDataModule
from cellae.data.sources.labels import unmatched_warning
from cellae.data.splits import split_indices, training_rows
from cellae.errors import CellaeError, first_line
from cellae.images import unit_float
from cellae.models import build_model
from cellae.models.base import prefers_channels_last
from cellae.run_data import warn_if_older_images

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
def _environment_restored(keys: tuple[str, ...]) -> Iterator[None]:
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


class NonFiniteLossError(CellaeError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(CellaeError):
    """Ctrl-C or SIGTERM stopped training; the run can be resumed."""

    exit_code = 130


# run.json's record of the SLURM job that made a run, so that the job finds it if requeued
SLURM_JOB_KEY = "slurm_job_id"
# the two passes of an epoch, as the loss columns name them
SIDES = ("train", "test")


class CellaeModule(L.LightningModule):
    """One optimisation step of any family, on batches of (images, masks, ...) from any datamodule.

    Images may be uint8 (0-255) or float in [0, 1]; masks are (B, H, W) or (B, 1, H, W).
    """

    def __init__(self, config: Config, channels: int) -> None:
        super().__init__()
        self.config = config
        self.model = build_model(config.model, config.data.image_size, channels)
        # per side: the loss terms' names and, on the device, whether each went NaN/inf this
        # epoch; read once per epoch (FiniteLossGuard), as reading it each step would wait
        # for the device each step
        self._nonfinite: dict[str, tuple[list[str], torch.Tensor, torch.Tensor]] = {}
        # the forward pass training runs: the model, or its torch.compile'd wrapper (kept out
        # of the module's children so the checkpoint's keys stay the model's own)
        self._forward: list[Any] = [self.model]

    def epochs_done(self) -> float:
        """Training progress in epochs, fractional within an epoch; what loss schedules follow."""
        if self._trainer is None:
            return math.inf
        return self.trainer.global_step / max(1, self.trainer.num_training_batches)

    def configure_model(self) -> None:
        # here, before a DDP strategy wraps the model: DDP's gradient buckets are views laid
        # out as the weights were when it wrapped them, and a later change of layout makes
        # its averaged gradients land in the wrong places
        device = self.trainer.strategy.root_device
        self.model.use_channels_last(prefers_channels_last(device, self.config.train.channels_last))

    def on_fit_start(self) -> None:
        t = self.config.train
        if t.compile:
            size, channels = self.model.image_size, self.model.channels
            probe = torch.rand(2, channels, size, size, device=self.device)
            self._forward = [compiled_or_eager(self.model, probe)]

    def _step(self, batch: Any, side: str) -> torch.Tensor:
        images, masks = batch[0], batch[1]
        if side == "train":
            images, masks = augment(self.config.train.augment, images, masks)
        x = unit_float(images)
        mask = masks.float()
        output = self._forward[0](x)
        # the test loss is always the full objective, as in evaluation: one definition of it
        weights = self.model.schedule(self.epochs_done()) if side == "train" else None
        losses = self.model.loss(x, mask, output, weights)
        self._watch(side, losses)
        size = len(x)
        for key, value in losses.items():
            name = f"{side}_loss" if key == "loss" else f"{side}_{key}"
            self.log(name, value.detach(), on_step=False, on_epoch=True, batch_size=size,
                     sync_dist=True)
        if weights:
            for key, value in weights.items():
                self.log(key, value, on_step=False, on_epoch=True, batch_size=size)
        return losses["loss"]

    def _watch(self, side: str, losses: dict[str, torch.Tensor]) -> None:
        """Note on the device, without waiting for it, whether a loss term is NaN or infinite."""
        with torch.no_grad():
            bad = torch.stack([~torch.isfinite(v) for v in losses.values()])
            nan = torch.isnan(losses["loss"])
        if side in self._nonfinite:
            names, seen, seen_nan = self._nonfinite[side]
            bad, nan = seen | bad, seen_nan | nan
        self._nonfinite[side] = (list(losses), bad, nan)

    def raise_if_nonfinite(self) -> None:
        """Raise :class:`NonFiniteLossError` if a loss went NaN or infinite since the last call,
        here or in any other process of a multi-process run.

        Every process must stop together: one that stopped alone would leave the others
        waiting for it at their next gradient exchange, for ever. So the processes share a
        summary (per side: any term non-finite, loss NaN) once per epoch, every process the
        same call, whether or not it saw a batch of that side.
        """
        watched, self._nonfinite = self._nonfinite, {}
        summary = torch.zeros(2 * len(SIDES), dtype=torch.bool, device=self.device)
        for i, side in enumerate(SIDES):
            if side in watched:
                _, bad, nan = watched[side]
                summary[2 * i], summary[2 * i + 1] = bad.any(), nan
        everywhere = self.all_gather(summary).reshape(-1, 2 * len(SIDES)).any(dim=0).tolist()
        for i, side in enumerate(SIDES):
            if not everywhere[2 * i]:
                continue
            value = "nan" if everywhere[2 * i + 1] else "infinite"
            if side in watched and watched[side][1].any():
                names, bad, _ = watched[side]
                parts = ", ".join(n for n, flag in zip(names, bad.tolist(), strict=True) if flag)
                where = f"non-finite parts: {parts}"
            else:
                where = "in another process of this run"
            raise NonFiniteLossError(
                f"{side} loss became {value} in epoch {self.current_epoch + 1} ({where}); "
                f"lower train.lr or set train.grad_clip"
            )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "test")

    def metric_columns(self) -> list[str]:
        """The columns of ``metrics.csv``: the totals, each loss term, each schedule weight."""
        terms = self.model.loss_terms()
        return (["epoch", "train_loss", "test_loss"]
                + [f"{side}_{t}" for t in terms for side in SIDES]
                + list(self.model.schedule(0.0)) + ["lr", "seconds", "images_per_second"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        t = self.config.train
        params = self.model.parameters()
        if t.optimizer == "sgd":
            return torch.optim.SGD(params, lr=t.lr, momentum=0.9, weight_decay=t.weight_decay)
        optimizer = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
        return optimizer(params, lr=t.lr, weight_decay=t.weight_decay)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the VAE's sampling noise comes from the global generator; keep it so a resume matches
        checkpoint["cellae"] = {"version": __version__, "torch_rng": torch.get_rng_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("cellae", {}).get("torch_rng")
        if isinstance(state, torch.Tensor):
            torch.set_rng_state(state)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written through a temporary file and loaded without running pickled code."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            runs.write_atomic(Path(path), buffer.getvalue())
        except OSError as exc:
            # a full disk or a folder gone read-only: the earlier checkpoint is still whole
            last = Path(path).parent / runs.LAST_CHECKPOINT
            then = (f"; {last} is kept: free space and continue with: cellae train --resume "
                    f"{Path(path).parent.parent}" if last.is_file() else "")
            raise CellaeError(f"cannot write the checkpoint {path}: {exc.strerror or exc}{then}") from exc

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return runs.load_checkpoint(Path(path))


class LossProgressBar(TQDMProgressBar):
    """Lightning's progress bar, on stderr and in this package's words.

    Epochs count from 1 and say of how many ("Epoch 3/20" where Lightning shows "Epoch 2"), the
    validation pass is called "test" (it runs on the test split; "Validation DataLoader 0" names
    neither) and the losses stand beside the bar: Lightning shows only metrics logged with
    ``prog_bar=True``, and the module logs for ``metrics.csv``, not for the bar. Each epoch's
    line is kept, so the losses of earlier epochs stay on screen.
    """

    def __init__(self) -> None:
        super().__init__(leave=True)

    @staticmethod
    def shown(pl_module: L.LightningModule) -> list[str]:
        """The metrics a person watching wants: the totals, each term besides the reconstruction
        (which the total already is, up to the other terms) and each schedule weight."""
        model = pl_module.model
        terms = [t for t in model.loss_terms() if t not in ("recon", "recon_per_pixel")]
        return (["train_loss", "test_loss"]
                + [f"{side}_{t}" for t in terms for side in SIDES]
                + list(model.schedule(0.0)))

    @property
    def validation_description(self) -> str:
        return "test"

    def init_train_tqdm(self) -> Tqdm:
        # stderr, as every other progress message: a redirected stdout keeps only results
        return Tqdm(desc=self.train_description, position=2 * self.process_position,
                    disable=self.is_disabled, leave=True, dynamic_ncols=True, file=sys.stderr,
                    smoothing=0, bar_format=self.BAR_FORMAT)

    def init_validation_tqdm(self) -> Tqdm:
        has_main_bar = self.trainer.state.fn != "validate"
        return Tqdm(desc=self.validation_description,
                    position=2 * self.process_position + has_main_bar, disable=self.is_disabled,
                    leave=not has_main_bar, dynamic_ncols=True, file=sys.stderr,
                    bar_format=self.BAR_FORMAT)

    def on_train_epoch_start(self, trainer: L.Trainer, *_: Any) -> None:
        # Lightning's own version draws "Epoch 0" before any override could rename it
        self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset(total=convert_inf(self.total_train_batches))
        self.train_progress_bar.set_description(
            f"Epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"
        )

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                  batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_validation_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        if batch_idx == 0:
            # Lightning has just named the loader ("test DataLoader 0"); there is only one
            self.val_progress_bar.set_description(self.validation_description)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = trainer.callback_metrics
        return {k: f"{float(metrics[k]):.4g}" for k in self.shown(pl_module) if k in metrics}


class FiniteLossGuard(Callback):
    """Stops training at the end of an epoch whose loss went NaN or infinite, before its row is
    written and before any checkpoint of its weights (it comes first among the callbacks)."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if isinstance(pl_module, CellaeModule):
            pl_module.raise_if_nonfinite()


def compiled_or_eager(model: torch.nn.Module, probe: torch.Tensor) -> Any:
    """``torch.compile(model)`` where it compiles and runs a training step, else the model.

    Compilation fails late, at the first call, and for reasons outside cellae (no C++ compiler,
    an unsupported platform): a probe step finds out before training, and a failure costs a
    warning instead of the run.
    """
    try:
        compiled = torch.compile(model)
        output = compiled(probe)
        model.loss(probe, torch.ones_like(probe[:, 0]), output)["loss"].backward()
    except Exception as exc:  # noqa: BLE001 - any compiler failure falls back the same way
        reason = first_line(exc)
        print(f"train.compile: torch.compile failed ({reason[:200]}); training without it",
              file=sys.stderr, flush=True)
        return model
    finally:
        model.zero_grad(set_to_none=True)
    return compiled


class EpochLog(Callback):
    """Appends one row per epoch to ``metrics.csv`` and, off a terminal, prints one plain line
    (a log file gets one line per epoch where a progress bar would fill it with redraws).

    ``seconds`` is the whole epoch, its test pass included; ``images_per_second`` counts the
    training steps' time alone, so that a large test side does not read as slow training.
    """

    def __init__(self, run_dir: Path, plain_lines: bool) -> None:
        self.run_dir = run_dir
        self.plain_lines = plain_lines
        self._started = 0.0
        self._images = 0
        self._test_started = 0.0
        self._test_seconds = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        self._images = 0
        self._test_seconds = 0.0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._images += len(batch[0])

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._test_started = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._test_seconds += time.perf_counter() - self._test_started

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        seconds = time.perf_counter() - self._started
        training_seconds = seconds - self._test_seconds
        images = self._images * trainer.world_size
        row = {k: metrics.get(k, "") for k in pl_module.metric_columns()}
        row.update(
            epoch=trainer.current_epoch + 1,
            lr=trainer.optimizers[0].param_groups[0]["lr"],
            seconds=round(seconds, 3),
            images_per_second=round(images / training_seconds, 1) if training_seconds > 0 else "",
        )
        runs.append_metrics(self.run_dir, row)
        if self.plain_lines:
            parts = [f"epoch {row['epoch']}/{trainer.max_epochs}"]
            parts += [f"{k} {metrics[k]:.4g}" for k in LossProgressBar.shown(pl_module)
                      if k in metrics]
            parts.append(f"{row['images_per_second']} img/s")
            print("  ".join(parts), flush=True)


def _accelerator(config: Config) -> str:
    t = config.train
    if t.accelerator != "auto":
        if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            raise CellaeError(f"train.accelerator is '{t.accelerator}' but no CUDA GPU is visible")
        return t.accelerator
    return "gpu" if torch.cuda.is_available() else "cpu"


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


def _devices(config: Config, accelerator: str) -> int | str:
    """``train.devices`` checked against the machine: each CPU device is a process of its own,
    and more of them than cores (``train.devices=1000``) only start processes that wait."""
    devices = config.train.devices
    if accelerator == "cpu":
        if devices == "auto":
            return 1
        cores = available_cores()
        if isinstance(devices, int) and devices > cores:
            raise CellaeError(f"train.devices is {devices} but this machine gives {cores} CPU "
                              f"cores; on the CPU each device is a process: use at most {cores}")
    elif accelerator in ("gpu", "cuda") and isinstance(devices, int):
        visible = torch.cuda.device_count()
        if devices > visible:
            raise CellaeError(f"train.devices is {devices} but {visible} GPU(s) are visible")
    return devices


def _devices_per_node(config: Config) -> int:
    """The processes Lightning runs on each machine: one per device it trains on."""
    accelerator = _accelerator(config)
    devices = _devices(config, accelerator)
    if devices == "auto":  # left as "auto" only off the CPU, where Lightning takes every device
        return torch.cuda.device_count() if accelerator in ("gpu", "cuda") else 1
    return int(devices)


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
    accelerator = _accelerator(config)
    _quiet_lightning()
    interactive = sys.stderr.isatty()
    # Saved after EpochLog wrote the epoch's row (Lightning runs checkpointing last), so a
    # checkpoint never exists without its metrics row. Two callbacks, not one with save_last:
    # Lightning (2.6) refreshes save_last's file only in epochs whose monitored loss improved,
    # which leaves last.ckpt stale, and a resume from it loses every epoch since.
    best = ModelCheckpoint(
        dirpath=run_dir / runs.CHECKPOINT_DIR, filename=Path(runs.BEST_CHECKPOINT).stem,
        monitor="test_loss", mode="min", save_top_k=1, save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    last = ModelCheckpoint(
        dirpath=run_dir / runs.CHECKPOINT_DIR, filename=Path(runs.LAST_CHECKPOINT).stem,
        monitor=None, save_top_k=1, save_on_train_epoch_end=True, enable_version_counter=False,
    )
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
    devices = _devices(config, accelerator)
    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=resolved_precision(t.precision, accelerator),
        max_epochs=t.epochs,
        gradient_clip_val=t.grad_clip or None,
        # some GPU kernels have no deterministic version; warn there rather than refuse to train
        deterministic=True if (t.deterministic and accelerator == "cpu") else ("warn" if t.deterministic else False),
        callbacks=[FiniteLossGuard(), best, last, EpochLog(run_dir, plain_lines=not interactive)]
        + ([LossProgressBar()] if interactive else []) + list(callbacks or []),
        logger=logger,
        enable_progress_bar=interactive,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        # the datamodule brings its own DistributedSampler, seeded per epoch (see data.datamodule)
        use_distributed_sampler=False,
        log_every_n_steps=1,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )


def _check_test_side(config: Config, n_test: int, evaluate: bool) -> None:
    """Before training, not after it: a test side too small for the evaluation to draw."""
    from cellae.evaluation.latent import MIN_TSNE_POINTS

    if evaluate and config.eval.enabled and n_test < MIN_TSNE_POINTS:
        raise CellaeError(
            f"the test side holds {n_test} images; the evaluation's t-SNE map needs at least "
            f"{MIN_TSNE_POINTS}: raise data.test_fraction, give more images, or set "
            f"eval.enabled=false")


def _sides(config: Config, cache: CellCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The train and test rows of the run's split, and the train rows the model learns from."""
    d = config.data
    train_idx, test_idx = split_indices(
        cache.patients, cache.labels, d.test_fraction, config.seed, by=d.split, folds=d.folds,
        fold=d.fold,
    )
    return train_idx, test_idx, training_rows(train_idx, cache.labels, cache.class_names,
                                              d.train_classes)


def _fit(config: Config, run_dir: Path, ckpt_path: Path | None, callbacks: list[Callback] | None,
         evaluate: bool, owner: bool, cache: CellCache | None = None,
         sides: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> L.Trainer:
    """Train in ``run_dir``, which only its ``owner`` (global rank 0) writes; ``cache`` and its
    ``sides`` are given when the caller has them."""
    L.seed_everything(config.seed, workers=True, verbose=False)
    if cache is None:
        cache = prepare_cache(config.data, progress=sys.stderr.isatty())
    d = config.data
    train_idx, test_idx, fit_idx = sides if sides is not None else _sides(config, cache)
    _check_test_side(config, len(test_idx), evaluate)
    channels = int(cache.images.shape[1])
    if owner and ckpt_path is None:
        runs.write_split(run_dir, cache.files, train_idx, test_idx)
        summary = runs.data_summary(cache.labels, cache.patients, cache.class_names, train_idx, test_idx)
        # a file without a patient id is its own patient (see data.sources.labels)
        unmatched = int(np.sum(np.asarray(cache.patients) == np.asarray(cache.files)))
        warning = unmatched_warning(unmatched, len(cache.files))
        if warning:
            print(warning, file=sys.stderr, flush=True)
        runs.update_run_info(run_dir, channels=channels, data={
            "cache": str(cache.path), "cache_format": FORMAT_VERSION,
            "class_names": list(cache.class_names), **summary,
            "files_without_patient": unmatched, **({"warning": warning} if warning else {}),
            **({"trained_on": {"classes": list(d.train_classes), "images": len(fit_idx)}}
               if d.train_classes else {})})
    datamodule = CellDataModule(
        cache, fit_idx, test_idx, config.train.batch_size, seed=config.seed,
        num_workers=config.train.num_workers, data_on_device=config.train.data_on_device,
    )
    module = CellaeModule(config, channels)
    if owner and ckpt_path is None:
        runs.update_run_info(run_dir, parameters=sum(p.numel() for p in module.model.parameters()))
    trainer = build_trainer(config, run_dir, callbacks)
    started = time.perf_counter()
    try:
        with _environment_restored(LAUNCHER_ENV):
            os.environ[RUN_DIR_ENV] = str(run_dir)
            trainer.fit(module, datamodule=datamodule,
                        ckpt_path=str(ckpt_path) if ckpt_path else None)
    except NonFiniteLossError as exc:
        kept = run_dir / runs.CHECKPOINT_DIR / runs.LAST_CHECKPOINT
        if owner:
            runs.update_run_info(run_dir, status="failed", error=str(exc))
        where = f"; the last good checkpoint is {kept}" if kept.exists() else ""
        raise NonFiniteLossError(f"{exc}{where}") from exc
    except (KeyboardInterrupt, SystemExit) as exc:
        # Lightning turns Ctrl-C and SIGTERM into a graceful stop and then exits; say how to go on
        if trainer.state.status != TrainerStatus.INTERRUPTED:
            raise
        raise _interrupted(run_dir, trainer) from exc
    if trainer.is_global_zero:
        rows = runs.read_metrics(run_dir)
        # the training steps' own rate per epoch, without the test pass
        rates = [r["images_per_second"] for r in rows
                 if isinstance(r.get("images_per_second"), float) and r["images_per_second"] > 0]
        runs.update_run_info(
            run_dir,
            status="trained",
            epochs_completed=trainer.current_epoch,
            fit_seconds=round(time.perf_counter() - started, 2),
            # each epoch trains the same images: the overall rate is the rates' harmonic mean
            train_images_per_second=round(statistics.harmonic_mean(rates), 1) if rates else None,
            best_checkpoint=Path(trainer.checkpoint_callback.best_model_path).name or None,
            devices=trainer.num_devices,
            nodes=trainer.num_nodes,
            accelerator=type(trainer.accelerator).__name__,
            precision=str(trainer.precision),
        )
    return trainer


def _interrupted(run_dir: Path, trainer: L.Trainer) -> TrainingInterrupted:
    last = run_dir / runs.CHECKPOINT_DIR / runs.LAST_CHECKPOINT
    if trainer.is_global_zero:
        runs.update_run_info(run_dir, status="interrupted")
    if not last.exists():
        return TrainingInterrupted(
            f"interrupted in epoch {trainer.current_epoch + 1}, before the first checkpoint; "
            f"nothing to resume, start the run again"
        )
    done = int(runs.load_checkpoint(last).get("epoch", -1)) + 1
    return TrainingInterrupted(
        f"interrupted in epoch {trainer.current_epoch + 1}; {last} holds epochs 1-{done}; "
        f"continue with: cellae train --resume {run_dir}"
    )


def _finish(run_dir: Path, config: Config, trainer: L.Trainer, evaluate: bool) -> Path:
    if not trainer.is_global_zero:
        # the other DDP processes stop here; global rank 0 evaluates and reports
        sys.exit(0)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if evaluate and config.eval.enabled:
        from cellae.evaluate import evaluate_run

        # the cache the training just used, wherever its config put it
        evaluate_run(run_dir, cache_dir=config.data.cache_dir)
    runs.update_run_info(run_dir, status="finished")
    return run_dir


def train(
    config: Config,
    out: Path,
    evaluate: bool = True,
    callbacks: list[Callback] | None = None,
    timestamped: bool = True,
) -> Path:
    """Train ``config`` into a new run folder under ``out`` and return its path.

    Of the processes of a distributed run, global rank 0 alone creates and writes the run
    folder; the others train beside it (see :func:`_rank_dir`)."""
    _devices(config, _accelerator(config))  # before any work, as every other config mistake
    requeued = requeued_run(out, config.name)
    if requeued is not None:
        return resume(requeued, evaluate=evaluate, callbacks=callbacks)
    if process_launch(config).rank > 0:
        with _rank_dir() as run_dir:
            # opens the cache and splits it as rank 0 does, in _fit
            trainer = _fit(config, run_dir, None, callbacks, evaluate, owner=False)
            return _finish(run_dir, config, trainer, evaluate)
    # the data first: a cache build that is interrupted or fails leaves no run folder behind
    cache = prepare_cache(config.data, progress=sys.stderr.isatty())
    sides = _sides(config, cache)  # a split or class mistake, too, leaves no run folder behind
    run_dir = runs.new_run_dir(out, config.name, timestamped=timestamped)
    runs.write_atomic(run_dir / runs.CONFIG_FILE, config.to_yaml())
    runs.update_run_info(
        run_dir, name=config.name, seed=config.seed, status="running",
        cellae_version=__version__, torch_version=torch.__version__,
        started=time.strftime("%Y-%m-%dT%H:%M:%S"),
        **({SLURM_JOB_KEY: os.environ["SLURM_JOB_ID"]} if os.environ.get("SLURM_JOB_ID") else {}),
    )
    print(f"training {config.model.family} '{config.name}' into {run_dir}", file=sys.stderr)
    with _held(run_dir, owner=True):
        trainer = _fit(config, run_dir, None, callbacks, evaluate, owner=True, cache=cache,
                       sides=sides)
        return _finish(run_dir, config, trainer, evaluate)


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
        if (run_dir / runs.CHECKPOINT_DIR / runs.LAST_CHECKPOINT).is_file():
            print(f"SLURM job {job} was requeued (restart {restarts}): resuming {run_dir}",
                  file=sys.stderr, flush=True)
            return run_dir
        print(f"SLURM job {job} was requeued before {run_dir} finished an epoch: training "
              f"anew", file=sys.stderr, flush=True)
    return None


@contextlib.contextmanager
def _rank_dir() -> Iterator[Path]:
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


@contextlib.contextmanager
def _held(run_dir: Path, owner: bool) -> Iterator[None]:
    """The run folder's lock, taken by its owner, global rank 0 (the other processes of a DDP
    run work under it); and a run that fails, whatever the error, says ``failed`` in run.json
    rather than staying ``running``."""
    if not owner:
        yield
        return
    with runs.run_lock(run_dir):
        try:
            yield
        except Exception as exc:
            # an interruption has said "interrupted" already, a NaN loss "failed"; a run.json
            # that cannot be read or written (a full disk) must not hide the error itself
            with contextlib.suppress(OSError, ValueError, CellaeError):
                if runs.read_run_info(run_dir).get("status") == "running":
                    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                    runs.update_run_info(run_dir, status="failed", error=reason)
            raise


def resume(run_dir: Path, evaluate: bool = True, callbacks: list[Callback] | None = None) -> Path:
    """Continue an interrupted run from its last checkpoint; it ends where an uninterrupted run would."""
    runs.require_run_dir(run_dir)
    config = runs.read_config(run_dir)
    last = run_dir / runs.CHECKPOINT_DIR / runs.LAST_CHECKPOINT
    if not last.is_file():
        raise CellaeError(f"{run_dir} has no {runs.CHECKPOINT_DIR}/{runs.LAST_CHECKPOINT} to resume from")
    # every process of a distributed resume is given this folder: on several machines it must
    # be on a file system they share; only global rank 0 writes it
    owner = process_launch(config).rank == 0
    with _held(run_dir, owner):
        # read under the lock: a run still training would change it meanwhile
        state = runs.load_checkpoint(last)
        completed = int(state.get("epoch", -1)) + 1
        if (completed >= config.train.epochs
                and runs.read_run_info(run_dir).get("status") == "finished"):
            print(f"{run_dir} already finished all {config.train.epochs} epochs", file=sys.stderr)
            return run_dir
        if owner:
            runs.truncate_metrics(run_dir, completed)
            runs.update_run_info(run_dir, status="running", resumed_from_epoch=completed)
            warn_if_older_images(run_dir, config)
        print(f"resuming {run_dir} after epoch {completed}", file=sys.stderr)
        trainer = _fit(config, run_dir, last, callbacks, evaluate, owner)
        return _finish(run_dir, config, trainer, evaluate)
