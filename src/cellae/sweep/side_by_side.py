"""Runs side by side on one machine, in processes of their own: ``cellae sweep --jobs N``.

A small run leaves most of a machine idle (the study's AE kept an H100's SMs busy about a fifth
of the time; PyTorch's CPU kernels gain little from more cores on batches of 64 px cells).
Several at once share it instead:

- each of the N processes gets its own block of this process's CPU cores, as its affinity, so
  that PyTorch, OpenMP and openTSNE size their thread pools to that block rather than all of
  them fighting over every core (where affinities cannot be set, its thread count is its share
  of the cores); on a machine with several GPUs each also gets one of them
  (``CUDA_VISIBLE_DEVICES``), never several, since a run on several devices would start its
  other ranks by running the whole command again. One GPU is shared by every process;
- its output goes to a log file of its own, and a line is printed as each task starts and ends;
- each share has one process (spawned, never forked from a process holding torch), which runs
  its tasks one after another as a sweep without ``--jobs`` runs all of them: torch and
  Lightning are imported once a share (6 s on a loaded 2-core machine), not once a task;
- Ctrl-C, SIGTERM or SIGHUP here (each unless ignored, as nohup ignores SIGHUP) is passed on
  once, as SIGTERM, to every process still running (each runs in a process group of its own,
  so a terminal's Ctrl-C reaches this process alone). A process turns SIGTERM during a task
  into KeyboardInterrupt, which Lightning handles as Ctrl-C (training stops, the last epoch's
  checkpoint stays); outside training the task stops where it is. Either way it reports
  itself interrupted. No new task starts. A second Ctrl-C or SIGTERM kills what is still
  running. Should this process die without that (SIGKILL), its processes get SIGTERM from the
  kernel (Linux).

The signal handlers here only count signals and wake the loop: the bookkeeping between the
processes is never cut in the middle.

Whether several at once are faster depends on the machine; ``benchmarks/run.py`` measures it.
"""

from __future__ import annotations

import ctypes
import importlib
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from cellae.errors import first_line
from cellae.machine import can_pin_cores, usable_cores

# a task that ends without saying how (a crash, a kill) is reported with its exit code
NO_REPORT = "its process ended without a report (exit code {code}); see its log {log}"
# prctl's option for the signal a process gets when its parent dies (linux/prctl.h)
PR_SET_PDEATHSIG = 1


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
    threads: int  # the size of its thread pools
    gpus: str | None  # its CUDA_VISIBLE_DEVICES; None leaves the variable as it is


def machine_slots(jobs: int, gpu_count: int = 0) -> list[Slot]:
    """``jobs`` shares of this process's cores, in contiguous blocks, and one of ``gpu_count``
    GPUs each where there are several.

    With more jobs than cores (or GPUs), jobs share them round the table; with fewer jobs than
    GPUs, some GPUs stay idle.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be 1 or more, got {jobs}")
    settable = can_pin_cores()
    cores = usable_cores()
    visible = _visible_gpus(gpu_count) if gpu_count > 1 else []
    slots = []
    for job in range(jobs):
        share = tuple(_share(cores, job, jobs))
        gpus = visible[job % len(visible)] if visible else None
        slots.append(Slot(cores=share if settable else None, threads=len(share), gpus=gpus))
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


class _Signals:
    """Ctrl-C, SIGTERM and SIGHUP, counted rather than raised, with a socket that wakes
    :func:`multiprocessing.connection.wait` when one arrives. Only the main thread may set
    handlers; elsewhere nothing is caught (``count`` stays 0)."""

    CAUGHT = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP")
                   if hasattr(signal, name))

    def __init__(self) -> None:
        self.count = 0
        self.last: int | None = None  # the last signal's number
        self.wakeup, self._writer = socket.socketpair()
        for end in (self.wakeup, self._writer):
            end.setblocking(False)
        self._previous: dict[int, Any] = {}
        self._previous_fd: int | None = None

    def _count(self, signum: int, frame: Any) -> None:
        self.count += 1
        self.last = signum

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(),
                                                     warn_on_full_buffer=False)
            for signum in self.CAUGHT:
                if signal.getsignal(signum) is signal.SIG_IGN:
                    continue  # ignored on purpose (nohup's SIGHUP, a background job's SIGINT)
                self._previous[signum] = signal.signal(signum, self._count)
        return self

    def drain(self) -> None:
        with suppress(BlockingIOError):
            while self.wakeup.recv(512):
                pass

    def __exit__(self, *exc: object) -> None:
        try:
            for signum, handler in self._previous.items():
                if handler is not None:  # None: a handler set from C, which cannot be put back
                    signal.signal(signum, handler)
        finally:
            if self._previous_fd is not None:
                signal.set_wakeup_fd(self._previous_fd)
            self.wakeup.close()
            self._writer.close()


def run_side_by_side(tasks: list[Task], slots: list[Slot], log_dir: Path,
                     on_start: Callable[[Task, Path], None],
                     on_end: Callable[[Task, dict[str, Any]], None]) -> bool:
    """Run ``tasks`` in order, ``len(slots)`` at a time; return True if they were stopped.

    ``on_start`` is called as a task starts (with its log file) and ``on_end`` with the dict it
    returned, or ``{"status": "failed", "error": ...}`` when it raised or its process died
    (``"interrupted"`` when that happened after a stop). Tasks never started are left out.
    A signal here, or a task that reports itself interrupted (its own process was signalled),
    stops them all, as Ctrl-C stops a sweep that runs one run after another.
    """
    context = multiprocessing.get_context("spawn")
    log_dir.mkdir(parents=True, exist_ok=True)
    waiting = list(tasks)
    workers: dict[int, _Worker] = {}
    stopping = killed = False
    signals_at_stop = 0

    def busy() -> dict[Connection, int]:
        return {w.connection: slot for slot, w in workers.items() if w.task is not None}

    def stop() -> None:
        nonlocal stopping, signals_at_stop
        stopping, signals_at_stop = True, signals.count
        for worker in workers.values():
            _signal(worker.process, signal.SIGTERM)

    with _Signals() as signals:
        try:
            while True:
                if signals.count and not stopping:
                    stop()
                # a second Ctrl-C or SIGTERM after the stop kills (a SIGHUP alone never does)
                if (stopping and signals.count > signals_at_stop and not killed
                        and signals.last in (signal.SIGINT, signal.SIGTERM)):
                    killed = True
                    for worker in workers.values():
                        _kill_group(worker.process)
                for slot in range(len(slots)):
                    if not waiting or stopping:
                        break
                    worker = workers.get(slot)
                    if worker is not None and worker.task is None and not worker.process.is_alive():
                        worker = None  # died while idle: a new process takes its next task
                    if worker is None:
                        worker = workers[slot] = _start_worker(context, slots[slot])
                    if worker.task is not None:
                        continue
                    task = waiting[0]
                    worker.task, worker.log = task, log_dir / f"{task.name}.log"
                    on_start(task, worker.log)
                    waiting.pop(0)
                    with suppress(OSError):  # its process is gone: _result says so
                        worker.connection.send((task.function, task.args, worker.log))
                if not busy():
                    break
                ready = wait([*busy(), signals.wakeup])
                signals.drain()
                for connection in ready:
                    if connection is signals.wakeup:
                        continue
                    slot = busy()[connection]
                    worker = workers[slot]
                    task, result = worker.task, _result(worker, stopping)
                    worker.task = None
                    if not worker.process.is_alive():
                        del workers[slot]
                    on_end(task, result)
                    if result["status"] == "interrupted" and not stopping:
                        stop()
        finally:
            _end_workers(workers, abruptly=not stopping and any(busy()))
        # a signal after the last look at the count still stops the caller
        return stopping or signals.count > 0


def _end_workers(workers: dict[int, _Worker], abruptly: bool) -> None:
    """Tell every worker there is no more to do; after an error here, stop their tasks first.
    Whatever still runs a minute later is killed with its process group."""
    for worker in workers.values():
        if abruptly and worker.task is not None:
            _signal(worker.process, signal.SIGTERM)
        with suppress(OSError):
            worker.connection.send(None)  # no more tasks: the process ends
    deadline = time.monotonic() + 60
    for worker in workers.values():
        worker.process.join(timeout=max(0.0, deadline - time.monotonic()))
        if worker.process.is_alive():
            _kill_group(worker.process)
            worker.process.join()


def _start_worker(context: Any, slot: Slot) -> _Worker:
    ours, theirs = context.Pipe()
    process = context.Process(target=_work, args=(slot, theirs, os.getpid()),
                              name="cellae-side-by-side")
    process.start()
    theirs.close()  # the worker holds the only other end: its end is our EOF
    return _Worker(process, ours)


def _result(worker: _Worker, stopping: bool) -> dict[str, Any]:
    try:
        result = worker.connection.recv()
    except Exception:  # noqa: BLE001 - EOF when it died; anything else it sent is no report
        result = None
    if isinstance(result, dict) and "status" in result:
        return result
    worker.process.join(timeout=10)  # it died, or left the pipe in a state we cannot read
    if worker.process.is_alive():
        _kill_group(worker.process)
        worker.process.join()
    status = "interrupted" if stopping else "failed"
    return {"status": status, "error": NO_REPORT.format(code=worker.process.exitcode,
                                                        log=worker.log)}


def _signal(process: Any, signum: int) -> None:
    if process.exitcode is not None:
        return  # reaped: its pid may be another process's by now
    with suppress(ProcessLookupError, PermissionError, TypeError):  # ended meanwhile
        os.kill(process.pid, signum)


def _kill_group(process: Any) -> None:
    """Kill a worker and whatever it started (Lightning's processes for other devices)."""
    if process.exitcode is not None:
        return
    with suppress(ProcessLookupError, PermissionError, TypeError, AttributeError):
        os.killpg(process.pid, signal.SIGKILL)
    with suppress(OSError):
        process.kill()


# whether this worker is inside a task: SIGTERM interrupts a task, never the worker's own
# passing of results, which would lose one
_in_task = False
# a SIGTERM that came between tasks: the next task stops at its start
_stop_pending = False


def _interrupt_the_task(signum: int, frame: Any) -> None:
    global _stop_pending
    if _in_task:
        raise KeyboardInterrupt
    _stop_pending = True


def _work(slot: Slot, connection: Connection, parent: int) -> None:
    """A worker process: its share of the machine first, then its tasks, each with its output
    in its own log. The tasks import torch after the share is set, so that torch sizes its
    thread pool to the cores this process may use."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    # SIGTERM as Ctrl-C: Lightning calls this handler after its own and stops training
    # gracefully; elsewhere the task stops where it is and reports itself interrupted
    signal.signal(signal.SIGTERM, _interrupt_the_task)
    if sys.platform.startswith("linux"):
        with suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        return  # the sweep's process died before this one could ask to hear of it
    if slot.cores is not None:
        os.sched_setaffinity(0, slot.cores)
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(slot.threads)
    if slot.gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slot.gpus
    while True:
        try:
            order = connection.recv()
        except (EOFError, OSError, KeyboardInterrupt):  # the sweep's process is gone or stopping
            return
        if order is None:
            return
        try:
            connection.send(_run_task(*order))
        except (OSError, KeyboardInterrupt):
            return


def _run_task(function: str, args: tuple[Any, ...], log: Path) -> dict[str, Any]:
    """One task, its output in ``log``; what it returned, or how it ended."""
    try:
        handle = open(log, "ab")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        return {"status": "failed", "error": f"cannot write its log {log}: {exc}"}
    global _in_task
    with handle, _output_to(handle):
        try:
            module, name = function.split(":")
            _in_task = True
            try:
                if _stop_pending:
                    raise KeyboardInterrupt
                return getattr(importlib.import_module(module), name)(*args)
            finally:
                _in_task = False
        except KeyboardInterrupt:
            print("stopped by a signal", file=sys.stderr)
            return {"status": "interrupted", "error": "stopped by a signal"}
        except BaseException as exc:  # noqa: BLE001 - whatever it was, the parent must hear
            traceback.print_exc()
            return {"status": "failed", "error": first_line(exc),
                    "traceback": traceback.format_exc(limit=5)}


@contextmanager
def _output_to(handle: Any) -> Iterator[None]:
    """This process's standard output and error go to the file ``handle`` while the block runs.

    The file descriptors are redirected, not ``sys.stdout``/``sys.stderr`` replaced: C
    libraries write to the descriptors, and a logging handler made in one task keeps the
    stream object it was given, which must stay open for the next task.
    """
    streams = [s for s in (sys.stdout, sys.stderr) if s is not None]
    for stream in streams:
        stream.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(handle.fileno(), 1)
    os.dup2(handle.fileno(), 2)
    try:
        yield
    finally:
        for stream in streams:
            with suppress(OSError, ValueError):
                stream.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
