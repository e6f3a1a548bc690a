"""Mean and spread of a sweep's repeated runs: each setting over patient folds and seeds.

A sweep with ``folds`` and ``seeds`` trains every setting once per (fold, seed) and names the
runs ``<setting>-f<fold>-s<seed>``. On a few dozen patients one split is too noisy to rank
settings, so the summary gives, per setting and per number of its evaluation: the mean over
all runs, the standard deviation over runs (folds and seeds together: the spread a user
should expect on new patients) and the standard deviation over seeds of the fold-averaged
number (how much the setting depends on its training seed alone). No best seed is picked.

Means of noisy numbers hide who wins where, so the summary also pairs runs: each learned
number against the baseline of the same run (the spot features on the same test cells), and
each setting against the sweep's first (the same fold and seed): on how many runs, and on how
many folds (seeds averaged), it is the higher, and the mean of the differences.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from cellae import runs
from cellae.columns import metric_value
from cellae.errors import CellaeError
from cellae.repeats import parse_repeat_name

SUMMARY_JSON = "summary.json"
SUMMARY_MARKDOWN = "summary.md"
# the headline numbers, in this order, when a run has them; the rest follow as they come
LEADING = ("probe.accuracy", "probe.auroc", "probe.knn_accuracy", "pca_baseline.accuracy",
           "pca_baseline.auroc", "spot_baseline.accuracy", "spot_baseline.auroc", "anomaly.auroc",
           "reconstruction.psnr_interior")


# a learned number and the baseline it is paired with within the same run
AGAINST_BASELINE = (("probe.auroc", "spot_baseline.auroc"),
                    ("probe.accuracy", "spot_baseline.accuracy"),
                    ("anomaly.auroc", "spot_baseline.auroc"))
# the numbers paired with the sweep's first setting, run by run
AGAINST_FIRST = ("probe.auroc", "probe.accuracy", "anomaly.auroc")


def _value(metrics: dict[str, Any], key: str) -> float | None:
    value = metric_value(metrics, key)
    return value if value is not None and math.isfinite(value) else None


def _run_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's run folders in the sweep's own order (its settings as the file lists them),
    then any others by name."""
    folders = sorted(p for p in sweep_dir.iterdir() if p.is_dir())
    try:
        order = runs.read_json_object(sweep_dir / runs.SWEEP_STATUS_FILE).get("order", [])
    except CellaeError:
        order = []
    rank = {name: i for i, name in enumerate(order) if isinstance(name, str)}
    return sorted(folders, key=lambda p: (rank.get(p.name, len(rank)), p.name))


def _runs(sweep_dir: Path) -> list[tuple[str, int, int, dict[str, Any]]]:
    found = []
    for run_dir in _run_dirs(sweep_dir):
        repeat = parse_repeat_name(run_dir.name)
        metrics_path = run_dir / runs.EVAL_DIR / runs.EVAL_METRICS_FILE
        if repeat is None or not runs.is_run_dir(run_dir) or not metrics_path.is_file():
            continue
        try:
            metrics = runs.read_json_object(metrics_path)
        except CellaeError:
            continue  # a damaged run is left out; the count n says so
        found.append((*repeat, metrics))
    return found


def summarise(sweep_dir: Path) -> dict[str, Any]:
    """Per setting: for each number, mean, sd over runs, sd over seeds, n runs, and its title."""
    found = _runs(sweep_dir)
    if not found:
        raise CellaeError(f"{sweep_dir} holds no evaluated run named <setting>-f<fold>-s<seed>")
    titles: dict[str, str] = {}
    digits: dict[str, int] = {}
    for *_, metrics in found:
        for column in metrics.get("columns", []):
            if isinstance(column, dict) and isinstance(column.get("key"), str):
                titles.setdefault(column["key"], str(column.get("title", column["key"])))
                given = column.get("digits", 3)
                digits.setdefault(column["key"], given if isinstance(given, int) and 0 <= given <= 6 else 3)
    keys = [k for k in LEADING if k in titles] + [k for k in titles if k not in LEADING]
    settings: dict[str, dict[str, Any]] = {}
    for setting in dict.fromkeys(s for s, *_ in found):
        members = [(fold, seed, m) for s, fold, seed, m in found if s == setting]
        numbers = {}
        for key in keys:
            by_seed: dict[int, list[float]] = defaultdict(list)
            values = []
            for _, seed, metrics in members:
                value = _value(metrics, key)
                if value is not None:
                    by_seed[seed].append(value)
                    values.append(value)
            if not values:
                continue
            seed_means = [float(np.mean(v)) for v in by_seed.values()]
            numbers[key] = {
                "mean": float(np.mean(values)),
                "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                "seed_sd": float(np.std(seed_means, ddof=1)) if len(seed_means) > 1 else None,
                "n": len(values),
            }
        settings[setting] = {
            "runs": len(members),
            "folds": sorted({fold for fold, _, _ in members}),
            "seeds": sorted({seed for _, seed, _ in members}),
            "numbers": numbers,
            "paired": _paired(setting, members, found),
        }
    return {"settings": settings, "titles": titles, "digits": digits, "keys": keys}


def _paired(setting: str, members: list[tuple[int, int, dict[str, Any]]],
            found: list[tuple[str, int, int, dict[str, Any]]]) -> dict[str, Any]:
    """The setting's runs paired with the spot features of the same run, and, unless it is the
    sweep's first setting, with the first setting's run of the same fold and seed."""
    pairs: dict[str, Any] = {}
    for key, baseline in AGAINST_BASELINE:
        rows = [(fold, _value(m, key), _value(m, baseline)) for fold, _, m in members]
        pairs[f"{key} vs {baseline}"] = _wins(rows)
    first = found[0][0]
    if setting != first:
        control = {(fold, seed): m for s, fold, seed, m in found if s == first}
        for key in AGAINST_FIRST:
            rows = [(fold, _value(m, key), _value(control[fold, seed], key))
                    for fold, seed, m in members if (fold, seed) in control]
            pairs[f"{key} vs {first}"] = _wins(rows)
    return {name: result for name, result in pairs.items() if result is not None}


def _wins(rows: list[tuple[int, float | None, float | None]]) -> dict[str, Any] | None:
    """Of (fold, value, other) rows, one a run: runs and folds (seeds averaged) where value is
    the higher, and the mean difference; None when no row has both numbers."""
    by_fold: dict[int, list[float]] = defaultdict(list)
    for fold, value, other in rows:
        if value is not None and other is not None:
            by_fold[fold].append(value - other)
    if not by_fold:
        return None
    differences = [d for fold_differences in by_fold.values() for d in fold_differences]
    return {
        "runs_above": sum(d > 0 for d in differences), "runs": len(differences),
        "folds_above": sum(float(np.mean(d)) > 0 for d in by_fold.values()),
        "folds": len(by_fold), "mean_difference": float(np.mean(differences)),
    }


def _cell(number: dict[str, Any] | None, digits: int, runs: int) -> str:
    if number is None:
        return "–"
    spread = f" ± {number['sd']:.{digits}f}" if number["sd"] is not None else ""
    # a number some runs lack (undefined there, or from before it was computed) says so
    partial = f" (n={number['n']})" if number["n"] < runs else ""
    return f"{number['mean']:.{digits}f}{spread}{partial}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def to_markdown(summary: dict[str, Any], title: str) -> str:
    keys, titles, settings = summary["keys"], summary["titles"], summary["settings"]
    lines = [
        f"# {title}: mean ± sd over folds and seeds",
        "",
        "Each cell: mean over every (fold, seed) run, ± the standard deviation over those runs. "
        "`seed sd` is the standard deviation over seeds of the fold-averaged probe accuracy.",
        "",
        "| setting | runs | " + " | ".join(titles[k] for k in keys) + " | seed sd (probe acc) |",
        "|---|---|" + "---|" * len(keys) + "---|",
    ]
    for name, setting in settings.items():
        numbers = setting["numbers"]
        seed_sd = numbers.get("probe.accuracy", {}).get("seed_sd")
        lines.append(
            f"| {name} | {setting['runs']} ({_count(len(setting['folds']), 'fold')} x "
            f"{_count(len(setting['seeds']), 'seed')}) | "
            + " | ".join(_cell(numbers.get(k), summary["digits"].get(k, 3), setting["runs"])
                         for k in keys)
            + f" | {'–' if seed_sd is None else f'{seed_sd:.3f}'} |"
        )
    paired = [(name, pair, result) for name, setting in settings.items()
              for pair, result in setting.get("paired", {}).items()]
    if paired:
        lines += [
            "",
            "Paired: on how many runs the first number is the higher of the two (same fold "
            "and seed), on how many folds (seeds averaged), and the mean difference.",
            "",
            "| setting | pair | runs above | folds above | mean difference |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {name} | {pair} | {r['runs_above']}/{r['runs']} | "
                  f"{r['folds_above']}/{r['folds']} | {r['mean_difference']:+.3f} |"
                  for name, pair, r in paired]
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path, title: str | None = None) -> Path:
    """``summary.json`` and ``summary.md`` in ``sweep_dir``; returns the Markdown's path."""
    summary = summarise(sweep_dir)
    runs.write_atomic(sweep_dir / SUMMARY_JSON, json.dumps(summary, indent=2) + "\n")
    path = sweep_dir / SUMMARY_MARKDOWN
    runs.write_atomic(path, to_markdown(summary, title or sweep_dir.name))
    return path
