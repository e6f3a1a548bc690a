"""A sweep file: a grid (or a list) of runs from one base config, checked before any runs.

A sweep file names a base config and the values to vary::

    name: study
    base: ../malaria/ae.yaml          # relative to this file
    set: [train.epochs=30]            # optional overrides for every run
    grid:                             # every combination ...
      model.family: [ae, vae]
      data.background: [keep, fill_mean]
      model.latent_dim: [20, 50]
    # runs:                           # ... or an explicit list of combinations
    #   - {name: ae-z20, model.family: ae, model.latent_dim: 20, model.latent_l1: 0.0001}
    folds: 5                          # optional: each combination on 5 patient folds ...
    seeds: [0, 1, 2]                  # ... and 3 training seeds: 15 runs, named <name>-f<k>-s<seed>

Each combination is an ordinary run folder inside one sweep folder, named by its values
(``vae-fill_mean-z50``) or by its own ``name``. A key that only one family takes belongs in the
combinations of that family (an explicit ``runs`` list), never in the shared base. ``--resume`` keeps finished runs, resumes an unfinished one from its
checkpoint and trains the rest; a failing run is reported and the others go on.

``--only NAME ...`` runs only the named settings of the file (each with all its folds and
seeds), in the order given: one file holds a whole study, and each step of it runs alone.

With ``folds`` or ``seeds``, a setting is scored as the mean and spread of its repeats, never by
one split or its best seed: the sweep ends by writing ``summary.md`` (see :mod:`cellae.sweep.summary`).

Runs that share their data settings share one cache (it is keyed by them): the first run builds
it, the others open it. ``--jobs N`` builds each distinct cache first, then runs N runs at once
on this machine, each share of the cores (and GPUs) in a process of its own, each run's output
in ``logs/<run>.log`` (see :mod:`cellae.sweep.side_by_side`). ``--launcher slurm`` (through submitit, ``pip install 'cellae[slurm]'``)
builds each distinct cache once in the submitting process, submits each run that is not
finished as its own job (logs in the sweep's ``submitit/`` folder) and returns; ``sweep.json``
records each run's job id as ``submitted``, and the launcher and SLURM options. ``--resume``
then collects: a finished run is kept, a run whose job is pending or running is reported and
left to its job, and a run whose job ended unfinished is submitted again with ``--launcher
slurm`` (with the recorded SLURM options, unless given anew) or run in this process without it.
The summary is written once every run is finished.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cellae import runs
from cellae.config import apply_overrides, config_from_dict, from_older_cellae, read_yaml
from cellae.errors import CellaeError
from cellae.repeats import repeat_name

SWEEP_FILE = "sweep.yaml"
SWEEP_KEYS = {"name", "base", "config", "set", "grid", "runs", "folds", "seeds"}
# every run is checked before the first starts; a grid past this is a typo, not a study
MAX_RUNS = 1000

# short prefixes so that names read like the study's (z50, beta4)
NAME_PREFIXES = {"model.latent_dim": "z", "model.beta": "beta", "train.epochs": "e", "seed": "s"}


def combination_name(combination: dict[str, Any]) -> str:
    """A run's folder name: its own ``name``, or its values (``vae-fill_mean-z50``)."""
    if "name" in combination:
        return runs.safe_folder_name(str(combination["name"]))
    parts = []
    for key, value in combination.items():
        prefix = NAME_PREFIXES.get(key, "")
        if not prefix and isinstance(value, int | float) and not isinstance(value, bool):
            prefix = key.rsplit(".", 1)[-1]
        if isinstance(value, list):
            text = "_".join(map(str, value))
        elif isinstance(value, str) and "/" in value:
            text = runs.source_name(value)  # a data path: its folder or zip name
        else:
            text = str(value)
        parts.append(f"{prefix}{text}")
    return runs.safe_folder_name("-".join(parts))


@dataclass
class Sweep:
    name: str
    base: dict[str, Any]
    combinations: list[dict[str, Any]]
    # a sweep being resumed may come from cellae 0.1.0, whose runs ignored another family's keys
    resumed: bool = False

    def run_name(self, combination: dict[str, Any]) -> str:
        return combination_name(combination)

    def config_values(self, combination: dict[str, Any]) -> dict[str, Any]:
        overrides = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                     for k, v in combination.items()]
        overrides = [o.removesuffix("\n...").removesuffix(" ...") for o in overrides]
        values = apply_overrides(self.base, overrides)
        values["name"] = self.run_name(combination)
        return from_older_cellae(values, flat_model=True) if self.resumed else values


def load_sweep(path: Path, overrides: list[str] | None = None, resumed: bool = False,
               only: list[str] | None = None) -> Sweep:
    """Read and check a sweep file: every combination must make a valid config.

    ``overrides`` (``key=value``, as ``--set`` on the command line) apply to every run, after
    the file's own ``set``; ``only`` keeps the settings of those names, in that order.
    """
    values = read_yaml(path)
    unknown = set(values) - SWEEP_KEYS
    if unknown:
        raise CellaeError(
            f"sweep file {path}: unknown key '{sorted(unknown)[0]}'; allowed: {', '.join(sorted(SWEEP_KEYS))}"
        )
    if ("base" in values) == ("config" in values):
        raise CellaeError(f"sweep file {path} needs exactly one of 'base' (a config file) or 'config'")
    if "base" in values:
        base = read_yaml((path.parent / str(values["base"])).resolve())
    else:
        base = values["config"]
        if not isinstance(base, dict):
            raise CellaeError(f"sweep file {path}: 'config' must be a mapping of config sections")
    in_file = values.get("set", [])
    if isinstance(in_file, dict):
        in_file = [f"{k}={v}" for k, v in in_file.items()]
    base = apply_overrides(base, [str(o) for o in in_file] + list(overrides or []))
    if ("grid" in values) == ("runs" in values):
        raise CellaeError(f"sweep file {path} needs exactly one of 'grid' or 'runs'")
    if "grid" in values:
        grid = values["grid"]
        if not isinstance(grid, dict) or not grid:
            raise CellaeError(f"sweep file {path}: 'grid' must map dotted keys to lists of values")
        for key, options in grid.items():
            if not isinstance(options, list) or not options:
                raise CellaeError(f"sweep file {path}: grid key '{key}' must have a non-empty list of values")
        keys = list(grid)
        size = math.prod(len(options) for options in grid.values())
        if size > MAX_RUNS:
            sizes = " x ".join(str(len(options)) for options in grid.values())
            raise CellaeError(f"sweep file {path}: its grid makes {size:,} runs ({sizes}); a sweep "
                              f"has at most {MAX_RUNS:,}: split it into several sweep files")
        combinations = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]
    else:
        combinations = values["runs"]
        if not isinstance(combinations, list) or not all(isinstance(c, dict) and c for c in combinations):
            raise CellaeError(f"sweep file {path}: 'runs' must be a list of non-empty mappings")
        if len(combinations) > MAX_RUNS:
            raise CellaeError(f"sweep file {path} lists {len(combinations):,} runs; a sweep has at "
                              f"most {MAX_RUNS:,}: split it into several sweep files")
    if only:
        combinations = chosen_settings(path, combinations, only)
    combinations = repeats(path, combinations, values.get("folds", 0), values.get("seeds"))
    sweep = Sweep(name=str(values.get("name", path.stem)), base=base, combinations=combinations,
                  resumed=resumed)
    names = [sweep.run_name(c) for c in combinations]
    duplicated = {n for n, count in Counter(names).items() if count > 1}
    if duplicated:
        raise CellaeError(f"sweep file {path}: two runs would share the name '{sorted(duplicated)[0]}'")
    for combination in combinations:
        config_from_dict(sweep.config_values(combination), check_paths=False)
    return sweep


def chosen_settings(path: Path, combinations: list[dict[str, Any]],
                    only: list[str]) -> list[dict[str, Any]]:
    """The combinations named in ``only``, in its order; a name the file lacks is an error."""
    by_name = {combination_name(c): c for c in combinations}
    unknown = [name for name in only if name not in by_name]
    if unknown:
        raise CellaeError(f"--only: sweep file {path} has no setting '{unknown[0]}'; its "
                          f"settings: {', '.join(by_name)}")
    return [by_name[name] for name in dict.fromkeys(only)]


def repeats(path: Path, combinations: list[dict[str, Any]], folds: Any,
             seeds: Any) -> list[dict[str, Any]]:
    """Each combination once per patient fold and training seed, named ``<name>-f<k>-s<seed>``."""
    if folds in (0, None) and seeds is None:
        return combinations
    if not isinstance(folds, int) or isinstance(folds, bool) or not (folds == 0 or folds >= 2):
        raise CellaeError(f"sweep file {path}: 'folds' must be 0 or an integer of 2 or more, got {folds!r}")
    seeds = [0] if seeds is None else seeds
    if (not isinstance(seeds, list) or not seeds or len(set(map(str, seeds))) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise CellaeError(f"sweep file {path}: 'seeds' must be a list of distinct integers, got {seeds!r}")
    size = len(combinations) * max(folds, 1) * len(seeds)
    if size > MAX_RUNS:
        raise CellaeError(f"sweep file {path}: {len(combinations)} settings x {max(folds, 1)} folds x "
                          f"{len(seeds)} seeds make {size:,} runs; a sweep has at most {MAX_RUNS:,}")
    repeated = []
    for combination in combinations:
        setting = combination_name(combination)
        for fold in range(max(folds, 1)):
            for seed in seeds:
                repeat = {k: v for k, v in combination.items() if k != "name"}
                if folds:
                    repeat |= {"data.folds": folds, "data.fold": fold}
                repeated.append(repeat | {"seed": seed, "name": repeat_name(setting, fold, seed)})
    return repeated


def one_device_each(sweep: Sweep) -> None:
    """``--jobs`` gives each run one device: a run on several would start its other ranks by
    running this whole command again, a sweep inside each rank."""
    for combination in sweep.combinations:
        train = config_from_dict(sweep.config_values(combination), check_paths=False).train
        if train.num_nodes > 1 or (isinstance(train.devices, int) and train.devices > 1):
            raise CellaeError(f"--jobs runs each run on one device, and {sweep.run_name(combination)} "
                              f"asks for several (train.devices {train.devices}, train.num_nodes "
                              f"{train.num_nodes}): run this sweep without --jobs")
