"""Training on Lightning: the module, the trainer and its callbacks, the launch, and the run.

``train(config, out)`` and ``resume(run_dir)`` (:mod:`cellae.training.run`) are the entry points;
:mod:`~cellae.training.module` holds the step, :mod:`~cellae.training.trainer` and
:mod:`~cellae.training.callbacks` the Trainer, :mod:`~cellae.training.launch` devices and ranks.
"""

from cellae.training.launch import RUN_DIR_ENV, Launch, process_launch, requeued_run
from cellae.training.module import CellaeModule, NonFiniteLossError
from cellae.training.run import TrainingInterrupted, resume, train
from cellae.training.trainer import build_trainer, resolved_precision

__all__ = ["RUN_DIR_ENV", "CellaeModule", "Launch", "NonFiniteLossError", "TrainingInterrupted",
           "build_trainer", "process_launch", "requeued_run", "resolved_precision", "resume",
           "train"]
