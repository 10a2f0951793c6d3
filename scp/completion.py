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

The policies hold no I/O and read no clock: callers pass ``now``.  That keeps
the tests free of sleeps.  The node uses :class:`SharedCompletion`, which
decides from the series as recorded in the database, so that instances of one
series may arrive through several receivers; :class:`CompletionPolicy` is the
same rule over one process's own arrivals.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


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


class SharedCompletion:
    """Completion decided from the shared database, so a series may arrive through several receivers.

    The in-memory :class:`CompletionPolicy` sees only the instances its own
    process received; with several receivers (any number, one AE title, a
    load balancer in front) each sees part of a series.  This policy decides
    from what every receiver recorded: each open series' instance count,
    expected count and time of the last instance (``scp.db.OpenSeries``).
    Receivers that find a series due at once both try to complete it; the
    database lets one of them (``Database.complete_series``).

    It also answers the C-STORE handler's questions (``seen``, ``in``) about
    the series this process is receiving now, for its log lines.  Like the
    in-memory policy it holds no I/O and reads no clock.

    Parameters
    ----------
    quiet_seconds
        A series is due when no receiver recorded an instance for this long.
        Receivers' clocks must agree to well within it (NTP).
    early_completion
        Also complete a series once exactly the expected number of instances
        (Images in Acquisition, every instance agreeing) is in.
    started
        When this process started: the quiet period of a series found open
        then restarts, since a sender cut off by a crash may still resend.
    """

    def __init__(self, quiet_seconds: float, early_completion: bool = True, started: float = 0.0) -> None:
        if quiet_seconds <= 0:
            raise ValueError(f"quiet_seconds must be > 0, got {quiet_seconds}")
        self.quiet_seconds = quiet_seconds
        self.early_completion = early_completion
        self.started = started
        self._recent: dict[str, float] = {}  # series this process received lately -> last instance
        self._held: dict[str, float] = {}  # series whose completion failed -> not before
        self._lock = threading.Lock()

    def seen(self, series_uid: str, now: float, *, new: bool = True, expected: int | None = None) -> None:
        """An instance arrived here (the count and the hint are in the database)."""
        with self._lock:
            self._recent[series_uid] = max(now, self._recent.get(series_uid, now))

    def __contains__(self, series_uid: str) -> bool:
        with self._lock:
            return series_uid in self._recent

    def restart(self, now: float) -> None:
        """Give every series open at ``now`` a full quiet period again (after a restart)."""
        self.started = now

    def hold(self, series_uid: str, now: float) -> None:
        """Completing the series failed (a full disk): wait a quiet period before trying again."""
        with self._lock:
            self._held[series_uid] = now + self.quiet_seconds

    def due(self, open_series: Iterable[OpenSeriesLike], now: float) -> list[str]:
        """The series among ``open_series`` that are complete at ``now``."""
        with self._lock:
            self._recent = {uid: t for uid, t in self._recent.items() if now - t < self.quiet_seconds}
            self._held = {uid: t for uid, t in self._held.items() if t > now}
            return [s.series_uid for s in open_series if s.series_uid not in self._held and self._is_due(s, now)]

    def _is_due(self, s: OpenSeriesLike, now: float) -> bool:
        if now - max(s.last_received, self.started) >= self.quiet_seconds:
            return True
        # ==, not >=: more instances than announced prove the hint wrong; the quiet period decides then
        return (
            self.early_completion
            and not s.expected_mixed
            and s.expected is not None
            and s.n_instances == s.expected
        )


class OpenSeriesLike(Protocol):
    """What :class:`SharedCompletion` reads of an open series (``scp.db.OpenSeries``)."""

    series_uid: str
    n_instances: int
    expected: int | None
    last_received: float
    expected_mixed: bool
