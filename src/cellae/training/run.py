"""``train`` and ``resume``: a run folder from a config, trained, checkpointed and evaluated.

``train(config, out)`` prepares the cache, splits it, trains, checkpoints and leaves a complete
run folder; ``resume(run_dir)`` continues an interrupted run from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerStatus

from cellae import __version__, runs
from cellae.config import Config
from cellae.data.cache import FORMAT_VERSION, CellCache, prepare_cache
from cellae.data.datamodule import CellDataModule
from cellae.data.sources.labels import unmatched_warning
from cellae.data.splits import split_indices, training_rows
from cellae.errors import CellaeError, first_line
from cellae.evaluate import cell_columns, evaluate_run
from cellae.evaluation.latent import MIN_TSNE_POINTS
from cellae.run_inputs import read_config, split_rows, warn_if_older_images
from cellae.training.launch import (
    LAUNCHER_ENV,
    RUN_DIR_ENV,
    SLURM_JOB_KEY,
    accelerator,
    devices,
    environment_restored,
    process_launch,
    rank_dir,
    requeued_run,
)
from cellae.training.module import CellaeModule, NonFiniteLossError
from cellae.training.trainer import build_trainer


class TrainingInterrupted(CellaeError):
    """Ctrl-C or SIGTERM stopped training; the run can be resumed."""

    exit_code = 130


class RunSplit(NamedTuple):
    """A run's rows of its cache: each side of its split, and the train rows it learns from
    (all of them, or those of ``data.train_classes``)."""

    train: np.ndarray
    test: np.ndarray
    fit: np.ndarray


def _check_test_side(config: Config, n_test: int, evaluate: bool) -> None:
    """Before training, not after it: a test side too small for the evaluation to draw."""
    if evaluate and config.eval.enabled and n_test < MIN_TSNE_POINTS:
        raise CellaeError(
            f"the test side holds {n_test} images; the evaluation's t-SNE map needs at least "
            f"{MIN_TSNE_POINTS}: raise data.test_fraction, give more images, or set "
            f"eval.enabled=false")


def _split(config: Config, cache: CellCache) -> RunSplit:
    """The rows of the run's split, and the train rows the model learns from."""
    d = config.data
    train_idx, test_idx = split_indices(
        cache.patients, cache.labels, d.test_fraction, config.seed, by=d.split, folds=d.folds,
        fold=d.fold,
    )
    return RunSplit(train_idx, test_idx, training_rows(train_idx, cache.labels, cache.class_names,
                                                       d.train_classes))


def _fit(config: Config, run_dir: Path, ckpt_path: Path | None, callbacks: list[Callback] | None,
         evaluate: bool, owner: bool, cache: CellCache | None = None,
         split: RunSplit | None = None) -> L.Trainer:
    """Train in ``run_dir``, which only its ``owner`` (global rank 0) writes; ``cache`` and its
    ``split`` are given when the caller has them."""
    L.seed_everything(config.seed, workers=True, verbose=False)
    if cache is None:
        cache = prepare_cache(config.data, progress=sys.stderr.isatty())
    d = config.data
    train_idx, test_idx, fit_idx = split if split is not None else _split(config, cache)
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
            # the channels kept and how they were scaled: the API prepares new images alike
            **({"channels": cache.meta["channels"]} if "channels" in cache.meta else {}),
            "class_names": list(cache.class_names), **summary,
            "files_without_patient": unmatched, **({"warning": warning} if warning else {}),
            **({"trained_on": {"classes": list(d.train_classes), "images": len(fit_idx)}}
               if d.train_classes else {})})
    datamodule = CellDataModule(
        cache, fit_idx, test_idx, config.train.batch_size, seed=config.seed,
        num_workers=config.train.num_workers, data_on_device=config.train.data_on_device,
        steps_per_call=config.train.steps_per_call,
        with_patients=config.model.condition == "patient",
    )
    module = CellaeModule(config, channels)
    if module.model.condition is not None:
        module.model.condition.resize(datamodule.training_patients)
    if owner and ckpt_path is None:
        runs.update_run_info(run_dir, parameters=sum(p.numel() for p in module.model.parameters()))
    trainer = build_trainer(config, run_dir, callbacks)
    started = time.perf_counter()
    try:
        with environment_restored(LAUNCHER_ENV):
            os.environ[RUN_DIR_ENV] = str(run_dir)
            trainer.fit(module, datamodule=datamodule,
                        ckpt_path=str(ckpt_path) if ckpt_path else None)
    except NonFiniteLossError as exc:
        kept = runs.last_checkpoint(run_dir)
        if owner:
            runs.set_status(run_dir, "failed", error=str(exc))
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
        runs.set_status(
            run_dir, "trained",
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
    last = runs.last_checkpoint(run_dir)
    if trainer.is_global_zero:
        runs.set_status(run_dir, "interrupted")
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
        # the cache the training just used, wherever its config put it
        evaluate_run(run_dir, cache_dir=config.data.cache_dir)
    runs.set_status(run_dir, "finished")
    return run_dir


def _check_evaluation_settings(config: Config, cache: CellCache, evaluate: bool) -> None:
    """What the evaluation would refuse after training, refused before it: a map coloured by a
    column the source lacks, a UMAP without umap-learn."""
    if not (evaluate and config.eval.enabled):
        return
    columns = list(cell_columns(cache, np.arange(0)))
    missing = [c for c in config.eval.color_by if c not in columns]
    if missing:
        raise CellaeError(f"eval.color_by: no column '{missing[0]}' in {config.data.source} "
                          f"(its columns: {', '.join(columns)})")
    if "umap" in config.eval.maps:
        import importlib.util

        if importlib.util.find_spec("umap") is None:
            raise CellaeError("eval.maps: umap needs umap-learn: pip install 'cellae[umap]'")


def train(
    config: Config,
    out: Path,
    evaluate: bool = True,
    callbacks: list[Callback] | None = None,
    timestamped: bool = True,
) -> Path:
    """Train ``config`` into a new run folder under ``out`` and return its path.

    Of the processes of a distributed run, global rank 0 alone creates and writes the run
    folder; the others train beside it (see :func:`cellae.training.launch.rank_dir`)."""
    devices(config, accelerator(config))  # before any work, as every other config mistake
    requeued = requeued_run(out, config.name)
    if requeued is not None:
        return resume(requeued, evaluate=evaluate, callbacks=callbacks)
    if process_launch(config).rank > 0:
        with rank_dir() as run_dir:
            # opens the cache and splits it as rank 0 does, in _fit
            trainer = _fit(config, run_dir, None, callbacks, evaluate, owner=False)
            return _finish(run_dir, config, trainer, evaluate)
    # the data first: a cache build that is interrupted or fails leaves no run folder behind
    cache = prepare_cache(config.data, progress=sys.stderr.isatty())
    split = _split(config, cache)  # a split or class mistake, too, leaves no run folder behind
    _check_evaluation_settings(config, cache, evaluate)
    run_dir = runs.new_run_dir(out, config.name, timestamped=timestamped)
    runs.write_atomic(run_dir / runs.CONFIG_FILE, config.to_yaml())
    runs.set_status(
        run_dir, "running", name=config.name, seed=config.seed,
        cellae_version=__version__, torch_version=torch.__version__,
        started=time.strftime("%Y-%m-%dT%H:%M:%S"),
        **({SLURM_JOB_KEY: os.environ["SLURM_JOB_ID"]} if os.environ.get("SLURM_JOB_ID") else {}),
    )
    print(f"training {config.model.family} '{config.name}' into {run_dir}", file=sys.stderr)
    with _held(run_dir, owner=True):
        trainer = _fit(config, run_dir, None, callbacks, evaluate, owner=True, cache=cache,
                       split=split)
        return _finish(run_dir, config, trainer, evaluate)


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
                if runs.read_status(run_dir) == "running":
                    runs.set_status(run_dir, "failed", error=first_line(exc))
            raise


# the one setting a resume may change: how long the run trains (the rest would make it another run)
RESUMABLE_KEYS = ("train.epochs",)


def _resumed_config(run_dir: Path, config: Config, overrides: list[str]) -> Config:
    """The run's config with the overrides a resume honours (``train.epochs``); any other is
    refused, never ignored."""
    from cellae.typed_config import parse_override

    for text in overrides:
        key, value = parse_override(text)
        if key not in RESUMABLE_KEYS:
            raise CellaeError(f"--set {key}: a resumed run keeps its config.yaml; only "
                              f"{', '.join(RESUMABLE_KEYS)} can change on --resume (to train "
                              "longer); start a new run for another setting")
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CellaeError(f"--set train.epochs must be a positive integer, got {value!r}")
        config = dataclasses.replace(config, train=dataclasses.replace(config.train,
                                                                        epochs=value))
    return config


def _resumed_split(run_dir: Path, config: Config, cache: CellCache) -> RunSplit:
    """The run's own split (split.json), matched to the cache by file name: a source that
    gained images since the run started must not put them, or move test patients, into the
    resumed epochs. Images gone from the source are refused; new ones are left out, said once."""
    train_idx, test_idx = split_rows(run_dir, cache)
    added = len(cache) - len(train_idx) - len(test_idx)
    if added > 0:
        print(f"{added} images of {config.data.source} are newer than this run's split and are "
              "left out of the resumed epochs (start a new run to use them)", file=sys.stderr,
              flush=True)
    return RunSplit(train_idx, test_idx, training_rows(train_idx, cache.labels,
                                                       cache.class_names,
                                                       config.data.train_classes))


def _check_checkpoint_fits(path: Path, state: dict, config: Config, channels: int) -> None:
    """Refuse, in one line, a checkpoint that the model of config.yaml cannot take (the file
    was edited after training: latent size, family, widths), before Lightning's 40-line
    state_dict error."""
    from cellae.models.base import build_model

    model = build_model(config.model, config.data.image_size, channels)
    try:
        model.load_state_dict(runs.model_state_from_checkpoint(state))
    except RuntimeError as exc:
        detail = str(exc).splitlines()[-1].strip()[:160] if str(exc) else type(exc).__name__
        raise CellaeError(f"{path} does not fit the model {runs.CONFIG_FILE} describes (was it "
                          f"edited after training?): {detail}; restore config.yaml or start a "
                          "new run") from exc


def resume(run_dir: Path, evaluate: bool = True, callbacks: list[Callback] | None = None,
           overrides: list[str] | None = None) -> Path:
    """Continue an interrupted run from its last checkpoint; it ends where an uninterrupted run
    would. ``overrides`` may set ``train.epochs`` (to train longer); any other is refused."""
    runs.require_run_dir(run_dir)
    config = _resumed_config(run_dir, read_config(run_dir), list(overrides or []))
    last = runs.last_checkpoint(run_dir)
    if not last.is_file():
        raise CellaeError(f"{run_dir} has no {last.relative_to(run_dir)} to resume from")
    # every process of a distributed resume is given this folder: on several machines it must
    # be on a file system they share; only global rank 0 writes it
    owner = process_launch(config).rank == 0
    with _held(run_dir, owner):
        # read under the lock: a run still training would change it meanwhile
        state = runs.load_checkpoint(last)
        completed = int(state.get("epoch", -1)) + 1
        if overrides and config.train.epochs < completed:
            raise CellaeError(f"--set train.epochs={config.train.epochs}: the run has already "
                              f"trained {completed} epochs")
        if (completed >= config.train.epochs
                and runs.read_status(run_dir) == "finished"):
            print(f"{run_dir} already finished all {config.train.epochs} epochs", file=sys.stderr)
            return run_dir
        cache = prepare_cache(config.data, progress=sys.stderr.isatty())
        _check_checkpoint_fits(last, state, config, int(cache.images.shape[1]))
        split = _resumed_split(run_dir, config, cache)
        if owner:
            if overrides:  # config.yaml says what the run trained for
                runs.write_atomic(run_dir / runs.CONFIG_FILE, config.to_yaml())
            runs.truncate_metrics(run_dir, completed)
            runs.set_status(run_dir, "running", resumed_from_epoch=completed)
            warn_if_older_images(run_dir, config)
        print(f"resuming {run_dir} after epoch {completed}", file=sys.stderr)
        trainer = _fit(config, run_dir, last, callbacks, evaluate, owner, cache=cache,
                       split=split)
        return _finish(run_dir, config, trainer, evaluate)
