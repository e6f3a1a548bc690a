"""A sweep's record of its runs, ``sweep.json``: their order and how each ended (or which
SLURM job holds it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from cellae import runs
from cellae.sweep.spec import Sweep

# a run whose job has been submitted and not yet collected (in the status file, with job_id)
SUBMITTED = "submitted"


def is_finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a run that finished (trained and evaluated)."""
    return runs.is_run_dir(run_dir) and runs.read_status(run_dir) == "finished"


def write_record(sweep_dir: Path, status: dict[str, Any]) -> None:
    entries = status["runs"]
    runs.write_json(sweep_dir / runs.SWEEP_STATUS_FILE,
                    status | {"runs": {n: entries[n] for n in status["order"] if n in entries}})


def runs_in_jobs(sweep_dir: Path) -> list[str]:
    """The runs of a sweep folder that its status file has in SLURM jobs not yet collected."""
    entries = read_record(sweep_dir).get("runs", {})
    return [n for n, r in entries.items() if isinstance(r, dict) and r.get("status") == SUBMITTED]


def read_record(sweep_dir: Path) -> dict[str, Any]:
    path = sweep_dir / runs.SWEEP_STATUS_FILE
    return runs.read_json_object(path) if path.is_file() else {}


def ended(sweep: Sweep, sweep_dir: Path, status: dict[str, Any], name: str,
           result: dict[str, Any], job_ids: dict[str, str]) -> dict[str, Any]:
    """Record how a run ended in the status file, and say so if it failed."""
    if result["status"] == "kept" and name in job_ids:
        result["job_id"] = job_ids[name]  # a run its job finished keeps that job's id
    if result["status"] == "failed":
        print(f"[sweep {sweep.name}] {name} failed: {result['error']}", file=sys.stderr,
              flush=True)
    status["runs"][name] = result
    write_record(sweep_dir, status)
    return result


def where(sweep: Sweep, number: int, name: str) -> str:
    """How the sweep's messages name its run ``name``, the ``number``-th of the sweep."""
    return f"[sweep {sweep.name}] run {number} of {len(sweep.combinations)}: {name}"
