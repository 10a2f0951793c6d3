"""The node's HTTP side (``scp.metrics_host``:``scp.metrics_port``): status page, health and metrics.

- ``GET /``: the status page (``scp.status_page``);
- ``GET /summary/<job>.png``: a job's summary image;
- ``POST /retry`` (form: ``series_uid``, ``token``): put the series' failed
  deliveries back in the queue, as ``cacnode retry`` does; 403 unless an
  admin token is configured and given;
- ``GET /health``: ``{"status": "ok", ...}`` while the listener, the worker
  and the delivery are alive, else 503;
- ``GET /metrics``: the Prometheus text exposition (``scp.metrics``).

Starlette on uvicorn, in a thread of the listener process.  The socket is
bound before the thread starts, so a port in use fails the start of the node.
"""

from __future__ import annotations

import functools
import hmac
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from pipeline.errors import CacnodeError
from scp.db import Database
from scp.metrics import Counters
from scp.status_page import ModelIdentity, PageSettings, page_rows, render_page, summary_png

log = logging.getLogger(__name__)

MAX_FORM_BYTES = 4096  # a retry form is a UID and a token


@dataclass(frozen=True)
class WebContext:
    """What the routes need, bound when the app is made."""

    db: Database
    counters: Counters
    health: Callable[[], tuple[bool, dict[str, object]]]
    model: Callable[[], ModelIdentity | None]
    admin_token: str | None  # None: the page is read-only
    show_phi: bool


def read_admin_token(path: Path | None) -> str | None:
    """The admin token from ``scp.admin_token_file`` (surrounding whitespace dropped), or None when unset."""
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise CacnodeError(f"scp.admin_token_file {path}: cannot read it ({exc.strerror or exc})") from None
    if not token:
        raise CacnodeError(f"scp.admin_token_file {path} is empty")
    return token


def make_app(ctx: WebContext) -> Starlette:
    """The Starlette application over ``ctx``."""
    settings = PageSettings(retry_enabled=ctx.admin_token is not None, show_phi=ctx.show_phi)

    def page(request: Request) -> Response:
        notice = request.query_params.get("notice", "")[:200]
        doc = page_rows(ctx.db, ctx.show_phi)
        return HTMLResponse(render_page(doc, ctx.model(), settings, notice))

    def summary(request: Request) -> Response:
        png = summary_png(ctx.db, request.path_params["job_id"])
        if png is None:
            return PlainTextResponse("no summary image for this job\n", status_code=404)
        return Response(png, media_type="image/png")

    async def retry(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            return PlainTextResponse("form too large\n", status_code=413)
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        given = form.get("token", "")
        if ctx.admin_token is None or not hmac.compare_digest(given.encode(), ctx.admin_token.encode()):
            log.warning("status page: retry refused from %s (no or wrong admin token)",
                        request.client.host if request.client else "?")
            return PlainTextResponse("retrying needs the admin token (scp.admin_token_file)\n", status_code=403)
        series_uid = form.get("series_uid") or None
        count = ctx.db.retry_failed(time.time(), series_uid)
        log.info("status page: %d failed deliver%s of series %s queued again",
                 count, "y" if count == 1 else "ies", series_uid or "(all)")
        notice = f"{count} failed deliver{'y' if count == 1 else 'ies'} queued again"
        return RedirectResponse(f"/?notice={quote(notice)}", status_code=303)

    def health(request: Request) -> Response:
        ok, details = ctx.health()
        return JSONResponse({"status": "ok" if ok else "down", **details}, status_code=200 if ok else 503)

    def metrics(request: Request) -> Response:
        return Response(ctx.counters.exposition(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[
        Route("/", page),
        Route("/summary/{job_id:int}.png", summary),
        Route("/retry", retry, methods=["POST"]),
        Route("/health", health),
        Route("/healthz", health),
        Route("/metrics", metrics),
    ])


class WebServer:
    """uvicorn serving the app from a daemon thread."""

    def __init__(self, host: str, port: int, app: Starlette) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError as exc:
            self._socket.close()
            raise CacnodeError(f"cannot serve the status page on {host}:{port}: {exc.strerror or exc}") from None
        self._socket.listen(64)
        # log_config=None: the app configures logging, not the server it embeds
        config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=functools.partial(self._server.run, sockets=[self._socket]), name="web", daemon=True
        )

    @property
    def port(self) -> int:
        return self._socket.getsockname()[1]

    def start(self) -> None:
        self._thread.start()
        host, port = self._socket.getsockname()[:2]
        log.info("status page on http://%s:%d/ (also /health and /metrics)", host, port)

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()
