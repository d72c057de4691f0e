"""``python -m bench.run``: every system, one private Redis, one markdown table.

Examples::

    python -m bench.run                                  # all systems, writes bench/RESULTS.md
    python -m bench.run --quick                          # small N smoke check, prints only
    python -m bench.run --systems floor,layerq-sqlite --jobs 20000
    python -m bench.run --pin --rounds 5 --systems floor,floor-reliable,layerq-redis
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import redis

from bench import report, venvs
from bench.harness import Outcome, Runner, pin_server
from bench.systems import SYSTEMS, System, by_key
from bench.systems.common import Config
from layerq.testing import RedisServer

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
QUICK_JOBS = 500
QUICK_LATENCY_JOBS = 50


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--systems", help="comma-separated keys (default: all); see --list")
    parser.add_argument("--jobs", type=int, default=10_000, help="drain jobs (default 10000)")
    parser.add_argument(
        "--latency-jobs", type=int, default=500, help="sequential latency jobs (default 500)"
    )
    parser.add_argument(
        "--sync-jobs", type=int, default=None,
        help="of the drain jobs, how many go through the sync path (default: jobs/5, max 2000)",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true",
        help=f"{QUICK_JOBS} drain and {QUICK_LATENCY_JOBS} latency jobs; prints, writes nothing",
    )  # fmt: skip
    parser.add_argument(
        "--output", type=Path, default=None,
        help=f"markdown file to write (default {RESULTS.name}, none with --quick)",
    )  # fmt: skip
    parser.add_argument(
        "--pin", action="store_true",
        help="bind Redis and producers to CPU 0, the worker to CPU 1 (less run-to-run noise)",
    )  # fmt: skip
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="run the systems this many times, taking turns; report medians and"
        " each round's ratios to the floor (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--append", action="store_true",
        help="add this run to the end of --output (as a section) instead of replacing it",
    )  # fmt: skip
    parser.add_argument("--list", action="store_true", help="list the systems and exit")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.latency_jobs = QUICK_JOBS, QUICK_LATENCY_JOBS
    if args.jobs < 2 or args.latency_jobs < 2:
        parser.error("--jobs and --latency-jobs must be at least 2")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.sync_jobs is None:
        args.sync_jobs = min(2000, args.jobs // 5)
    if args.output is None and not args.quick:
        args.output = RESULTS
    return args


def selected(spec: str | None) -> list[System]:
    if not spec:
        return list(SYSTEMS)
    return [by_key(key.strip()) for key in spec.split(",") if key.strip()]


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if args.list:
        for system in SYSTEMS:
            print(f"{system.key:16} {system.label}")
        return 0
    systems = selected(args.systems)
    rounds: list[list[Outcome]] = []
    tmp = tempfile.mkdtemp(prefix="layerq-bench-")
    with RedisServer() as server:
        config = Config(
            redis_url=server.url, directory=tmp, jobs=args.jobs, sync_jobs=args.sync_jobs,
            latency_jobs=args.latency_jobs,
        )  # fmt: skip
        logs = Path(tmp) / "logs"
        logs.mkdir()
        client = redis.Redis.from_url(server.url)
        if args.pin:
            pin_server(client, 0)
        runner = Runner(config, logs, flush=client.flushall, pin=args.pin)
        available = []
        for system in systems:
            why = system.unavailable()
            if why is not None:
                print(f"bench: skipping {system.key}: {why}", flush=True)
            else:
                available.append(system)
        for index in range(args.rounds):
            rounds.append([])
            for system in available:
                label = system.key if args.rounds == 1 else f"{system.key} (round {index + 1})"
                print(f"bench: {label} ...", flush=True)
                python = venvs.python_for(system.venv)
                client.flushall()
                where = Path(tmp) / (system.key if args.rounds == 1 else f"{system.key}-{index}")
                outcome = runner.run(system, python, where)
                rounds[-1].append(outcome)
                print(report.table([outcome]).splitlines()[-1], flush=True)
        client.close()
    outcomes = [report.merged([r[i] for r in rounds]) for i in range(len(available))]
    failed = any(o.error for r in rounds for o in r)
    if failed:
        print(f"bench: kept {tmp} (logs/ has each process's output)")
    else:
        shutil.rmtree(tmp)
    command = shlex.join(["python", "-m", "bench.run", *(argv or sys.argv[1:])])
    text = report.document(outcomes, config, command, rounds)
    print()
    print(report.table(outcomes))
    print()
    print(report.ratios(outcomes))
    if len(rounds) > 1:
        print()
        print(report.round_ratios(rounds))
    if args.output is not None:
        if args.append and args.output.exists():
            # One more section: its title a level down, so the file keeps one.
            text = args.output.read_text() + "\n#" + text
        args.output.write_text(text)
        print(f"\nbench: wrote {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
