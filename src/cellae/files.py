"""Writing files so that a reader never sees half of one: the run folder, splits and reports."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import stat
import tempfile
import time
from pathlib import Path

# a temporary file names its process and machine, so that the next run can tell one left by a
# killed process (removed) from one still being written (left alone)
_HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
_TEMPORARY = re.compile(r"^\..+\.(\d+)-([0-9a-f]{8})\.[^.]+\.tmp$")
# another machine's temporary (a shared file system) is judged by its age alone
FOREIGN_TEMPORARY_SECONDS = 24 * 3600


def temporary_path(path: Path) -> Path:
    """A name beside ``path`` to write it under before renaming it into place."""
    return path.with_name(f".{path.name}.{os.getpid()}-{_HOST}.{secrets.token_hex(4)}.tmp")


def remove_stale_temporaries(folder: Path, depth: int = 2) -> int:
    """Delete the temporaries of :func:`write_atomic` and :func:`temporary_path` that a killed
    process left in ``folder`` (and its subfolders, ``depth`` levels); return how many."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            if depth > 0:
                removed += remove_stale_temporaries(Path(entry.path), depth - 1)
            continue
        match = _TEMPORARY.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        pid, host = int(match.group(1)), match.group(2)
        if host == _HOST:
            stale = not process_alive(pid)
        else:
            try:
                stale = time.time() - entry.stat(follow_symlinks=False).st_mtime > FOREIGN_TEMPORARY_SECONDS
            except OSError:
                continue
        if stale:
            try:
                os.unlink(entry.path)
                removed += 1
            except OSError:
                pass
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine is running (someone else's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OverflowError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed into place.

    An interrupted write (Ctrl-C, a full disk, a killed job) leaves the previous file, or none,
    never a truncated one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-{_HOST}.", suffix=".tmp",
                               dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the mode any other new file would get (or the
        # replaced file's own), so that atomic writes are not the only private files around
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            # a failed write names no file; the one being written is what the user needs
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def _mode_for(path: Path) -> int:
    """The permission bits of ``path`` if it exists, else those of a new file under the umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
