"""Health and Prometheus metrics over a small HTTP server (``scp.metrics_port``; 0 = off).

``GET /health`` answers ``{"status": "ok", ...}`` while the listener and the
worker are alive (503 otherwise); ``GET /metrics`` answers the Prometheus text
exposition format (version 0.0.4): event counters of this process and the
number of series, jobs and deliveries in each state from the database.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)


class Counters:
    """Thread-safe monotonically increasing event counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def inc(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + by

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


def prometheus_text(counters: dict[str, int], states: dict[str, dict[str, int]]) -> str:
    """Render counters and per-state gauges in the Prometheus text format."""
    lines = []
    for name in sorted(counters):
        lines.append(f"# TYPE cacnode_{name} counter")
        lines.append(f"cacnode_{name} {counters[name]}")
    for table in sorted(states):
        metric = f"cacnode_{table}"
        lines.append(f"# TYPE {metric} gauge")
        for state, count in sorted(states[table].items()):
            lines.append(f'{metric}{{state="{state}"}} {count}')
    return "\n".join(lines) + "\n"


class MetricsServer:
    """The HTTP endpoint, served from a daemon thread.

    Parameters
    ----------
    host, port
        Where to listen.
    metrics
        Returns the Prometheus text.
    health
        Returns ``(healthy, details)``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Callable[[], str],
        health: Callable[[], tuple[bool, dict[str, object]]],
    ) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path == "/metrics":
                    self._send(200, "text/plain; version=0.0.4", metrics())
                elif self.path in ("/health", "/healthz"):
                    ok, details = health()
                    self._send(200 if ok else 503, "application/json", json.dumps({"status": "ok" if ok else "down", **details}))
                else:
                    self._send(404, "text/plain", "not found\n")

            def _send(self, code: int, content_type: str, body: str) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:  # scraping every few seconds is not news
                log.debug("metrics: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics and /health", *self._server.server_address[:2])

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
