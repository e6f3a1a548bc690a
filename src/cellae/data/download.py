"""Fetching the NIH malaria archive so that a slow or flaky connection costs time, not the download.

The archive is a few hundred megabytes, and long transfers break. The bytes therefore go to
``<name>.part`` and a broken connection carries on from where it stopped with an HTTP ``Range``
request, both within one call (``ATTEMPTS`` tries) and across calls (run the command again).
The file gets its real name only once its size and checksum are checked, so a file under that
name is always a whole one. The standard library speaks HTTP here: one download is not worth a
dependency.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from tqdm import tqdm

from cellae.errors import CellaeError

DEFAULT_URL = "https://data.lhncbc.nlm.nih.gov/public/Malaria/cell_images.zip"
ATTEMPTS = 5  # tries per call; each one resumes from what the previous ones saved

_CHUNK = 1 << 20
# the NIH zip is 337 MB; a download that grows beyond this is not a cell data set (or a server
# streaming without end) and is stopped, its part removed
MAX_DOWNLOAD_BYTES = 8 * 2**30
_TIMEOUT_S = 60  # a stalled connection is a broken one: better to reconnect than to wait forever
_PAUSE_S = 2.0  # times the attempt number, only after an attempt that saved nothing


class _Broken(Exception):
    """The transfer failed part-way; what arrived is on disk and the next attempt resumes."""


def download(
    url: str, to: Path, expected_size: int | None, sha256: str | None, progress: bool
) -> Path:
    """Download ``url`` into ``to/<file name>``, resuming and verifying; return the file's path.

    A file already there is checked rather than fetched again. ``expected_size`` and ``sha256``
    are checked when given; a download that fails them is removed. ``progress`` shows a bar on
    stderr.
    """
    name = _file_name(url)
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        # caught now rather than after hundreds of megabytes that can never match it
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise CellaeError(f"the sha256 checksum should be 64 hex digits, not {sha256!r}")
    final, part = to / name, to / f"{name}.part"
    if final.exists():
        problem = _problem(final, expected_size, sha256)
        if problem:
            raise CellaeError(f"{final} already exists but {problem}; delete it and run again")
        return final
    _make_folder(to)

    last = ""
    for attempt in range(1, ATTEMPTS + 1):
        before = _size(part)
        try:
            _fetch(url, part, first=attempt == 1, progress=progress)
            break
        except _Broken as error:
            last = str(error)
        # an attempt that saved something was cut off, and reconnecting at once is best; one that
        # saved nothing may be up against a network that needs a moment to come back
        if attempt < ATTEMPTS and _size(part) <= before:
            time.sleep(_PAUSE_S * attempt)
    else:
        saved = _size(part)
        kept = (
            f"the partial file {part} ({saved} bytes) is kept: run again to resume"
            if saved
            else "run again later"
        )
        raise CellaeError(f"downloading {url} failed {ATTEMPTS} times (last: {last}); {kept}")

    problem = _problem(part, expected_size, sha256)
    if problem:
        # a resumed file that fails is as likely wrong at its start as at its end: keep none of it
        part.unlink(missing_ok=True)
        raise CellaeError(f"the file downloaded from {url} {problem}; it was removed")
    os.replace(part, final)
    return final


def _fetch(url: str, part: Path, first: bool, progress: bool) -> None:
    """Bring ``part`` up to the whole file, or raise ``_Broken`` with what arrived saved."""
    offset = _size(part)
    host = urlsplit(url).hostname or url
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as error:
        with error:
            if error.code == 416 and offset:
                total = _content_range(error.headers.get("Content-Range"))[1]
                if total is None or total == offset:
                    return  # nothing after the bytes we have: the part is the whole file
                part.unlink()  # longer than the file on the server: not its beginning
                raise _Broken("the partial file was not the server's file; started again") from None
            if error.code >= 500:
                raise _Broken(f"HTTP {error.code} {error.reason}") from None
            raise CellaeError(f"HTTP {error.code} {error.reason} from {url}") from None
    except urllib.error.URLError as error:
        reason = getattr(error.reason, "strerror", None) or str(error.reason)
        if first:
            raise CellaeError(
                f"could not reach {host} ({reason}); there seems to be no network, "
                f"or the address is wrong"
            ) from None
        raise _Broken(f"could not reach {host} ({reason})") from None
    except (OSError, http.client.HTTPException) as error:
        raise _Broken(f"connecting to {host} failed ({error or type(error).__name__})") from None
    except ValueError as error:
        raise CellaeError(f"cannot download {url!r}: {error}") from None

    with response:
        if response.status == 206:
            start = _content_range(response.headers.get("Content-Range"))[0]
            if start != offset:
                part.unlink()
                raise _Broken(f"the server resumed at byte {start}, not {offset}; started again")
            mode = "ab"
        else:
            # a whole file, also in answer to a Range request the server ignored: start the part
            # over rather than append the file's beginning to it
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        total = None if length is None else offset + length
        if total is not None and total > MAX_DOWNLOAD_BYTES:
            raise CellaeError(f"{url} is {total / 2**30:.1f} GB; cellae downloads at most "
                              f"{MAX_DOWNLOAD_BYTES / 2**30:.0f} GB (fetch it another way)")
        received = 0
        try:
            with (
                part.open(mode) as handle,
                tqdm(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=part.name.removesuffix(".part"),
                    file=sys.stderr,
                    disable=not progress,
                    leave=False,  # a retry draws a new bar; the CLI reports the result
                ) as bar,
            ):
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (OSError, http.client.HTTPException) as error:
                        raise _Broken(
                            f"the connection broke after {offset + received} bytes "
                            f"({error or type(error).__name__})"
                        ) from None
                    if not chunk:
                        break
                    handle.write(chunk)
                    received += len(chunk)
                    if offset + received > MAX_DOWNLOAD_BYTES:
                        handle.close()
                        part.unlink(missing_ok=True)
                        raise CellaeError(f"{url} sent more than {MAX_DOWNLOAD_BYTES / 2**30:.0f}"
                                          " GB; stopped and removed what arrived")
                    bar.update(len(chunk))
        except OSError as error:
            raise CellaeError(f"cannot write {part}: {error.strerror or error}") from None
    # http.client reports a connection closed early as a plain end of data, so count the bytes
    if length is not None and received < length:
        raise _Broken(f"the connection closed after {offset + received} of {total} bytes")


def _file_name(url: str) -> str:
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    if name in ("", ".", ".."):
        raise CellaeError(f"{url} does not end in a file name to save the download as")
    return name


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CellaeError(f"cannot create the folder {folder}: {error.strerror or error}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CellaeError(f"cannot write to the folder {folder}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total size)`` from ``bytes 5-9/10`` or ``bytes */10``; None where absent."""
    found = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", header or "")
    if not found:
        return None, None
    start, total = found.groups()
    return (
        None if start is None else int(start),
        None if total == "*" else int(total),
    )


def _problem(path: Path, expected_size: int | None, sha256: str | None) -> str | None:
    """What is wrong with ``path`` as the expected file, said as the end of a sentence."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        return f"has {size} bytes, expected {expected_size}"
    if sha256 is not None:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)
        if digest.hexdigest() != sha256:
            return f"has sha256 {digest.hexdigest()}, expected {sha256}"
    return None
