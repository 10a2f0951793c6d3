"""The spool: received instances made durable on disk, exactly as they came.

Layout: ``<storage>/spool/<study uid>/<series uid>/<sop instance uid>.dcm``.
Only validated UIDs become path components, so nothing from a dataset can
escape the spool or name a file it should not.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

# PS3.5 9.1: a UID is components of digits separated by dots, at most 64
# characters; a component has no leading zero unless it is "0".
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
UID_MAX = 64


class SpoolError(OSError):
    """An instance that could not be made durable (disk full, I/O error, limit)."""


def is_valid_uid(value: object) -> bool:
    """True when ``value`` is a DICOM UID (digits and dots, <= 64 characters)."""
    return isinstance(value, str) and 0 < len(value) <= UID_MAX and _UID.fullmatch(value) is not None


@dataclass(frozen=True)
class InstanceKey:
    """Where an instance belongs: its study, series and SOP instance UIDs, validated."""

    study_uid: str
    series_uid: str
    sop_uid: str

    def __post_init__(self) -> None:
        for name in ("study_uid", "series_uid", "sop_uid"):
            value = getattr(self, name)
            if not is_valid_uid(value):
                raise ValueError(f"{name} {value!r} is not a valid UID")


class Spool:
    """Durable storage of received instances under ``root``.

    Parameters
    ----------
    root
        The spool folder (created if missing).
    min_free_bytes
        Refuse a write that would leave less free space than this.
    fsync_directory
        Also fsync the series folder after every rename (see :meth:`write`).
    """

    def __init__(self, root: Path, min_free_bytes: int = 0, fsync_directory: bool = False) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self.fsync_directory = fsync_directory
        self.tmp = root / ".incoming"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def series_dir(self, study_uid: str, series_uid: str) -> Path:
        """Folder of one series (UIDs validated)."""
        key = InstanceKey(study_uid, series_uid, "0")
        return self.root / key.study_uid / key.series_uid

    def path_for(self, key: InstanceKey) -> Path:
        return self.root / key.study_uid / key.series_uid / f"{key.sop_uid}.dcm"

    def write(self, key: InstanceKey, data: bytes) -> Path:
        """Write ``data`` durably to the instance's place and return the path.

        The bytes go to a temp file in the spool's own file system, which is
        renamed into place and then fsynced: a reader never sees a
        half-written file, and once this returns the file and its name
        survive a crash or power loss.  On a journalling file system with
        ordered data (ext4's default, XFS) the fsync of the renamed file
        commits the rename in the same journal transaction, so one flush per
        instance suffices; ``fsync_directory`` adds the POSIX-strict fsync of
        the folder (about twice the cost per instance).  An instance sent again
        takes the strict order (fsync, rename, fsync the folder), so the copy
        already acknowledged is never replaced by one not yet on disk.

        Raises
        ------
        SpoolError
            When the disk is (nearly) full or the write fails.
        """
        free = shutil.disk_usage(self.root).free
        if free - len(data) < self.min_free_bytes:
            raise SpoolError(f"only {free} bytes free in {self.root}, keeping {self.min_free_bytes} in reserve")
        final = self.path_for(key)
        folder = final.parent
        new_folder = not folder.is_dir()
        # A resent instance replaces an acknowledged copy: that copy must never be
        # swapped for a file whose data is not yet on disk, so take the strict order.
        replacing = not new_folder and final.exists()
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, suffix=".part")
        renamed = False
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                if new_folder:
                    folder.mkdir(parents=True, exist_ok=True)
                if replacing:
                    os.fsync(fh.fileno())
                    os.replace(tmp_name, final)
                else:
                    os.replace(tmp_name, final)
                    renamed = True
                    os.fsync(fh.fileno())
            if new_folder:  # new directory entries up the tree: make them durable once per series
                _fsync_dir(folder.parent)
                _fsync_dir(folder.parent.parent)
            if new_folder or replacing or self.fsync_directory:
                _fsync_dir(folder)
        except OSError as exc:
            # never acknowledged: remove it (under its final name only if this write put it there)
            try:
                os.unlink(final if renamed else tmp_name)
            except FileNotFoundError:
                pass
            raise SpoolError(f"cannot write {final.name}: {exc}") from exc
        return final

    def clear_incoming(self) -> int:
        """Remove temp files left by a crash mid-write (never acknowledged); return how many."""
        count = 0
        for part in self.tmp.glob("*.part"):
            part.unlink(missing_ok=True)
            count += 1
        return count

    def scan(self) -> list[tuple[InstanceKey, Path]]:
        """Every spooled instance, from the folder layout alone (used to recover the database)."""
        found = []
        for study in self.root.iterdir():
            if not study.is_dir() or not is_valid_uid(study.name):
                continue
            for series in study.iterdir():
                if not series.is_dir() or not is_valid_uid(series.name):
                    continue
                for f in series.glob("*.dcm"):
                    if is_valid_uid(f.stem):
                        found.append((InstanceKey(study.name, series.name, f.stem), f))
        return found


def _fsync_dir(folder: Path) -> None:
    """fsync a directory so a rename or new entry in it is durable (POSIX)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
