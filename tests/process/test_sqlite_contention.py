"""Many processes on one SQLite file: no `database is locked` reaches anyone."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from layerq.jobs import Job, JobStatus
from tests.process.conftest import ROOT, wait_until

pytestmark = [pytest.mark.process, pytest.mark.timeout(120)]

PRODUCER = """
import sys, django
django.setup()
import layerq.logs
layerq.logs.configure("WARNING")
from tests.app.events import Add
ids = [Add(a=i, b=int(sys.argv[1])).send().id for i in range(int(sys.argv[2]))]
print("\\n".join(ids))
"""


def test_producers_and_workers_share_one_file(shared_layer: Any, start_worker: Any) -> None:
    """Four producer processes and two workers at once: every job sent succeeds."""
    workers = [start_worker("math", "--concurrency", "8") for _ in range(2)]
    producers = [
        subprocess.Popen(
            [sys.executable, "-c", PRODUCER, str(n), "300"],
            cwd=ROOT,
            env=shared_layer["env"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    ids: list[str] = []
    for producer in producers:
        out, err = producer.communicate(timeout=90)
        assert producer.returncode == 0, err
        assert "locked" not in err
        ids.extend(out.split())
    assert len(set(ids)) == 1200
    jobs = [Job(job_id, channel="math", type="math.add") for job_id in ids]
    wait_until(
        lambda: all(job.status() is JobStatus.SUCCEEDED for job in jobs), 90, "every job to succeed"
    )
    for worker in workers:
        assert "locked" not in worker.output()
        assert "job.failed" not in worker.output()
