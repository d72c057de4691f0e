"""Fixtures shared by every suite: layers per backend, a private Redis, a worker."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.layers import get_channel_layer
from django.test import override_settings

from layerq.runtime import Worker
from tests.app.asgi import application

#: backends the shared integration suite runs against; "redis-cluster" is a
#: one-node Redis Cluster, which refuses any script whose keys span two slots
BACKENDS = ["sqlite", "redis", "redis-cluster"]


def _private_redis(cluster: bool) -> Iterator[Any]:
    from layerq.testing import RedisServer, redis_server_binary

    try:
        redis_server_binary()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    with RedisServer(cluster=cluster) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """A private redis-server for the whole session (fails, not skips, without one)."""
    yield from _private_redis(cluster=False)


@pytest.fixture(scope="session")
def redis_cluster_server() -> Iterator[Any]:
    """A private one-node Redis Cluster for the whole session."""
    yield from _private_redis(cluster=True)


def layer_config(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    """The CHANNEL_LAYERS entry for ``backend``, isolated to this test."""
    if backend == "sqlite":
        return {
            "BACKEND": "layerq.layers.SQLiteChannelLayer",
            "CONFIG": {"path": str(tmp_path / "layer.sqlite3")},
        }
    if backend in ("redis", "redis-cluster"):
        fixture = "redis_server" if backend == "redis" else "redis_cluster_server"
        server = request.getfixturevalue(fixture)
        return {
            "BACKEND": "layerq.layers.RedisChannelLayer",
            "CONFIG": {"hosts": [server.url], "prefix": f"t{os.getpid()}{id(request)}"},
        }
    if backend == "inmemory":
        return {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    raise ValueError(backend)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the layer backend under test."""
    return str(request.param)


@pytest.fixture
def layer_settings(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[dict[str, Any]]:
    """CHANNEL_LAYERS pointing the default alias at a fresh layer of ``backend``."""
    layers = {"default": layer_config(backend, tmp_path, request)}
    with override_settings(CHANNEL_LAYERS=layers):
        yield layers


@pytest.fixture
async def layer(layer_settings: dict[str, Any]) -> AsyncIterator[Any]:
    """The default channel layer, empty, for this test's backend."""
    instance = get_channel_layer()
    await instance.flush()
    yield instance
    await instance.flush()
    close = getattr(instance, "close", None)
    if close is not None:
        await close()


@pytest.fixture
def sync_layer(layer_settings: dict[str, Any]) -> Any:
    """The default layer of this test's backend, for a test in sync code."""
    return get_channel_layer()


@contextlib.asynccontextmanager
async def running_worker(channels: list[str], **options: Any) -> AsyncIterator[Worker]:
    """A Worker running in this event loop until the block ends."""
    worker = Worker(application, channels, **options)
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect cycles after each test, so a leaked socket fails the test that leaked it."""
    yield
    gc.collect()
