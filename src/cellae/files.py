"""Writing files so that a reader never sees half of one: the run folder, splits and reports."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed into place.

    An interrupted write (Ctrl-C, a full disk, a killed job) leaves the previous file, or none,
    never a truncated one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _mode_for(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
