"""The outer app: the service's lifetime, the realtime socket, the file links, and the doors.

A door is an ASGI app mounted under a path prefix; the hosted protocol's is mounted at ``/v1``
(beside the socket, which its clients expect at ``/v1`` itself), BFL's API shape at ``/bfl``,
OpenAI's images API at ``/openai``.
Adding a door is passing one more ``prefix -> app`` pair to :func:`create_app`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from fluxhost.doors.bfl import create_bfl_app
from fluxhost.doors.openai import create_openai_app
from fluxhost.http.offload import Offload
from fluxhost.metrics import HttpMetrics
from fluxhost.service import Service
from fluxhost.storage.base import content_type
from fluxhost.wiro import messages
from fluxhost.wiro.door import create_wiro_app, fail
from fluxhost.wiro.socket import SocketHub

# How uvicorn serves the app. Socket frames are small JSON fanned out to many subscribers:
# per-message compression would be done once per subscriber for little gain.
CONNECTIONS_CLOSE_SECONDS = 10
"""On SIGTERM, how long open connections have to end before they are closed: a client that stopped
reading holds its connection (the server's bytes to it unsent) for as long as it likes, and the
service's own shutdown (its tasks' grace, their release) waited on it."""
UVICORN_OPTIONS = {"ws": "websockets-sansio", "ws_per_message_deflate": False, "log_level": "warning",
                   "timeout_graceful_shutdown": CONNECTIONS_CLOSE_SECONDS}

# Output files never change once a URL to them exists.
FILE_HEADERS = {"Cache-Control": "public, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff"}
# The playground: plain ES modules and CSS shipped in the package, served as they are.
WEB_DIR = Path(__file__).parent / "web"


def _stat_of_file(path: Path) -> os.stat_result | None:
    """The file's stat, or None where there is no file (a folder of that name is none)."""
    try:
        found = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return found if stat.S_ISREG(found.st_mode) else None


def create_app(service: Service, doors: Mapping[str, ASGIApp] | None = None, *,
               manage_service: bool = True) -> Starlette:
    """The ASGI app over ``service``: the hosted protocol at ``/v1`` plus ``doors`` (prefix ->
    app). With ``manage_service`` the app starts and stops the service with itself. A door's
    blocking work belongs off the loop (:class:`~fluxhost.http.offload.Offload`)."""

    offload = Offload(service.settings.resolved_api_threads)
    hub = SocketHub(service.operations, service.events, offload, service.metrics.socket_connections)

    @asynccontextmanager
    async def lifespan(_app: Starlette):
        if manage_service:
            service.start()
        hub.start()
        try:
            yield
        finally:
            hub.stop()
            offload.close()
            if manage_service:
                service.stop()

    async def serve_file(request: Request) -> Response:
        """A stored file: streamed from the disk (a range of it where asked, its size alone for a
        HEAD), or read whole from a store elsewhere."""
        folder, name = request.path_params["folder"], request.path_params["name"]
        path = service.files.local_path(folder, name)
        if path is not None:
            found = await offload.run_waiting(_stat_of_file, path)
            if found is None:
                raise HTTPException(404)
            return FileResponse(path, stat_result=found, media_type=content_type(name), headers=FILE_HEADERS)
        data = await offload.run_waiting(service.files.read, folder, name)
        if data is None:
            raise HTTPException(404)
        return Response(data, media_type=content_type(name), headers=FILE_HEADERS)

    async def alive(_request: Request) -> JSONResponse:
        """Liveness for load balancers and container health checks: the process answers."""
        return JSONResponse({"status": "ok"})

    async def ready(_request: Request) -> JSONResponse:
        """Readiness: the database answers and this process's workers can take tasks (503 with
        the reasons otherwise), for load balancers and orchestrators to route by."""
        reasons = await offload.run_waiting(service.not_ready)
        if reasons:
            return JSONResponse({"status": "not ready", "reasons": reasons}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def playground(_request: Request) -> FileResponse:
        return FileResponse(WEB_DIR / "index.html")

    async def metrics(_request: Request) -> Response:
        """Prometheus metrics (counts and timings only: no prompt, key or URL is ever a label)."""
        return Response(await offload.run_waiting(service.metrics_exposition), media_type=CONTENT_TYPE_LATEST)

    async def not_found(request: Request, error: HTTPException) -> JSONResponse:
        if error.status_code == 404:
            return fail(0, messages.bad_url(request.url.path), 404)
        return fail(0, str(error.detail), error.status_code)

    routes: list[BaseRoute] = [
        WebSocketRoute("/v1", hub.serve),
        Mount("/v1", create_wiro_app(service.operations, offload, service.settings, service.moderator.describe())),
        Mount("/bfl", create_bfl_app(service.operations, offload, service.settings)),
        Mount("/openai", create_openai_app(service.operations, service.events, offload, service.settings)),
        Route("/files/{folder}/{name}", serve_file, methods=["GET", "HEAD"]),
        Route("/healthz", alive, methods=["GET", "HEAD"]),
        Route("/readyz", ready, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/", playground, methods=["GET", "HEAD"]),
        Mount("/web", StaticFiles(directory=WEB_DIR)),
        *(Mount(prefix, door) for prefix, door in (doors or {}).items()),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found},
                    middleware=[Middleware(HttpMetrics, metrics=service.metrics)])
    app.router.redirect_slashes = False  # a 307 has no body in any door's shape: an unknown path is a 404
    app.state.service = service
    app.state.socket_hub = hub
    return app
