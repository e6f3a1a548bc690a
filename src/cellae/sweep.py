"""A grid of runs from one base config: ``cellae sweep SWEEP.yaml``.

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

With ``folds`` or ``seeds``, a setting is scored as the mean and spread of its repeats, never by
one split or its best seed: the sweep ends by writing ``summary.md`` (see :mod:`cellae.summary`).
"""

from __future__ import annotations

import itertools
import math
import shutil
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cellae import runs
from cellae.config import apply_overrides, config_from_dict, from_older_cellae, read_yaml
from cellae.errors import CellaeError
from cellae.summary import REPEAT, write_summary

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


def load_sweep(path: Path, overrides: list[str] | None = None, resumed: bool = False) -> Sweep:
    """Read and check a sweep file: every combination must make a valid config.

    ``overrides`` (``key=value``, as ``--set`` on the command line) apply to every run, after
    the file's own ``set``.
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
    combinations = _repeats(path, combinations, values.get("folds", 0), values.get("seeds"))
    sweep = Sweep(name=str(values.get("name", path.stem)), base=base, combinations=combinations,
                  resumed=resumed)
    names = [sweep.run_name(c) for c in combinations]
    duplicated = {n for n, count in Counter(names).items() if count > 1}
    if duplicated:
        raise CellaeError(f"sweep file {path}: two runs would share the name '{sorted(duplicated)[0]}'")
    for combination in combinations:
        config_from_dict(sweep.config_values(combination), check_paths=False)
    return sweep


def _repeats(path: Path, combinations: list[dict[str, Any]], folds: Any,
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
                repeated.append(repeat | {"seed": seed, "name": f"{setting}-f{fold}-s{seed}"})
    return repeated


def _run_one(sweep_dir: Path, name: str, values: dict[str, Any], evaluate: bool) -> str:
    """Train, resume or skip one run; return what happened."""
    from cellae.training import resume, train

    run_dir = sweep_dir / name
    if run_dir.exists() and runs.is_run_dir(run_dir):
        status = runs.read_run_info(run_dir).get("status")
        if status == "finished":
            return "kept"
        if (run_dir / runs.CHECKPOINT_DIR / runs.LAST_CHECKPOINT).is_file():
            resume(run_dir, evaluate=evaluate)
            return "resumed"
    if run_dir.exists():
        # started but never checkpointed: keep it aside rather than overwrite it
        aside = sweep_dir / f".{name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(str(run_dir), aside)
    config = config_from_dict(values)
    train(config, sweep_dir, evaluate=evaluate, timestamped=False)
    return "trained"


def run_sweep(path: Path, out: Path, resume: str | None = None, evaluate: bool = True,
              overrides: list[str] | None = None) -> Path:
    """Run every combination of a sweep file; return the sweep folder.

    ``overrides`` apply to every run of a new sweep; a resumed sweep keeps the values it was
    started with (they are frozen into its ``sweep.yaml``).
    """
    from cellae.training import TrainingInterrupted

    if resume:
        sweep_dir = Path(resume)
        if not (sweep_dir / SWEEP_FILE).is_file():
            raise CellaeError(f"{sweep_dir} is not a sweep folder (it has no {SWEEP_FILE})")
        sweep = load_sweep(sweep_dir / SWEEP_FILE, resumed=True)
    else:
        sweep = load_sweep(path, overrides)
        # a data path that is wrong for one run is wrong for all: say so before starting any
        for combination in sweep.combinations:
            config_from_dict(sweep.config_values(combination), check_paths=True)
        sweep_dir = runs.new_run_dir(out, sweep.name)
        # keep the sweep self-contained: the base config is inlined so the folder can move
        frozen = {"name": sweep.name, "config": sweep.base, "runs": sweep.combinations}
        runs.write_atomic(sweep_dir / SWEEP_FILE, yaml.safe_dump(frozen, sort_keys=False))
    results: dict[str, dict[str, Any]] = {}
    order = [sweep.run_name(c) for c in sweep.combinations]
    # the order first, so that a report of a sweep stopped in its first run lists it right
    runs.write_json(sweep_dir / runs.SWEEP_STATUS_FILE, {"name": sweep.name, "order": order, "runs": {}})
    for number, combination in enumerate(sweep.combinations, start=1):
        name = sweep.run_name(combination)
        started = time.perf_counter()
        print(f"[sweep {sweep.name}] run {number} of {len(order)}: {name}", file=sys.stderr,
              flush=True)
        try:
            outcome = _run_one(sweep_dir, name, sweep.config_values(combination), evaluate)
            results[name] = {"status": outcome}
        except TrainingInterrupted:
            # Ctrl-C or SIGTERM stops the sweep, not just the run it reached; --resume goes on
            results[name] = {"status": "interrupted",
                             "seconds": round(time.perf_counter() - started, 1)}
            runs.write_json(sweep_dir / runs.SWEEP_STATUS_FILE,
                            {"name": sweep.name, "order": order, "runs": results})
            print(f"[sweep {sweep.name}] interrupted in {name}; continue with "
                  f"cellae sweep --resume {sweep_dir}", file=sys.stderr, flush=True)
            raise
        except (CellaeError, RuntimeError, ValueError, OSError) as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"[sweep {sweep.name}] {name} failed: {message}", file=sys.stderr, flush=True)
            results[name] = {"status": "failed", "error": message,
                             "traceback": traceback.format_exc(limit=5)}
        results[name]["seconds"] = round(time.perf_counter() - started, 1)
        runs.write_json(sweep_dir / runs.SWEEP_STATUS_FILE,
                        {"name": sweep.name, "order": order, "runs": results})
    failed = [n for n, r in results.items() if r["status"] == "failed"]
    summary = ", ".join(f"{n}: {r['status']}" for n, r in results.items())
    print(f"[sweep {sweep.name}] {summary}", file=sys.stderr)
    if evaluate and any(REPEAT.match(name) for name in order):
        try:
            written = write_summary(sweep_dir, sweep.name)
            print(f"[sweep {sweep.name}] mean and spread over folds and seeds: {written}",
                  file=sys.stderr)
        except CellaeError as exc:
            print(f"[sweep {sweep.name}] no summary: {exc}", file=sys.stderr)
    if failed:
        raise CellaeError(
            f"{len(failed)} of {len(results)} runs failed ({', '.join(failed)}); see {sweep_dir / runs.SWEEP_STATUS_FILE}, "
            f"fix the cause and continue with --resume {sweep_dir}"
        )
    return sweep_dir
