"""The run folder: where everything a run produces lives, and the one way to each of its files.

A run folder is never overwritten. Its layout::

    config.yaml         the resolved config
    run.json            status, seed, data summary, timings, versions
    split.json          the file names on each side of the split
    metrics.csv         one row per epoch
    checkpoints/        last.ckpt and best.ckpt (lowest test loss)
    eval/               metrics.json, latents.npz, reconstructions.npz (test cells drawn)
                        (and eval/<source>/ for other sources)
    figures/            *.png

The names of these files are spelled here, and every other module reads and writes them
through the functions here (figures are named by what draws them): a run's status through
:func:`set_status`, its checkpoints through :func:`last_checkpoint` and
:func:`best_checkpoint`. The notebook API over a run folder is :mod:`cellae.api`. A sweep folder holds run folders and ``sweep.json``, whose
``order`` lists them in the sweep's order.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import re
import socket
import stat
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from cellae.errors import CellaeError, first_line
from cellae.files import remove_stale_temporaries, write_atomic
from cellae.typed_config import MAX_YAML_BYTES, load_yaml

CONFIG_FILE = "config.yaml"
RUN_INFO_FILE = "run.json"
SPLIT_FILE = "split.json"
METRICS_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best.ckpt"
EVAL_DIR = "eval"
FIGURES_DIR = "figures"
EVAL_METRICS_FILE = "metrics.json"
LATENTS_FILE = "latents.npz"
RECONSTRUCTIONS_FILE = "reconstructions.npz"
SWEEP_STATUS_FILE = "sweep.json"
# held (flock) by the one process that trains in a run folder; holds its pid for the message
LOCK_FILE = ".lock"


def write_json(path: Path, values: Any) -> None:
    write_atomic(path, json.dumps(values, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def new_run_dir(parent: Path, name: str, timestamped: bool = True) -> Path:
    """Create ``parent/<name>-<timestamp>``; a folder that exists already gets a numbered sibling.

    Sweeps name their runs without a timestamp (the sweep folder has one); such a name must be free.
    """
    if parent.exists() and not parent.is_dir():
        raise CellaeError(f"the output folder {parent} is a file; give a folder with --out")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CellaeError(f"cannot create the output folder {parent}: {exc.strerror}") from exc
    if not os.access(parent, os.W_OK):
        raise CellaeError(f"the output folder {parent} is not writable; give another with --out")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    safe_name = safe_folder_name(name)
    if not timestamped:
        try:
            (parent / safe_name).mkdir()
        except FileExistsError as exc:
            raise CellaeError(f"run folder {parent / safe_name} exists already") from exc
        return parent / safe_name
    for attempt in range(1, 1000):
        candidate = parent / (f"{safe_name}-{stamp}" + (f"-{attempt}" if attempt > 1 else ""))
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise CellaeError(f"could not find a free run folder name under {parent}")


def safe_folder_name(name: str) -> str:
    """``name`` with anything but letters, digits, '-', '_' and '.' replaced, never hidden or empty."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).lstrip(".")
    return cleaned or "run"


def source_name(source: str) -> str:
    """A folder-safe name for an evaluation source (``eval/<name>/``)."""
    # resolved, so that "..", "." or "x/../" name a real folder, never a step out of eval/
    path = Path(source).resolve() if source != "synthetic" else Path(source)
    name = path.stem if path.suffix == ".zip" else path.name
    if name in ("cell_images", ""):
        name = f"{path.parent.name}-{name}" if path.parent.name else name
    # no hidden or dot-only name, and never one of eval/'s own files
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).lstrip(".") or "source"
    return f"{name}_source" if name in (EVAL_METRICS_FILE, LATENTS_FILE, RECONSTRUCTIONS_FILE,
                                         FIGURES_DIR) else name


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / RUN_INFO_FILE).is_file()


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder for this process: a second one that would train in it is refused.

    An advisory ``flock`` on ``LOCK_FILE``: the kernel lets go of it when its process ends, so
    the lock of a killed run never needs clearing by hand, and the next process takes it over.
    """
    path = run_dir / LOCK_FILE
    try:
        # never through a link: a run folder from someone else could point .lock at your files
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        raise CellaeError(f"cannot take {path}: {exc.strerror} (a link or not a file?)") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise CellaeError(f"{path} is not a regular file; remove it to train in {run_dir}")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 160).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise CellaeError(f"{run_dir} is in use by process {holder}; wait for it to end "
                          f"(or stop it) before working in this folder") from None
    except OSError as exc:
        # a file system without flock (some cluster and FUSE mounts): train unguarded, as before
        os.close(fd)
        warnings.warn(f"cannot lock {path} ({exc.strerror}); nothing stops a second process "
                      f"from training in this run folder meanwhile", stacklevel=3)
        yield
        return
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
        # held now: what a killed process of this folder left half written can go
        remove_stale_temporaries(run_dir)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, harmless, for the next holder


def require_run_dir(path: Path) -> Path:
    if not path.is_dir():
        raise CellaeError(f"no such run folder: {path}")
    if not is_run_dir(path):
        raise CellaeError(
            f"{path} is not a cellae run folder (it has no {CONFIG_FILE} and {RUN_INFO_FILE})"
        )
    return path


def read_config_values(run_dir: Path) -> dict[str, Any]:
    """The run's config as plain YAML values: nothing built, no plug-in imported."""
    path = run_dir / CONFIG_FILE
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise CellaeError(f"{path} is {path.stat().st_size:,} bytes; a config is at most "
                              f"{MAX_YAML_BYTES:,}")
        values = load_yaml(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CellaeError(f"{run_dir / CONFIG_FILE} is unreadable: {first_line(exc)}") from exc
    if not isinstance(values, dict):
        raise CellaeError(f"{run_dir / CONFIG_FILE} does not hold a config")
    return values


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file of the run folder that must hold an object; a CellaeError if it does not.

    Run folders travel and get edited: an empty, cut-off or hand-mangled file is a one-line
    error naming it, not a traceback.
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CellaeError(f"{path} is missing") from exc
    except (OSError, ValueError) as exc:
        raise CellaeError(f"{path} is unreadable ({first_line(exc)})") from exc
    if not isinstance(document, dict):
        raise CellaeError(f"{path} holds a {type(document).__name__}, not a JSON object")
    return document


def read_run_info(run_dir: Path) -> dict[str, Any]:
    return read_json_object(run_dir / RUN_INFO_FILE)


def update_run_info(run_dir: Path, **values: Any) -> dict[str, Any]:
    path = run_dir / RUN_INFO_FILE
    info = read_json_object(path) if path.exists() else {}
    info.update(values)
    write_json(path, info)
    return info


def set_status(run_dir: Path, status: str, **values: Any) -> dict[str, Any]:
    """Record where a run stands in ``run.json`` (``running``, ``trained``, ``finished``,
    ``interrupted``, ``failed``), with any other values that go with it (an ``error``)."""
    return update_run_info(run_dir, status=status, **values)


def read_status(run_dir: Path) -> str | None:
    """The status ``run.json`` records, or None where it records none."""
    status = read_run_info(run_dir).get("status")
    return status if isinstance(status, str) else None


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    """The rows of ``metrics.csv`` with numbers parsed; empty cells become NaN."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CellaeError(f"{path} is unreadable ({exc})") from exc
    # a damaged file still gives what it can: cells past the header (key None) are dropped,
    # a cell that is not a number reads as NaN
    return [{k: _number(v) for k, v in r.items() if k is not None} for r in rows]


def _number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def append_metrics(run_dir: Path, row: dict[str, Any]) -> None:
    """Add one epoch's row to ``metrics.csv``; the first row's keys become the header.

    A later row is written under the file's own header (a resumed run of an older cellae may
    have other columns): a column the row lacks stays empty, and a column the file lacks is
    added to it, its earlier rows left empty there.
    """
    path = run_dir / METRICS_FILE
    rows: list[dict[str, Any]] = []
    columns = list(row)
    if path.exists():
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = list(reader.fieldnames or columns)
    missing = [key for key in row if key not in columns]
    if missing or not path.exists():
        _write_metrics(path, columns + missing, rows + [row])
        return
    with path.open("a", newline="", encoding="utf-8") as handle:
        csv.DictWriter(handle, fieldnames=columns, restval="", lineterminator="\n").writerow(row)


def _write_metrics(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


def truncate_metrics(run_dir: Path, completed_epochs: int) -> None:
    """Drop rows past ``completed_epochs``, written by an epoch whose checkpoint never landed."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            # a row whose epoch is not a number is damage, not an epoch: dropped with the rest
            rows = [r for r in reader if _number(r.get("epoch")) <= completed_epochs]
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CellaeError(f"{path} is unreadable ({exc})") from exc
    if not columns or "epoch" not in columns:
        path.unlink()  # no header to keep: the resumed epochs start the file afresh
        return
    _write_metrics(path, columns, [{k: v for k, v in r.items() if k is not None} for r in rows])


def write_split(run_dir: Path, files: Sequence[str] | np.ndarray, train_idx: np.ndarray,
                test_idx: np.ndarray) -> None:
    """Write the file names of each side, so a split can be checked and reused."""
    files = np.asarray(files).astype(str)
    document = {
        "n_train": int(len(train_idx)),
        "n_test": int(len(test_idx)),
        "train": files[np.asarray(train_idx)].tolist(),
        "test": files[np.asarray(test_idx)].tolist(),
    }
    write_atomic(run_dir / SPLIT_FILE, json.dumps(document, indent=1, ensure_ascii=False) + "\n")


def read_split(run_dir: Path) -> dict[str, list[str]]:
    """The file names of the train and test sides of a run."""
    document = read_json_object(run_dir / SPLIT_FILE)
    if not all(isinstance(document.get(side), list) for side in ("train", "test")):
        raise CellaeError(f"{run_dir / SPLIT_FILE} has no train and test lists")
    return {side: [str(name) for name in document[side]] for side in ("train", "test")}


def data_summary(labels: np.ndarray, patients: np.ndarray, class_names: Sequence[str],
                 train_idx: np.ndarray, test_idx: np.ndarray) -> dict[str, Any]:
    """Images, patients and images per class on each side of a split."""

    def side(idx: np.ndarray) -> dict[str, Any]:
        picked = np.asarray(labels)[idx]
        return {
            "images": int(len(idx)),
            "patients": int(len(set(np.asarray(patients)[idx].tolist()))),
            "per_class": {name: int((picked == i).sum()) for i, name in enumerate(class_names)},
        }

    return {"train": side(train_idx), "test": side(test_idx)}


def eval_dir(run_dir: Path, source: str | None = None) -> Path:
    """Where evaluation on the run's own data (``eval/``) or on another source writes."""
    return run_dir / EVAL_DIR if source is None else run_dir / EVAL_DIR / source_name(source)


def figures_dir(run_dir: Path, source: str | None = None) -> Path:
    """The run's figures, or those of an evaluation on another source (``eval/<name>/figures``)."""
    return run_dir / FIGURES_DIR if source is None else eval_dir(run_dir, source) / FIGURES_DIR


def write_evaluation(out_dir: Path, metrics: dict[str, Any], latents: dict[str, np.ndarray],
                     reconstructions: dict[str, np.ndarray]) -> None:
    """``metrics.json``, ``latents.npz`` and ``reconstructions.npz`` of one evaluation, each
    written atomically; the metrics last, so that they never describe files not yet there."""
    for name, arrays in ((LATENTS_FILE, latents), (RECONSTRUCTIONS_FILE, reconstructions)):
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        write_atomic(out_dir / name, buffer.getvalue())
    write_json(out_dir / EVAL_METRICS_FILE, metrics)


def read_evaluation(run_dir: Path) -> dict[str, Any]:
    """The run's ``eval/metrics.json``, or {} when it was not evaluated (or the file is damaged)."""
    path = run_dir / EVAL_DIR / EVAL_METRICS_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return values if isinstance(values, dict) else {}


def read_reconstructions(run_dir: Path) -> dict[str, np.ndarray]:
    """The test cells evaluation drew (``files``, ``labels``, uint8 ``originals`` and
    ``reconstructions``, N x C x H x W), or {} when absent or unreadable."""
    try:
        with np.load(run_dir / EVAL_DIR / RECONSTRUCTIONS_FILE, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError):
        return {}


def read_latents(run_dir: Path) -> dict[str, np.ndarray]:
    """The arrays of the run's ``eval/latents.npz`` (codes, labels, patients, files, side)."""
    with np.load(run_dir / EVAL_DIR / LATENTS_FILE, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def run_dirs_in(folder: Path) -> list[Path]:
    """The run folders of a sweep folder, in the sweep's order where it is known, then by name;
    a folder of sweeps gives each sweep's runs in turn."""
    order: list[str] = []
    try:
        status = json.loads((folder / SWEEP_STATUS_FILE).read_text(encoding="utf-8"))
        order = [str(name) for name in status.get("order", status.get("runs", []))]
    except (OSError, json.JSONDecodeError, AttributeError):
        order = []
    # hidden folders are runs set aside by a resumed sweep, not part of it
    children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    found = {p.name: p for p in children if is_run_dir(p)}
    ordered = [found.pop(name) for name in order if name in found]
    ordered += [found[name] for name in sorted(found)]
    for child in children:
        if not is_run_dir(child) and (child / SWEEP_STATUS_FILE).is_file():
            ordered += run_dirs_in(child)
    return ordered


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint without running any code it may carry (``weights_only``)."""
    try:
        with warnings.catch_warnings():
            # torch notes that cellae's checkpoints use pickle protocol 5; they load fine
            warnings.filterwarnings("ignore", message=r".*pickle protocol.*")
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CellaeError(f"checkpoint not found: {path}") from exc
    except Exception as exc:  # noqa: BLE001 - every unpickling failure means the same to the user
        text = str(exc).lower()
        if "weights_only" in text or "weights only" in text:
            raise CellaeError(
                f"refusing to load {path}: it holds objects other than tensors and plain data, "
                "which could run code; only load checkpoints written by cellae"
            ) from exc
        raise CellaeError(f"cannot read checkpoint {path}: damaged or incomplete ({first_line(exc)[:160]})") from exc
    if not isinstance(checkpoint, dict):
        raise CellaeError(f"{path} holds a {type(checkpoint).__name__}, not a cellae checkpoint")
    return checkpoint


def last_checkpoint(run_dir: Path) -> Path:
    """Where the run's checkpoint of its last completed epoch is (or will be) kept."""
    return run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT


def best_checkpoint(run_dir: Path) -> Path:
    """The checkpoint of the lowest test loss, or the last one where there is none."""
    for path in (run_dir / CHECKPOINT_DIR / BEST_CHECKPOINT, last_checkpoint(run_dir)):
        if path.is_file():
            return path
    raise CellaeError(f"run folder {run_dir} has no checkpoint in {CHECKPOINT_DIR}/")


def model_state_from_checkpoint(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The bare model's weights from a Lightning checkpoint of
    :class:`~cellae.training.module.CellaeModule`."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise CellaeError("checkpoint has no state_dict")
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
