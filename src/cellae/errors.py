"""The one error type for user mistakes.

The CLI prints a ``CellaeError`` as a single line without a traceback; anything
else is a bug and keeps its traceback.
"""


class CellaeError(Exception):
    """A mistake the user can fix: a bad path, config, file or argument."""
