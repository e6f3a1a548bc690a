"""The one error type for user mistakes.

The CLI prints a ``CellaeError`` as a single line without a traceback; anything
else is a bug and keeps its traceback.
"""


class CellaeError(Exception):
    """A mistake the user can fix: a bad path, config, file or argument."""


def first_line(exc: BaseException) -> str:
    """An error's first line, for a one-line report; its type's name when it has no message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
