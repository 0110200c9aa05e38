"""Prometheus metrics: what an API process counts, what a worker counts, and the task counts the
database holds.

Each service owns its registries (never prometheus-client's global one), so several services can
live in one process, as the tests' do. An API process serves ``/metrics``: its own metrics, the
database's counts, and the worker's: the embedded child worker sends its exposition up its pipe
every :data:`PUSH_SECONDS`; a Celery worker (``fluxhost worker --metrics-port``) serves its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fluxhost.store.database import DATABASE_FAULTS

log = logging.getLogger(__name__)

PUSH_SECONDS = 2.0
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # any other: "other"
# Request latencies: a poll takes milliseconds, a Run with an input image to fetch up to seconds.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Task times: from a bench engine's milliseconds to a large model's minutes.
TASK_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, float("inf"))
STEP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, float("inf"))


class ApiMetrics:
    """What an API process measures: HTTP requests, sockets, callbacks."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_seconds = Histogram(
            "fluxhost_http_request_duration_seconds", "Time to answer an HTTP request, by route template.",
            ["route", "method", "status"], buckets=HTTP_BUCKETS, registry=self.registry,
        )
        self.socket_connections = Gauge(
            "fluxhost_socket_connections", "Open task WebSocket connections.", registry=self.registry,
        )
        self.callback_attempts = Counter(
            "fluxhost_callback_attempts_total",
            "Callback POSTs made, by outcome: delivered, retrying (failed, will be tried again), failed (given up).",
            ["outcome"], registry=self.registry,
        )

    def watch_tasks(self, counts: Callable[[], Iterable[tuple[str, str, int]]]) -> None:
        """Report the unfinished tasks by status and model, read at each scrape from ``counts``."""
        self.registry.register(UnfinishedTasks(counts))


class UnfinishedTasks(Collector):
    """``fluxhost_tasks{status,model}``: tasks queued or running now, as the database says (every
    API process of a fleet reports the same figures: aggregate them with ``max``, not ``sum``)."""

    def __init__(self, counts: Callable[[], Iterable[tuple[str, str, int]]]):
        self.counts = counts

    def describe(self) -> list[GaugeMetricFamily]:
        return [self._family()]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = self._family()
        try:
            counts = self.counts()
        except DATABASE_FAULTS as error:  # the other metrics still answer, this one is left out
            log.warning("/metrics without task counts: the database failed (%s)", type(error).__name__)
            return
        for status, model, count in counts:
            family.add_metric([status, model], count)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily("fluxhost_tasks", "Unfinished tasks by status (task_queue is the queue depth) and "
                                 "model.", labels=["status", "model"])


class WorkerMetrics:
    """What a worker measures: each task's wait and run, the steps, the engines' load times."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.queue_wait_seconds = Histogram(
            "fluxhost_task_queue_wait_seconds", "From a task's creation to a worker claiming it (for a task run "
            "again, its whole wait so far).",
            ["model"], buckets=TASK_BUCKETS, registry=self.registry,
        )
        self.run_seconds = Histogram(
            "fluxhost_task_run_seconds", "Each run of a task, from its claim to its end, by outcome: completed, "
            "failed, moderated, or stopped (killed, or handed on: a task stopped at shutdown runs again).",
            ["model", "outcome"], buckets=TASK_BUCKETS, registry=self.registry,
        )
        self.step_seconds = Histogram(
            "fluxhost_step_seconds", "Time per denoising step (per pipeline call: a batch's tasks share it).",
            ["model"], buckets=STEP_BUCKETS, registry=self.registry,
        )
        self.engine_load_seconds = Gauge(
            "fluxhost_engine_load_seconds", "Time the last load of a model's engine took.", ["model", "device"],
            registry=self.registry,
        )

    def finished_task(self, model: str, outcome: str, claimed_at: float) -> None:
        self.run_seconds.labels(model, outcome).observe(time.time() - claimed_at)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class HttpMetrics:
    """ASGI middleware timing every HTTP request under its route's template (``/v1/Run/{owner}/
    {project}``), never its raw path: label values stay few whatever clients send."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            method = scope["method"] if scope["method"] in HTTP_METHODS else "other"
            self.metrics.http_seconds.labels(route_template(scope), method, str(status)).observe(
                time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    """The template of the route that answered (Starlette and FastAPI leave it in the scope), or
    ``unmatched`` (also when a mount matched and nothing inside it did)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path is None or isinstance(route, Mount):
        return "unmatched"
    return scope.get("root_path", "") + path
