"""The spool: received instances made durable on disk, exactly as they came.

Layout: ``<storage>/spool/<study uid>/<series uid>/<sop instance uid>.dcm``.
Only validated UIDs become path components, so nothing from a dataset can
escape the spool or name a file it should not.  Two working folders sit
beside the studies: ``.incoming`` (our temp files, renamed into place) and
``.receiving`` (data sets as they stream in from the network, see
:meth:`Spool.adopt`).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
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
        # where the listener's network layer streams data sets (same file system, so they can be linked into place)
        self.receiving = root / ".receiving"
        self.receiving.mkdir(exist_ok=True)

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
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            os.unlink(tmp_name)
            raise SpoolError(f"cannot write {final.name}: {exc}") from exc
        return self._place(Path(tmp_name), final)

    def adopt(self, key: InstanceKey, received: Path) -> Path:
        """Make a file already written in :attr:`receiving` durable at the instance's place; return the path.

        The file is hard-linked (not copied) into ``.incoming`` and placed as
        :meth:`write` places its own; ``received`` itself is left for its
        writer to remove.

        Raises
        ------
        SpoolError
            When the disk is (nearly) full or the file cannot be placed.
        """
        free = shutil.disk_usage(self.root).free
        if free < self.min_free_bytes:
            raise SpoolError(f"only {free} bytes free in {self.root}, keeping {self.min_free_bytes} in reserve")
        final = self.path_for(key)
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            os.link(received, tmp)
        except OSError as exc:
            raise SpoolError(f"cannot take {final.name} from {received}: {exc}") from exc
        return self._place(tmp, final)

    def _place(self, tmp: Path, final: Path) -> Path:
        """Rename the complete file ``tmp`` to ``final`` and make both durable (see :meth:`write`)."""
        folder = final.parent
        new_folder = not folder.is_dir()
        # A resent instance replaces an acknowledged copy: that copy must never be
        # swapped for a file whose data is not yet on disk, so take the strict order.
        replacing = not new_folder and final.exists()
        renamed = False
        try:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                if new_folder:
                    folder.mkdir(parents=True, exist_ok=True)
                if replacing:
                    os.fsync(fd)
                    os.replace(tmp, final)
                else:
                    os.replace(tmp, final)
                    renamed = True
                    os.fsync(fd)
            finally:
                os.close(fd)
            if new_folder:  # new directory entries up the tree: make them durable once per series
                _fsync_dir(folder.parent)
                _fsync_dir(folder.parent.parent)
            if new_folder or replacing or self.fsync_directory:
                _fsync_dir(folder)
        except OSError as exc:
            # never acknowledged: remove it (under its final name only if this write put it there)
            try:
                os.unlink(final if renamed else tmp)
            except FileNotFoundError:
                pass
            raise SpoolError(f"cannot write {final.name}: {exc}") from exc
        return final

    def clear_incoming(self) -> int:
        """Remove temp files left by a crash mid-write or mid-transfer (never acknowledged); return how many."""
        count = 0
        for part in [*self.tmp.glob("*.part"), *self.receiving.iterdir()]:
            part.unlink(missing_ok=True)
            count += 1
        return count

    def sweep_receiving(self, idle_since: float) -> int:
        """Remove partial files not written to since ``idle_since`` (epoch seconds); return how many.

        A data set streams into :attr:`receiving` while its association lasts,
        and an instance is written to a ``.part`` file of :attr:`tmp` before
        its rename; one whose transfer or process died stays behind, never
        acknowledged.  Unlike :meth:`clear_incoming`, this spares the files
        other receivers sharing the spool are writing now.
        """
        count = 0
        for path in [*self.tmp.glob("*.part"), *self.receiving.iterdir()]:
            try:
                if path.stat().st_mtime < idle_since:
                    path.unlink()
                    count += 1
            except FileNotFoundError:
                pass  # finished and removed meanwhile
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
