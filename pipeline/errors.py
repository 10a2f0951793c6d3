"""The error a user can act on: its message is one clear line naming the thing at fault."""

from __future__ import annotations


class CacnodeError(Exception):
    """Base of every error the CLI and the node report as one line (no traceback)."""


class SeriesError(CacnodeError):
    """A series that cannot be loaded or scored, e.g. ``series 1.2.3: slice 12 missing``."""


class SeveralSeriesError(SeriesError):
    """A folder that holds several series where one is to be scored; the message lists them.

    The loader cannot know how its caller lets the user choose, so the
    caller may name its own way with :meth:`choose_with`.
    """

    def __init__(self, where: str, count: int, choices: str, how: str = "choose one by Series Instance UID") -> None:
        self.where = where
        self.count = count
        self.choices = choices
        super().__init__(f"{where} holds {count} series; {how}: {choices}")

    def choose_with(self, option: str) -> SeveralSeriesError:
        """The same error, telling the user which option chooses the series (``--series-uid``)."""
        return SeveralSeriesError(self.where, self.count, self.choices, f"choose one with {option}")


class LabelsError(CacnodeError):
    """A label file (SEG or NIfTI) that does not fit the series."""


class ModelError(CacnodeError):
    """Model weights that cannot be loaded or used."""
