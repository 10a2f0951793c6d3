"""When is a series complete?  An explicit policy with an injected clock.

DICOM has no "end of series" message: association release is at most a hint
(a sender may split a series over several associations, or send several
series in one).  Like Orthanc's "stable series", a series is due once no new
instance has arrived for ``quiet_seconds``.  When the header says how many
images to expect -- Images in Acquisition (0020,1002), PS3.3 C.7.3.1 -- the
series may complete as soon as that many distinct instances are in.  The
attribute counts the images of one *acquisition*, so the hint is trusted only
while every instance of the series gives the same value; a late instance that
proves it wrong simply re-opens the series (see ``scp.db``).

The policy holds no I/O and reads no clock: callers pass ``now``.  That keeps
the tests free of sleeps.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class _Progress:
    last_seen: float
    received: int = 0
    expected: int | None = None
    hint_consistent: bool = True


class CompletionPolicy:
    """Tracks open series and says which are due.

    Parameters
    ----------
    quiet_seconds
        A series is due when nothing new arrived for this long.
    early_completion
        Also complete a series as soon as the expected number of instances
        (from Images in Acquisition) is in.
    """

    def __init__(self, quiet_seconds: float, early_completion: bool = True) -> None:
        if quiet_seconds <= 0:
            raise ValueError(f"quiet_seconds must be > 0, got {quiet_seconds}")
        self.quiet_seconds = quiet_seconds
        self.early_completion = early_completion
        self._open: dict[str, _Progress] = {}
        # the C-STORE handlers (one thread per association) and the scheduler share it
        self._lock = threading.Lock()

    def seen(self, series_uid: str, now: float, *, new: bool = True, expected: int | None = None) -> None:
        """An instance of ``series_uid`` arrived at ``now``.

        Parameters
        ----------
        new
            False for an instance already received before (sent twice): it
            restarts the quiet period but does not count towards ``expected``.
        expected
            Images in Acquisition from this instance's header, if present.
        """
        with self._lock:
            p = self._open.get(series_uid)
            if p is None:
                p = self._open[series_uid] = _Progress(last_seen=now)
            p.last_seen = max(p.last_seen, now)
            if new:
                p.received += 1
            if expected is not None and expected > 0:
                if p.expected is not None and p.expected != expected:
                    p.hint_consistent = False
                p.expected = expected

    def restore(self, series_uid: str, now: float, received: int, expected: int | None) -> None:
        """Track a series found open in the database after a restart; its quiet period starts now."""
        with self._lock:
            self._open[series_uid] = _Progress(last_seen=now, received=received, expected=expected)

    def due(self, now: float) -> list[str]:
        """Series that are complete at ``now``; they stop being tracked (a later ``seen`` re-opens)."""
        with self._lock:
            ready = [uid for uid, p in self._open.items() if self._is_due(p, now)]
            for uid in ready:
                del self._open[uid]
            return ready

    def next_due(self) -> float | None:
        """The earliest time a tracked series becomes due by the quiet period (None when none is open)."""
        with self._lock:
            if not self._open:
                return None
            return min(p.last_seen for p in self._open.values()) + self.quiet_seconds

    def __contains__(self, series_uid: str) -> bool:
        with self._lock:
            return series_uid in self._open

    def _is_due(self, p: _Progress, now: float) -> bool:
        if now - p.last_seen >= self.quiet_seconds:
            return True
        return (
            self.early_completion
            and p.hint_consistent
            and p.expected is not None
            and p.received >= p.expected
        )
