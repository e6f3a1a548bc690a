"""How the learning rate moves over a run (``train.lr_schedule``).

``constant`` keeps ``train.lr`` throughout. ``cosine`` lowers it along half a cosine from
``train.lr`` at the first step to 0 at the last (Loshchilov and Hutter's SGDR without
restarts): the last epochs take small steps, which settles the weights in a minimum instead
of leaving them where the last large step threw them.

The factor is a function of the run's progress (optimizer steps done over the run's steps),
which a resumed run reads from Lightning's step count: it carries no state of its own.
"""

from __future__ import annotations

import math
from typing import get_args

from cellae.sections import LrSchedule

SCHEDULES = get_args(LrSchedule)


def lr_factor(schedule: str, progress: float) -> float:
    """The share of ``train.lr`` a step at ``progress`` (0 at the first, 1 after the last) uses."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    raise ValueError(f"train.lr_schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
