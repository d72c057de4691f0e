"""Every examples/*/run.py runs to completion, so the examples cannot rot."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(ROOT.glob("examples/*/run.py"))
#: seconds one example may take; they aim for well under 20
TIMEOUT = 60


def test_examples_are_found() -> None:
    """The glob finds the example folders, so an empty parametrisation cannot pass silently."""
    assert EXAMPLES


@pytest.mark.timeout(TIMEOUT + 30)
@pytest.mark.parametrize("script", EXAMPLES, ids=[path.parent.name for path in EXAMPLES])
def test_example_runs_and_exits_zero(script: Path) -> None:
    """The example's run.py, started from the repository root as a reader would, exits 0."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    # A session of its own, so a timeout also ends the example's own children
    # (runworker processes, redis-server).
    with subprocess.Popen(
        [sys.executable, str(script.relative_to(ROOT))],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    ) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
    assert process.returncode == 0, (
        f"{script.relative_to(ROOT)} exited {process.returncode}\n"
        f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    )
