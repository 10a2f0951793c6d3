"""The error a user can act on: its message is one clear line naming the thing at fault."""


class CacnodeError(Exception):
    """Base of every error the CLI and the node report as one line (no traceback)."""


class SeriesError(CacnodeError):
    """A series that cannot be loaded or scored, e.g. ``series 1.2.3: slice 12 missing``."""


class LabelsError(CacnodeError):
    """A label file (SEG or NIfTI) that does not fit the series."""


class ModelError(CacnodeError):
    """Model weights that cannot be loaded or used."""
