"""Check the files a command was asked to write before it starts the long work.

A report path that cannot be written must fail at once, not after a minute
of scoring, and must never create folders the user did not ask for.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pipeline.errors import CacnodeError


class OutputPathError(CacnodeError):
    """An output option names a file that cannot be written (the CLI exits 2, as for any bad argument)."""


def check_output_paths(paths: dict[str, Path | None]) -> None:
    """Check that each given path can be written, by the option that named it.

    Parameters
    ----------
    paths
        Option name (``"--sr"``) to the path given, or None when the option is absent.

    Raises
    ------
    OutputPathError
        A path is a folder, its folder is missing or not writable, or two options name the same file.
    """
    seen: dict[Path, str] = {}
    for option, path in paths.items():
        if path is None:
            continue
        _check_writable(option, path)
        key = path.resolve()
        if key in seen:
            raise OutputPathError(f"{seen[key]} and {option} name the same file {path}")
        seen[key] = option


def _check_writable(option: str, path: Path) -> None:
    if path.is_dir():
        raise OutputPathError(f"{option} {path}: is a folder; give a file name")
    folder = path.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise OutputPathError(f"{option} {path}: folder {folder} {what}")
    # Creating a file is the only sure test: os.access says yes to root on a
    # read-only file system or in /proc.  The probe is where the writer's own
    # temporary file will be, so it tests exactly what the write needs.
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise OutputPathError(f"{option} {path}: cannot create a file in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
