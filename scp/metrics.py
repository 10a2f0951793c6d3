"""The node's Prometheus metrics, kept in a ``prometheus_client`` registry.

Served as ``GET /metrics`` by ``scp.web`` (on ``scp.metrics_port``):

- event counters of this process (``cacnode_instances_received_total``, ...),
  under the names the hand-written exposition of earlier versions used;
- ``cacnode_failures_total{kind=...}``: every failure an admin alerts on, by kind;
- latency histograms: instance store time (C-STORE handler), series complete
  -> report built, report built -> delivered;
- from the database at each scrape: series, jobs and deliveries per state,
  the instance total and the queue depth (:class:`DatabaseCollector`);
- the default process, platform and garbage-collector metrics.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scp.db import Database

# Event counters, by the name call sites pass to Counters.inc.  An unknown
# name is a programming error, so a typo cannot create a metric nobody watches.
EVENTS = {
    "instances_received_total": "Instances stored and recorded (C-STORE Success).",
    "store_refused_total": "C-STORE answered Out of Resources (too large, disk full, database full).",
    "store_failed_total": "C-STORE answered with an error (unreadable data set, UID mismatch).",
    "associations_total": "Associations accepted.",
    "associations_rejected_total": "Associations rejected (calling AE title, source address, limits).",
    "connections_refused_total": "Connections closed before association (too many pending).",
    "tls_handshakes_failed_total": "DICOM TLS handshakes that failed.",
    "series_completed_total": "Series completed and queued for scoring.",
    "jobs_orphaned_total": "Jobs taken up again after the worker died.",
    "deliveries_sent_total": "Reports delivered to a destination.",
    "delivery_attempts_failed_total": "Delivery attempts that failed (each retry counts).",
}

# Events that are failures, and their kind in cacnode_failures_total.
FAILURE_KINDS = {
    "store_refused_total": "store_refused",
    "store_failed_total": "store_failed",
    "tls_handshakes_failed_total": "tls_handshake",
    "jobs_orphaned_total": "worker_died",
    "delivery_attempts_failed_total": "delivery_attempt",
}

# Seconds; instance stores take milliseconds, scoring and delivery seconds to minutes.
STORE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PIPELINE_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class Counters:
    """The metrics of one node process, in their own registry.

    ``inc(name)`` keeps the call sites of the event counters short; the
    histograms and the failure counter are attributes.  Each instance has its
    own registry, so tests can make as many as they like.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._events = {
            name: Counter(f"cacnode_{name}", text, registry=self.registry) for name, text in EVENTS.items()
        }
        self.failures = Counter(
            "cacnode_failures_total", "Failures by kind (store, scoring job, delivery, worker).", ["kind"],
            registry=self.registry,
        )
        self.store_seconds = Histogram(
            "cacnode_instance_store_seconds", "Time the C-STORE handler takes to make an instance durable.",
            buckets=STORE_BUCKETS, registry=self.registry,
        )
        self.report_seconds = Histogram(
            "cacnode_series_to_report_seconds", "From series complete to report built (queue wait and scoring).",
            buckets=PIPELINE_BUCKETS, registry=self.registry,
        )
        self.delivery_seconds = Histogram(
            "cacnode_report_to_delivery_seconds", "From report built to delivered, per destination (with retries).",
            buckets=PIPELINE_BUCKETS, registry=self.registry,
        )

    def inc(self, name: str, by: int = 1) -> None:
        """Count an event of :data:`EVENTS`; a failure event also counts in ``cacnode_failures_total``."""
        self._events[name].inc(by)
        kind = FAILURE_KINDS.get(name)
        if kind is not None:
            self.failures.labels(kind=kind).inc(by)

    def fail(self, kind: str) -> None:
        """Count a failure that has no event counter of its own (a job or a delivery given up)."""
        self.failures.labels(kind=kind).inc()

    def snapshot(self) -> dict[str, int]:
        """The event counters' current values by name."""
        return {
            name: int(self.registry.get_sample_value(f"cacnode_{name}") or 0) for name in self._events
        }

    def add_process_metrics(self) -> None:
        """The default process, platform and GC metrics (only the node's own registry has them)."""
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class DatabaseCollector(Collector):
    """Gauges read from the database at each scrape: states, instance total, queue depth.

    The series, jobs and deliveries gauges keep the names and ``state`` label
    of earlier versions (``cacnode_series{state="kept"}``, ...).
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        counts = self.db.state_counts()
        for table in ("series", "jobs", "deliveries"):
            gauge = GaugeMetricFamily(f"cacnode_{table}", f"Number of {table} in each state.", labels=["state"])
            for state, n in sorted(counts[table].items()):
                gauge.add_metric([state], n)
            yield gauge
        instances = GaugeMetricFamily("cacnode_instances", "Instances recorded.", labels=["state"])
        instances.add_metric(["total"], counts["instances"]["total"])
        yield instances
        queue = GaugeMetricFamily(
            "cacnode_queue_depth", "Work waiting: jobs to score, deliveries to send.", labels=["queue"]
        )
        queue.add_metric(["jobs"], counts["jobs"].get("complete", 0))
        queue.add_metric(["deliveries"], counts["deliveries"].get("pending", 0))
        yield queue


class JobWatch:
    """Observes jobs the worker finished, from the listener process.

    The worker is another process with its own memory; the listener's
    registry learns of its jobs from the times they leave in the database
    (created = series complete, finished = report written).

    Parameters
    ----------
    since
        Jobs finished before this time are history, not observed.
    """

    def __init__(self, db: Database, counters: Counters, since: float) -> None:
        self.db = db
        self.counters = counters
        self._since = since

    def poll(self) -> None:
        for job in self.db.jobs_finished_since(self._since):
            if job["built"]:
                self.counters.report_seconds.observe(max(0.0, job["finished"] - job["created"]))
            elif job["state"] == "failed":
                self.counters.fail("job")
            self._since = max(self._since, job["finished"])
