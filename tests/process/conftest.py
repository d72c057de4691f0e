"""Real runworker subprocesses against a SQLite layer file shared with the test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import override_settings

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcess:
    """One `manage.py runworker` subprocess and its captured output."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "django", "runworker", *args, "--log-format", "json"],
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._out.close()
        return code

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()


@pytest.fixture(params=["sqlite", "redis"])
def shared_layer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A layer (SQLite file or Redis prefix) this test and its worker processes share."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": str(ROOT),
        "LAYERQ_TEST_LEASE": "1",
        "LAYERQ_TEST_RUNS": str(tmp_path / "runs.txt"),
    }
    env.pop("LAYERQ_TEST_REDIS_URL", None)
    server = None
    if request.param == "sqlite":
        path = str(tmp_path / "layer.sqlite3")
        env["LAYERQ_TEST_LAYER_DB"] = path
        layer = {"BACKEND": "layerq.layers.SQLiteChannelLayer", "CONFIG": {"path": path}}
    else:
        server = request.getfixturevalue("redis_server")
        prefix = f"p{abs(hash(request.node.nodeid))}"
        env["LAYERQ_TEST_REDIS_URL"] = server.url
        env["LAYERQ_TEST_REDIS_PREFIX"] = prefix
        layer = {
            "BACKEND": "layerq.layers.RedisChannelLayer",
            "CONFIG": {"hosts": [server.url], "prefix": prefix},
        }
    with override_settings(CHANNEL_LAYERS={"default": layer}):
        yield {
            "env": env,
            "runs": tmp_path / "runs.txt",
            "tmp": tmp_path,
            "backend": request.param,
            "server": server,
        }


@pytest.fixture
def start_worker(
    shared_layer: dict[str, Any],
) -> Iterator[Callable[..., WorkerProcess]]:
    """Start runworker subprocesses; every one is killed at the end of the test."""
    started: list[WorkerProcess] = []

    def start(*args: str) -> WorkerProcess:
        log = shared_layer["tmp"] / f"worker-{len(started)}.log"
        worker = WorkerProcess(list(args), shared_layer["env"], log)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def runs(path: Path) -> list[str]:
    """The markers handlers wrote, one per handler run."""
    return path.read_text().split() if path.exists() else []


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until true; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)
