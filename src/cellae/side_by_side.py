"""Runs side by side on one machine, in processes of their own: ``cellae sweep --jobs N``.

A small run leaves most of a machine idle (the study's AE kept an H100's SMs busy about a fifth
of the time; PyTorch's CPU kernels gain little from more cores on batches of 64 px cells).
Several at once share it instead:

- each of the N processes gets its own block of this process's CPU cores, as its affinity, so that
  PyTorch, OpenMP and openTSNE size their thread pools to that block rather than all of them
  fighting over every core; on a machine with several GPUs each also gets its own share of
  them (``CUDA_VISIBLE_DEVICES``), so that ``train.devices: auto`` means that share. One GPU
  is shared by every process;
- its output goes to a log file of its own, and a line is printed as each task starts and ends;
- each share has one process (spawned, never forked from a process holding torch), which runs
  its tasks one after another as a sweep without ``--jobs`` runs all of them: torch and
  Lightning are imported once a share (6 s on a loaded 2-core machine), not once a task;
- Ctrl-C or SIGTERM here is passed on once, as SIGTERM, to every process still running (each
  runs in a process group of its own, so a terminal's Ctrl-C reaches this process alone):
  Lightning stops training at the next step, and the task reports itself interrupted. No new
  task starts. A second Ctrl-C kills what is still running.

Whether several at once are faster depends on the machine; ``benchmarks/run.py`` measures it.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

# a task that ends without saying how (a crash, a kill) is reported with its exit code
NO_REPORT = "its process ended without a report (exit code {code}); see its log {log}"


@dataclass(frozen=True)
class Task:
    """``function(*args)`` in one of the processes side by side; ``function`` is
    ``module:name`` (imported there) and returns a dict with at least ``status``, which reaches
    :func:`run_side_by_side`'s caller."""

    name: str
    function: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Slot:
    """What one of the processes running at once may use."""

    cores: tuple[int, ...] | None  # None where the system cannot set affinities
    gpus: str | None  # its CUDA_VISIBLE_DEVICES; None leaves the variable as it is


def machine_slots(jobs: int, gpu_count: int = 0) -> list[Slot]:
    """``jobs`` shares of this process's cores, in contiguous blocks, and of ``gpu_count`` GPUs.

    With more jobs than cores (or GPUs), jobs share them round the table.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be 1 or more, got {jobs}")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_setaffinity") else None
    visible = _visible_gpus(gpu_count) if gpu_count > 1 else None
    slots = []
    for job in range(jobs):
        share = None
        if cores is not None:
            share = tuple(_share(cores, job, jobs))
        gpus = ",".join(_share(visible, job, jobs)) if visible else None
        slots.append(Slot(cores=share, gpus=gpus))
    return slots


def _share(items: list[Any], job: int, jobs: int) -> list[Any]:
    if jobs >= len(items):
        return [items[job % len(items)]]
    size, extra = divmod(len(items), jobs)
    start = job * size + min(job, extra)
    return items[start:start + size + (job < extra)]


def _visible_gpus(count: int) -> list[str]:
    """The GPUs a process may see, as CUDA_VISIBLE_DEVICES names them (an index or a UUID)."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given:
        return [g.strip() for g in given.split(",") if g.strip()][:count]
    return [str(i) for i in range(count)]


@dataclass
class _Worker:
    """A process that runs one slot's tasks one after another."""

    process: Any
    connection: Connection
    task: Task | None = None
    log: Path | None = None


def run_side_by_side(tasks: list[Task], slots: list[Slot], log_dir: Path,
                     on_start: Callable[[Task, Path], None],
                     on_end: Callable[[Task, dict[str, Any]], None]) -> bool:
    """Run ``tasks`` in order, ``len(slots)`` at a time; return True if a signal stopped them.

    ``on_start`` is called as a task starts (with its log file) and ``on_end`` with the dict it
    returned, or ``{"status": "failed", "error": ...}`` when it raised or its process died
    (``"interrupted"`` when that happened after a stop). Tasks never started are left out.
    """
    context = multiprocessing.get_context("spawn")
    log_dir.mkdir(parents=True, exist_ok=True)
    waiting = list(tasks)
    workers: dict[int, _Worker] = {}
    stopping = False

    def busy() -> dict[Connection, int]:
        return {w.connection: slot for slot, w in workers.items() if w.task is not None}

    with _signals_as_keyboard_interrupt():
        try:
            while busy() or (waiting and not stopping):
                try:
                    for slot in range(len(slots)):
                        if not waiting or stopping:
                            break
                        if slot not in workers:
                            workers[slot] = _start_worker(context, slots[slot])
                        worker = workers[slot]
                        if worker.task is None:
                            task = waiting.pop(0)
                            worker.task, worker.log = task, log_dir / f"{task.name}.log"
                            worker.connection.send((task.function, task.args, worker.log))
                            on_start(task, worker.log)
                    for connection in wait(list(busy())):
                        slot = busy()[connection]
                        worker = workers[slot]
                        task, result = worker.task, _result(worker, stopping)
                        worker.task = None
                        if not worker.process.is_alive():
                            del workers[slot]  # a new process takes its next task
                        on_end(task, result)
                except KeyboardInterrupt:
                    if stopping:  # a second Ctrl-C: no more waiting
                        for worker in workers.values():
                            worker.process.kill()
                        continue
                    stopping = True
                    for worker in workers.values():
                        _signal(worker.process, signal.SIGTERM)
        finally:
            for worker in workers.values():
                with suppress(OSError):
                    worker.connection.send(None)  # no more tasks: the process ends
                worker.process.join(timeout=30)
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join()
    return stopping


def _start_worker(context: Any, slot: Slot) -> _Worker:
    ours, theirs = context.Pipe()
    process = context.Process(target=_work, args=(slot, theirs), name="cellae-side-by-side")
    process.start()
    theirs.close()  # the worker holds the only other end: its end is our EOF
    return _Worker(process, ours)


def _result(worker: _Worker, stopping: bool) -> dict[str, Any]:
    try:
        result = worker.connection.recv()
    except (EOFError, OSError):
        result = None
    if isinstance(result, dict) and "status" in result:
        return result
    worker.process.join()  # it died
    status = "interrupted" if stopping else "failed"
    return {"status": status, "error": NO_REPORT.format(code=worker.process.exitcode,
                                                        log=worker.log)}


def _signal(process: Any, signum: int) -> None:
    with suppress(ProcessLookupError, TypeError):  # ended meanwhile, or never started
        os.kill(process.pid, signum)


@contextmanager
def _signals_as_keyboard_interrupt() -> Iterator[None]:
    """SIGTERM here stops the tasks as Ctrl-C does (where this is the main thread, which alone
    may set handlers)."""
    try:
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _work(slot: Slot, connection: Connection) -> None:
    """A worker process: its share of the machine first, then its tasks, each with its output
    in its own log. The tasks import torch after the share is set, so that torch sizes its
    thread pool to the cores this process may use."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    if slot.cores is not None:
        os.sched_setaffinity(0, slot.cores)
        threads = str(len(slot.cores))
        for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[variable] = threads
    if slot.gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slot.gpus
    while True:
        try:
            order = connection.recv()
        except EOFError:  # the sweep's process is gone: no more tasks
            return
        if order is None:
            return
        function, args, log = order
        with _output_to(log):
            try:
                module, name = function.split(":")
                result = getattr(importlib.import_module(module), name)(*args)
            except BaseException as exc:  # noqa: BLE001 - whatever it was, the parent must hear
                traceback.print_exc()
                text = str(exc).strip()
                result = {"status": "failed",
                          "error": text.splitlines()[0] if text else type(exc).__name__,
                          "traceback": traceback.format_exc(limit=5)}
        connection.send(result)


@contextmanager
def _output_to(log: Path) -> Iterator[None]:
    """This process's standard output and error go to ``log`` while the block runs.

    The file descriptors are redirected, not ``sys.stdout``/``sys.stderr`` replaced: C
    libraries write to the descriptors, and a logging handler made in one task keeps the
    stream object it was given, which must stay open for the next task.
    """
    streams = [s for s in (sys.stdout, sys.stderr) if s is not None]
    for stream in streams:
        stream.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "ab") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        try:
            yield
        finally:
            for stream in streams:
                stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
