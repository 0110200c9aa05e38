from __future__ import annotations

import os
import sys

# No test reaches the model hub: set before anything imports huggingface_hub, which reads it once.
os.environ["HF_HUB_OFFLINE"] = "1"

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fluxhost.settings import ModelSettings, Settings
from fluxhost.signing import KeyMode
from tests.helpers import SLUG, TORCH_THREADS, LiveServer, ProtocolClient, free_port, fresh_postgres_database
from tests.services import postgres_usable, redis_binary, throwaway_postgres, throwaway_redis

TINY_PIPELINES = {"tiny_weights", "tiny_klein", "tiny_kontext", "tiny_controlnet"}
"""The fixtures that build a pipeline (test modules define all but the first)."""
LONGEST_MODULES = ("test_ring_lora.py", "test_demo_model.py", "test_demo_edits.py", "test_celery_fleet.py")
"""The modules that take longest (a training, the demo's held-out captions and edits, a fleet),
longest first: they run first, so that ``make test``'s workers (``-n``, a file each) do not end on
one of them while the others wait."""


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs a tiny pipeline is ``slow``: it builds and loads one, or starts the app that
    does (marked before pytest selects by marker). The longest modules go first."""
    for item in items:
        if TINY_PIPELINES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    rank = {name: place for place, name in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Collecting imports no torch: it takes seconds, and the ``not slow`` lane must stay fast."""
    if "torch" in sys.modules:
        raise pytest.UsageError("torch was imported while collecting the tests: import it (and what imports it, "
                                "diffusers, safetensors.torch, fluxhost.testing.tiny) inside the test or fixture "
                                "that needs it")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("needs a CUDA GPU")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny FLUX pipeline folder for the whole run, loaded like real weights (torch and
    diffusers are imported here, by the first test that needs them, not at collection)."""
    from fluxhost.testing.tiny import ensure_tiny_pipeline

    return ensure_tiny_pipeline(tmp_path_factory.mktemp("weights") / "tiny-flux")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis server: the one FLUXHOST_TEST_REDIS names (.ci/run starts one), else a throwaway
    redis-server for this run; skipped only where Redis is not installed. Each pytest-xdist worker
    starts its own where it can: pub/sub channels are server-wide, so two workers sharing one server
    would hear each other's task events."""
    named = os.environ.get("FLUXHOST_TEST_REDIS")
    if named and (redis_binary() is None or not os.environ.get("PYTEST_XDIST_WORKER")):
        yield named
        return
    if redis_binary() is None:
        pytest.skip("needs redis-server (Debian's redis-server package; .ci/run installs it)")
    with throwaway_redis() as server:
        yield server.url


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server for the fleet tests' databases: the one FLUXHOST_TEST_FLEET_POSTGRES
    names (.ci/run starts one), else a throwaway cluster for this run; skipped only where
    PostgreSQL is not installed."""
    if named := os.environ.get("FLUXHOST_TEST_FLEET_POSTGRES"):
        yield named
        return
    if not postgres_usable():
        pytest.skip("needs PostgreSQL (Debian's postgresql package; .ci/run installs it)")
    with throwaway_postgres() as url:
        yield url


@pytest.fixture
def database_url() -> Iterator[str | None]:
    """A fresh PostgreSQL database for the test when FLUXHOST_TEST_POSTGRES names a server (as the
    CI's second pass does); None for the embedded SQLite default."""
    server = os.environ.get("FLUXHOST_TEST_POSTGRES")
    if not server:
        yield None
        return
    with fresh_postgres_database(server) as url:
        yield url


@pytest.fixture
def make_settings(tmp_path: Path, tiny_weights: Path, database_url: str | None) -> Callable[..., Settings]:
    def make(steps: int = 4, max_batch: int = 4, **overrides) -> Settings:
        port = free_port()
        values = dict(
            data_dir=tmp_path / "data",
            database_url=database_url,
            host="127.0.0.1",
            port=port,
            torch_threads=TORCH_THREADS,
            worker_process=False,  # tests reach into the worker's engines; test_worker_process covers the child
            shutdown_grace_seconds=2.0,  # a test's last task need not finish for the server to stop
            models={SLUG: ModelSettings(weights=str(tiny_weights), steps=steps, max_sequence_length=32,
                                        max_batch=max_batch)},
        )
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def server(make_settings) -> Iterator[LiveServer]:
    """The service as configured by default, but one task per pipeline call: tests that keep the
    worker busy with one task and look at the next rely on it (test_batching covers batches)."""
    with LiveServer(make_settings(max_batch=1)) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> ProtocolClient:
    return ProtocolClient(server.base_url, server.service.keys.create(KeyMode.SIGNATURE))


@pytest.fixture
def slow_server(make_settings):
    """A single worker on a 60-step model, one task per call: a task runs long enough to be queued
    behind or killed."""
    with LiveServer(make_settings(steps=60, max_batch=1)) as live:
        yield live


@pytest.fixture
def slow_client(slow_server):
    return ProtocolClient(slow_server.base_url, slow_server.service.keys.create(KeyMode.SIGNATURE))
