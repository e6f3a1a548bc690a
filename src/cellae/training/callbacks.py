"""The callbacks of a cellae Trainer: checkpoints written whole, the progress bar in cellae's
words, and at each epoch's end the NaN guard and one ``metrics.csv`` row."""

from __future__ import annotations

import functools
import io
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

from cellae import runs
from cellae.errors import CellaeError
from cellae.training.module import SIDES, CellaeModule


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written through a temporary file and loaded without running pickled code."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            runs.write_atomic(Path(path), buffer.getvalue())
        except OSError as exc:
            # a full disk or a folder gone read-only: the earlier checkpoint is still whole
            last = runs.last_checkpoint(Path(path).parent.parent)
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
        # the logged tensors last shown, and their values as shown
        self._shown: tuple[tuple[tuple[str, Any], ...], dict[str, str]] = ((), {})

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
        # Lightning asks after every step, but the losses change once an epoch: reading a
        # tensor on a GPU (``float``) would wait for the device each step, so the values are
        # read only when the logged tensors are new ones
        metrics = trainer.callback_metrics
        logged = tuple((k, metrics[k]) for k in self.shown(pl_module) if k in metrics)
        before = self._shown[0]
        if len(before) != len(logged) or any(
                a[0] != b[0] or a[1] is not b[1] for a, b in zip(before, logged, strict=True)):
            self._shown = (logged, {k: f"{float(v):.4g}" for k, v in logged})
        return dict(self._shown[1])


class EpochCheckpoints(ModelCheckpoint):
    """``best.ckpt`` (the lowest test loss so far) through Lightning's ModelCheckpoint, and
    ``last.ckpt`` after every epoch, at each epoch's end only.

    ``last.ckpt`` is written here, not by ``save_last``: Lightning (2.6) refreshes save_last's
    file only in epochs whose monitored loss improved, which leaves it stale, and a resume from
    it loses every epoch since. One callback for both, where two ModelCheckpoints did it before:
    Lightning calls every callback at each of a step's dozen hooks and names it each time (a
    ModelCheckpoint's name, its ``state_key``, is the ``repr`` of five settings, made anew at
    each of those calls), so the name is worked out once too.
    """

    def __init__(self, run_dir: Path) -> None:
        super().__init__(
            dirpath=run_dir / runs.CHECKPOINT_DIR, filename=Path(runs.BEST_CHECKPOINT).stem,
            monitor="test_loss", mode="min", save_top_k=1, save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        self.last_path = runs.last_checkpoint(run_dir)

    @functools.cached_property
    def state_key(self) -> str:
        # under ModelCheckpoint's own name, which a checkpoint stores its state by: one written
        # before this class keeps its best score when resumed
        key = super().state_key.removeprefix(type(self).__qualname__)
        return f"{ModelCheckpoint.__qualname__}{key}"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            # every process calls it: Lightning writes from global rank 0 and waits for all
            trainer.save_checkpoint(self.last_path, weights_only=False)


class EpochLog(Callback):
    """At each epoch's end, before any checkpoint of its weights (Lightning runs checkpointing
    last): stops training if the epoch's loss went NaN or infinite, else appends its row to
    ``metrics.csv`` and, off a terminal, prints one plain line (a log file gets one line per
    epoch where a progress bar would fill it with redraws).

    One callback for both, and nothing done per step: Lightning calls every callback at each
    of a step's hooks, whatever it overrides.

    ``seconds`` is the whole epoch, its test pass included; ``images_per_second`` counts the
    training steps' time alone, so that a large test side does not read as slow training.
    """

    def __init__(self, run_dir: Path, plain_lines: bool) -> None:
        self.run_dir = run_dir
        self.plain_lines = plain_lines
        self._started = 0.0
        self._test_started = 0.0
        self._test_seconds = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()
        self._test_seconds = 0.0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._test_started = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._test_seconds += time.perf_counter() - self._test_started

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: CellaeModule) -> None:
        pl_module.raise_if_nonfinite()  # in every process: they stop together
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        seconds = time.perf_counter() - self._started
        training_seconds = seconds - self._test_seconds
        images = pl_module.images_seen("train") * trainer.world_size
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
