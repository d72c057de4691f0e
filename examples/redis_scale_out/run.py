"""Send 200 jobs to Redis at once, drain them with two runworker processes, check each ran once.

Run from the repository root: python examples/redis_scale_out/run.py
(needs `redis-server` on PATH; the example starts a private one on a free port)
"""

import collections
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import django

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `settings`, `workers`
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # layerq, if not installed

import layerq
from layerq.testing import RedisServer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
JOBS = 200
WORKERS = 2


def main(tmp: Path, redis: RedisServer) -> None:
    runs_file = tmp / "runs.txt"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "settings",
        "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)]),  # settings, workers, layerq
        "REDIS_URL": redis.url,
        "EXAMPLE_RUNS_FILE": str(runs_file),
    }
    os.environ.update(env)
    django.setup()

    from workers import Square

    # One call, one round trip per 500 jobs; a view sending one job uses Square(n=n).send().
    sent = layerq.send_many(Square(n=n) for n in range(JOBS))
    jobs = dict(zip(sent, range(JOBS), strict=True))
    print(f"sent {len(jobs)} jobs to {redis.url}")

    # What each machine of a deployment would run: `python -m django runworker squares`.
    command = [sys.executable, "-m", "django", "runworker", "squares", "--burst"]
    workers = [
        subprocess.Popen([*command, "--log-level", "WARNING"], env=env) for _ in range(WORKERS)
    ]
    try:
        codes = [worker.wait(timeout=30) for worker in workers]
    finally:
        for worker in workers:
            worker.kill()  # only if still running: the example must not leave any behind
    print(f"{WORKERS} workers exited with {codes}")
    assert codes == [0] * WORKERS

    for job, n in jobs.items():
        assert job.result(timeout=5) == n * n, job
        assert job.status() is layerq.JobStatus.SUCCEEDED, job
    print(f"all {len(jobs)} jobs succeeded with the right result")

    lines = [line.split() for line in runs_file.read_text().splitlines()]
    per_job = collections.Counter(job_id for job_id, _ in lines)
    per_worker = collections.Counter(pid for _, pid in lines)
    assert per_job.keys() == {job.id for job in jobs}
    assert set(per_job.values()) == {1}, per_job.most_common(3)
    print(f"each job ran exactly once; jobs per worker process: {sorted(per_worker.values())}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="layerq-example-") as tmp, RedisServer() as redis:
        main(Path(tmp), redis)
