"""The reference deployment run for real (daphne + runworker), and a headless Chromium.

The processes run ``worker/`` exactly as the Procfile does, with ``sys.executable``
(so CI's own virtualenv), on a free port, against a temporary SQLite layer file
and Django database. A failing test gets their output in its report.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER_DIR = REPO / "worker"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
#: seconds the web and worker processes get to come up (imports, first SQLite open)
STARTUP_TIMEOUT = 30.0
#: seconds a process gets to exit after SIGTERM before it is killed
STOP_TIMEOUT = 10.0


class Deployment:
    """The running web and worker processes of the reference deployment."""

    def __init__(self, directory: Path, port: int) -> None:
        self.directory = directory
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        self.env = _environment(directory)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: dict[str, IO[bytes]] = {}

    def log_path(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def start(self, name: str, args: list[str]) -> None:
        """Start ``python ARGS`` in ``worker/``, its output going to ``NAME.log``."""
        log = self.log_path(name).open("wb")
        self._logs[name] = log
        self.processes[name] = subprocess.Popen(
            [sys.executable, *args],
            cwd=WORKER_DIR,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def output(self) -> str:
        """Everything the processes printed so far, one section each."""
        parts = []
        for name in self.processes:
            text = self.log_path(name).read_text(errors="replace")
            parts.append(f"----- {name} (exit code {self.processes[name].poll()}) -----\n{text}")
        return "\n".join(parts)

    def check_alive(self) -> None:
        """Fail, with the processes' output, when one of them has exited."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode}\n{self.output()}")

    def wait_ready(self) -> None:
        """Wait until the web process serves and the worker has started claiming."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        web_ready = worker_ready = False
        while not (web_ready and worker_ready):
            self.check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the deployment did not start in {STARTUP_TIMEOUT}s\n{self.output()}"
                )
            if not web_ready:
                # A static file: asking for the page itself would create a guest user.
                web_ready = _answers(f"{self.url}/static/layerq/layerq.js")
            if not worker_ready:
                worker_ready = "worker.started" in self.log_path("worker").read_text()
            time.sleep(0.1)

    def stop(self) -> None:
        """Terminate every process, kill what does not exit, and reap them all."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self._logs.values():
            log.close()


def _environment(directory: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("REDIS_URL", None)  # the SQLite layer, whatever the shell has
    env["DJANGO_SETTINGS_MODULE"] = "demo.settings"  # pytest-django exported the suite's
    env["LAYERQ_DEMO_LAYER_DB"] = str(directory / "layer.sqlite3")
    env["DJANGO_DB"] = str(directory / "django.sqlite3")
    # layerq from this checkout even where it is not installed in the interpreter.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """The reference deployment, migrated and running: daphne plus ``runworker demo``."""
    directory = tmp_path_factory.mktemp("demo")
    deployment = Deployment(directory, _free_port())
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=WORKER_DIR,
        env=deployment.env,
        capture_output=True,
        text=True,
        check=False,
    )
    if migrate.returncode:
        pytest.fail(f"manage.py migrate failed:\n{migrate.stdout}\n{migrate.stderr}")
    try:
        deployment.start(
            "web",
            [
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(deployment.port),
                "demo.asgi:application",
            ],
        )
        deployment.start("worker", ["manage.py", "runworker", "demo", "--concurrency", "4"])
        deployment.wait_ready()
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium (the system's; Playwright never downloads one here)."""
    if not CHROMIUM.exists():
        pytest.fail("install chromium: apt-get install -y chromium", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in a fresh browser context: no cookies, so the demo makes a new guest."""
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the deployment's output to the report of a test that failed."""
    report = yield
    deployment = getattr(item, "funcargs", {}).get("deployment")
    if report.failed and isinstance(deployment, Deployment):
        with contextlib.suppress(OSError):
            report.sections.append(("deployment output", deployment.output()))
    return report
