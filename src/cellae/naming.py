"""How names of patients, classes and files sort for people: C9 before C33 before C103."""

from __future__ import annotations

import re

_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[str | int, ...]:
    """A sort key that compares runs of digits as numbers and everything else as text.

    Splitting on a captured group puts the digit runs at the odd positions, so two keys always
    hold text against text and numbers against numbers and never fail to compare.
    """
    parts = _DIGITS.split(text)
    return tuple(int(part) if i % 2 else part for i, part in enumerate(parts))


def printable(text: str) -> str:
    """``text`` with control and other unprintable characters written as escapes (``\\r``,
    ``\\x1b``), so that a file name printed on a terminal cannot forge a line or move the cursor."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def safe_name(text: str, limit: int = 60) -> str:
    """``text`` as a file-name part: letters, digits, ``-`` and ``_`` kept, runs of anything
    else one ``_`` (a column named "cell cycle / phase" is drawn into ``..._cell_cycle_phase``)."""
    kept = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else " " for c in text)
    return "_".join(kept.split())[:limit] or "column"


def displayable(text: str) -> str:
    """``text`` with what no font or UTF-8 file can hold made visible: a name read from bytes
    of another encoding (surrogates, from a Latin-1 file name) shown as ``\\xe9``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text
