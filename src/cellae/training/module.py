"""The LightningModule: one optimisation step of any family, and the guard against a NaN loss."""

from __future__ import annotations

import math
import sys
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden

from cellae import __version__
from cellae.config import Config
from cellae.data.augment import augment
from cellae.data.datamodule import steps_of, to_device
from cellae.data.stain import stain_jitter
from cellae.errors import CellaeError, first_line
from cellae.images import unit_float
from cellae.models import build_model
from cellae.models.base import CellAutoencoder, mask_argument, prefers_channels_last
from cellae.models.condition import drop_patients
from cellae.training.invariance import second_view, vicreg
from cellae.training.lr_schedule import lr_factor


class NonFiniteLossError(CellaeError):
    """The loss became NaN or infinite."""


# the two passes of an epoch, as the loss columns name them
SIDES = ("train", "test")
# Lightning's hooks around a backward pass and an optimizer step
STEP_HOOKS = ("on_before_backward", "on_after_backward", "on_before_optimizer_step")


class EpochMeans:
    """One side's loss terms over an epoch, summed on the device weighted by batch size.

    What Lightning's ``self.log(..., on_epoch=True)`` computes for each term (the sum of
    value x batch size over the sum of batch sizes, the processes' sums added together),
    without a ``log`` call per term (each some 0.2 ms of Python on the CPU, every step, which
    a GPU step of a few ms cannot hide). A step only keeps its terms, detached; every
    ``FOLD_EVERY`` steps, and when the sums are read, they are added up in a few tensor
    operations for all those steps at once, where adding each step's would cost some seven
    operations a step. A term whose sum is not finite went NaN or infinite in some step, so
    the sums are the NaN watch too.
    """

    # steps kept before they are added up: few enough that their scalars cost no memory
    FOLD_EVERY = 64

    def __init__(self, names: list[str], device: torch.device) -> None:
        self.names = names
        self._loss = names.index("loss")
        self._sums = torch.zeros(len(names), device=device)
        self._nan = torch.zeros((), dtype=torch.bool, device=device)
        self._kept: list[list[torch.Tensor]] = []
        self._sizes: list[int] = []
        self.images = 0
        self.weights: dict[str, float] = {}  # schedule weights (plain numbers) x batch size

    def add(self, losses: dict[str, torch.Tensor], size: int,
            weights: dict[str, float] | None) -> None:
        self._kept.append([v.detach() for v in losses.values()])
        self._sizes.append(size)
        if len(self._kept) >= self.FOLD_EVERY:
            self._fold()
        self.images += size
        for key, value in (weights or {}).items():
            self.weights[key] = self.weights.get(key, 0.0) + value * size

    def _fold(self) -> None:
        if not self._kept:
            return
        with torch.no_grad():
            values = torch.stack([torch.stack(terms) for terms in self._kept]).float()
            sizes = to_device(torch.tensor(self._sizes, dtype=values.dtype), values.device)
            self._sums += (values * sizes[:, None]).sum(dim=0)
            self._nan |= torch.isnan(values[:, self._loss]).any()
        self._kept.clear()
        self._sizes.clear()

    @property
    def sums(self) -> torch.Tensor:
        """Each term's sum of value x batch size over the epoch so far."""
        self._fold()
        return self._sums

    @property
    def nan(self) -> torch.Tensor:
        """Whether the loss was NaN in some step (not merely infinite)."""
        self._fold()
        return self._nan

    def means(self) -> torch.Tensor:
        return self.sums / max(1, self.images)


class CellaeModule(L.LightningModule):
    """One optimisation step of any family, on batches of (images, masks, ...) from any datamodule.

    Images may be uint8 (0-255) or float in [0, 1]; masks are (B, H, W) or (B, 1, H, W).
    """

    def __init__(self, config: Config, channels: int) -> None:
        super().__init__()
        self.config = config
        self.model = build_model(config.model, config.data.image_size, channels)
        # per side, this epoch's loss terms summed on the device; read once per epoch (logged
        # at the side's last batch, watched by EpochLog at the epoch's end), as reading
        # them each step would wait for the device each step
        self._epoch: dict[str, EpochMeans] = {}
        # optimizer steps an epoch, asked of the trainer once an epoch rather than each step
        self._epoch_steps: int | None = None
        # the forward pass training runs: the model, or its torch.compile'd wrapper (kept out
        # of the module's children so the checkpoint's keys stay the model's own)
        self._forward: list[Any] = [self.model]
        # the step below runs backward and the optimizer itself: Lightning's automatic
        # optimisation wraps each step in a closure and a dozen more hooks, some 450 Python
        # calls a step (cProfile) that a GPU step of a few ms cannot hide
        self.automatic_optimization = False
        # whether a step runs backward and the optimizer itself; decided as training starts
        self._plain = False

    def epochs_done(self) -> float:
        """Training progress in epochs, fractional within an epoch; what loss schedules follow."""
        if self._trainer is None:
            return math.inf
        if self._epoch_steps is None:
            self._epoch_steps = self._steps_per_epoch()
        return self.trainer.global_step / max(1, self._epoch_steps)

    def _steps_per_epoch(self) -> int:
        """Optimizer steps an epoch: Lightning's batches, unless a datamodule's batches hold
        several steps each (``Steps``) and it says how many steps an epoch has."""
        steps = getattr(self.trainer.datamodule, "train_steps", None)
        return steps() if callable(steps) else self.trainer.num_training_batches

    def configure_model(self) -> None:
        # here, before a DDP strategy wraps the model: DDP's gradient buckets are views laid
        # out as the weights were when it wrapped them, and a later change of layout makes
        # its averaged gradients land in the wrong places
        device = self.trainer.strategy.root_device
        self.model.use_channels_last(prefers_channels_last(device, self.config.train.channels_last))

    def on_train_start(self) -> None:
        self._plain = self._plain_steps_for(self.trainer, self.optimizers())

    def _plain_steps_for(self, trainer: L.Trainer, optimizer: Any) -> bool:
        """Whether a step may run its backward pass and optimizer step itself, past
        Lightning's ``manual_backward`` and ``LightningOptimizer.step``: where those would do
        nothing more (one process, no loss scaling, no callback or hook of this module that
        listens around the backward pass or the optimizer step). Lightning's way runs those
        hooks for every callback, through its profiler, even when none listens: some 440 of a
        small model's 2,126 Python calls a step (cProfile). The step counter, which schedules
        and checkpoints follow, is Lightning's own either way."""
        plugin = trainer.strategy.precision_plugin
        listens = [callback for callback in trainer.callbacks
                   if any(is_overridden(hook, callback, L.Callback) for hook in STEP_HOOKS)]
        return (type(trainer.strategy) is SingleDeviceStrategy
                and type(plugin) in (Precision, MixedPrecision)
                and getattr(plugin, "scaler", None) is None
                and not listens
                and not any(is_overridden(hook, self, L.LightningModule)
                            for hook in (*STEP_HOOKS, "backward"))
                # one LightningOptimizer, with the step counter's hooks that the manual loop
                # sets on it
                and all(hasattr(optimizer, hook) for hook in ("_on_before_step", "_on_after_step")))

    def _optimizer_step(self, optimizer: Any) -> None:
        """``optimizer.step()``, Lightning's or, for a plain step, the wrapped optimizer's
        between the hooks that count the step."""
        if not self._plain:
            optimizer.step()
            return
        optimizer._on_before_step()
        optimizer.optimizer.step()
        optimizer._on_after_step()

    def _schedule_lr(self, optimizer: Any) -> None:
        """The learning rate of the step about to run, from the run's progress."""
        progress = self.epochs_done() / self.config.train.epochs
        lr = self.config.train.lr * lr_factor(self.config.train.lr_schedule, progress)
        for group in optimizer.param_groups:
            group["lr"] = lr

    def on_fit_start(self) -> None:
        t = self.config.train
        if t.compile:
            size, channels = self.model.image_size, self.model.channels
            probe = torch.rand(2, channels, size, size, device=self.device)
            self._forward = [compiled_or_eager(self.model, probe)]

    def _step(self, batch: Any, side: str, last: bool) -> torch.Tensor:
        images, masks = batch[0], batch[1]
        if side == "train":
            images, masks = augment(self.config.train.augment, images, masks)
        x = unit_float(images)
        mask = masks.float()
        # the encoder may see a re-stained cell; the loss below compares with ``x`` as it is
        jitter = self.config.train.stain_jitter if side == "train" else 0.0
        seen = stain_jitter(x, masks, jitter)
        cells = mask_argument(self.model, masks)
        if self.model.condition is None:
            output = self._forward[0](seen, **cells)
        else:
            # the test side's patients are unseen ones already (slot 0)
            rate = self.config.model.condition_dropout if side == "train" else 0.0
            output = self._forward[0](seen, drop_patients(batch[3], rate), **cells)
        # the test loss is always the full objective, as in evaluation: one definition of it
        weights = self.model.schedule(self.epochs_done()) if side == "train" else None
        losses = self.model.loss(x, mask, output, weights)
        if self.config.train.invariance > 0:
            # both sides: the test loss stays the full objective
            view, view_masks = second_view(stain_jitter(x, masks, jitter), masks)
            term = vicreg(output.z,
                          self.model.encode(view, **mask_argument(self.model, view_masks)))
            losses["invariance"] = term
            losses["loss"] = losses["loss"] + self.config.train.invariance * term
        epoch = self._record(side, losses, len(x), weights)
        if last:
            self._log_epoch(side, epoch)
        return losses["loss"]

    def _record(self, side: str, losses: dict[str, torch.Tensor], size: int,
                weights: dict[str, float] | None) -> EpochMeans:
        """Add a batch's loss terms to the side's sums of this epoch, on the device."""
        if side not in self._epoch:
            self._epoch[side] = EpochMeans(list(losses), losses["loss"].device)
        self._epoch[side].add(losses, size, weights)
        return self._epoch[side]

    def _log_epoch(self, side: str, epoch: EpochMeans) -> None:
        """The side's epoch means, logged once, at its last batch: before the epoch's end,
        where the callbacks read them (metrics.csv, the NaN guard, the checkpoints)."""
        means = epoch.means()
        for i, key in enumerate(epoch.names):
            name = f"{side}_loss" if key == "loss" else f"{side}_{key}"
            self.log(name, means[i], on_step=False, on_epoch=True, batch_size=epoch.images,
                     sync_dist=True)
        for key, total in epoch.weights.items():
            self.log(key, total / epoch.images, on_step=False, on_epoch=True,
                     batch_size=epoch.images)

    def on_train_epoch_start(self) -> None:
        self._epoch.pop("train", None)
        self._epoch_steps = None

    def images_seen(self, side: str) -> int:
        """The images of ``side`` this process has stepped through in this epoch."""
        return self._epoch[side].images if side in self._epoch else 0

    def on_validation_epoch_start(self) -> None:
        self._epoch.pop("test", None)

    def raise_if_nonfinite(self) -> None:
        """Raise :class:`NonFiniteLossError` if a loss went NaN or infinite since the last call,
        here or in any other process of a multi-process run.

        Every process must stop together: one that stopped alone would leave the others
        waiting for it at their next gradient exchange, for ever. So the processes share a
        summary (per side: any term non-finite, loss NaN) once per epoch, every process the
        same call, whether or not it saw a batch of that side.
        """
        watched = self._epoch
        summary = torch.zeros(2 * len(SIDES), dtype=torch.bool, device=self.device)
        for i, side in enumerate(SIDES):
            if side in watched:
                summary[2 * i] = ~torch.isfinite(watched[side].sums).all()
                summary[2 * i + 1] = watched[side].nan
        everywhere = self.all_gather(summary).reshape(-1, 2 * len(SIDES)).any(dim=0).tolist()
        for i, side in enumerate(SIDES):
            if not everywhere[2 * i]:
                continue
            value = "nan" if everywhere[2 * i + 1] else "infinite"
            bad = ~torch.isfinite(watched[side].sums) if side in watched else None
            if bad is not None and bad.any():
                names = watched[side].names
                parts = ", ".join(n for n, flag in zip(names, bad.tolist(), strict=True) if flag)
                where = f"non-finite parts: {parts}"
            else:
                where = "in another process of this run"
            raise NonFiniteLossError(
                f"{side} loss became {value} in epoch {self.current_epoch + 1} ({where}); "
                f"lower train.lr or set train.grad_clip"
            )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        batches = steps_of(batch)
        last_call = batch_idx + 1 >= self.trainer.num_training_batches
        for i, one in enumerate(batches):
            loss = self._step(one, "train", last_call and i + 1 == len(batches))
            optimizer.zero_grad(set_to_none=True)
            if self._plain:
                loss.backward()
            else:
                self.manual_backward(loss)
            if self.config.train.grad_clip:
                self.clip_gradients(optimizer, gradient_clip_val=self.config.train.grad_clip,
                                    gradient_clip_algorithm="norm")
            if self.config.train.lr_schedule != "constant":
                self._schedule_lr(optimizer)
            self._optimizer_step(optimizer)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        batches = steps_of(batch)
        last_call = batch_idx + 1 >= sum(self.trainer.num_val_batches)
        for i, one in enumerate(batches):
            loss = self._step(one, "test", last_call and i + 1 == len(batches))
        return loss

    def metric_columns(self) -> list[str]:
        """The columns of ``metrics.csv``: the totals, each loss term, each schedule weight."""
        terms = self.model.loss_terms() + (("invariance",) if self.config.train.invariance > 0
                                           else ())
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
        _steps_of_automatic_optimisation(checkpoint)


# where Lightning's fit loop counts optimizer steps, under each kind of optimisation
_AUTOMATIC_STEPS = "epoch_loop.automatic_optimization.optim_progress"
_MANUAL_STEPS = "epoch_loop.manual_optimization.optim_step_progress"


def _steps_of_automatic_optimisation(checkpoint: dict[str, Any]) -> None:
    """A checkpoint written before the module ran its own optimizer step counts the steps under
    Lightning's automatic optimisation: they become the manual count the module now keeps, so
    that a resumed run's global step, and the loss schedules that follow it (the VAE's KL
    warm-up), go on from where they were instead of from 0."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    automatic = loops.get(_AUTOMATIC_STEPS, {}).get("optimizer", {}).get("step")
    manual = loops.get(_MANUAL_STEPS)
    if not (isinstance(automatic, dict) and isinstance(manual, dict)):
        return
    stepped_manually = manual.get("total", {}).get("completed", 0)
    stepped_automatically = automatic.get("total", {}).get("completed", 0)
    if stepped_manually == 0 and stepped_automatically > 0:
        loops[_MANUAL_STEPS] = {side: dict(counts) for side, counts in automatic.items()}


def compiled_or_eager(model: CellAutoencoder, probe: torch.Tensor) -> Any:
    """``torch.compile(model)`` where it compiles and runs a training step, else the model.

    Compilation fails late, at the first call, and for reasons outside cellae (no C++ compiler,
    an unsupported platform): a probe step finds out before training, and a failure costs a
    warning instead of the run.
    """
    try:
        compiled = torch.compile(model)
        whole_cells = torch.ones_like(probe[:, 0])
        output = compiled(probe, **mask_argument(model, whole_cells))
        model.loss(probe, whole_cells, output)["loss"].backward()
    except Exception as exc:  # noqa: BLE001 - any compiler failure falls back the same way
        reason = first_line(exc)
        print(f"train.compile: torch.compile failed ({reason[:200]}); training without it",
              file=sys.stderr, flush=True)
        return model
    finally:
        model.zero_grad(set_to_none=True)
    return compiled
