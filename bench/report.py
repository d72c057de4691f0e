"""The results as markdown: the table, the ratios, and RESULTS.md around them."""

from __future__ import annotations

import dataclasses
import datetime
import platform
import statistics
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.harness import Outcome, Percentiles
from bench.systems.common import CONCURRENCY, Config

FLOOR = "floor"
#: the layerq row ratios are taken against: Redis when it ran (same transport as the peers)
LAYERQ_REFERENCES = ("layerq-redis", "layerq-sqlite")


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _ms(value: Percentiles | None) -> str:
    if value is None:
        return "-"
    return " / ".join(
        f"{v:.2f}" if v < 10 else f"{v:.0f}" for v in (value.p50, value.p95, value.p99)
    )


def table(outcomes: Sequence[Outcome]) -> str:
    """One row per system; failures keep their row with the reason."""
    lines = [
        "| system | async enqueue/s | sync enqueue/s"
        f" | async, {CONCURRENCY} at once/s | bulk enqueue/s"
        " | drain/s | enqueue→start ms p50 / p95 / p99 | enqueue→result ms p50 / p95 / p99"
        " | worker RSS MB |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for o in outcomes:
        if o.error is not None and o.drain is None:
            lines.append(f"| {o.system.label} | failed: {o.error} | | | | | | | |")
            continue
        rss = "-" if o.rss_mb is None else f"{o.rss_mb:.0f}"
        lines.append(
            f"| {o.system.label} | {_num(o.enqueue)} | {_num(o.sync_send)}"
            f" | {_num(o.concurrent_enqueue)} | {_num(o.bulk_enqueue)} | {_num(o.drain)}"
            f" | {_ms(o.start)} | {_ms(o.result)} | {rss} |"
        )
    return "\n".join(lines)


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or reference is None or reference == 0:
        return "-"
    return f"{value / reference:.2f}x"


def ratios(outcomes: Sequence[Outcome]) -> str:
    """Drain rate and result p50 of each system relative to the floor and to layerq,
    async and sync enqueue rates relative to the floor's on the same kind of client
    (redis.asyncio, redis.Redis), the concurrent rate to the floor's concurrent rate,
    and bulk enqueue rate relative to the floor's (a redis-py pipeline of LPUSH)."""
    by_key = {o.system.key: o for o in outcomes if o.error is None}
    floor = by_key.get(FLOOR)
    reference = next((by_key[k] for k in LAYERQ_REFERENCES if k in by_key), None)
    if floor is None and reference is None:
        return ""
    ref_label = reference.system.label if reference else "layerq"
    lines = [
        f"| system | drain ÷ floor | drain ÷ {ref_label} | result p50 ÷ floor"
        f" | result p50 ÷ {ref_label} | async enqueue ÷ floor | sync enqueue ÷ floor"
        f" | {CONCURRENCY} at once ÷ floor | bulk enqueue ÷ floor pipelined |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for o in outcomes:
        if o.error is not None:
            continue
        p50 = o.result.p50 if o.result else None
        lines.append(
            f"| {o.system.label}"
            f" | {_ratio(o.drain, floor.drain if floor else None)}"
            f" | {_ratio(o.drain, reference.drain if reference else None)}"
            f" | {_ratio(p50, floor.result.p50 if floor and floor.result else None)}"
            f" | {_ratio(p50, reference.result.p50 if reference and reference.result else None)}"
            f" | {_ratio(o.enqueue, floor.enqueue if floor else None)}"
            f" | {_ratio(o.sync_send, floor.sync_send if floor else None)}"
            f" | {_ratio(o.concurrent_enqueue, floor.concurrent_enqueue if floor else None)}"
            f" | {_ratio(o.bulk_enqueue, floor.bulk_enqueue if floor else None)} |"
        )
    return "\n".join(lines)


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _median_percentiles(values: Sequence[Percentiles | None]) -> Percentiles | None:
    known = [v for v in values if v is not None]
    if not known:
        return None
    return Percentiles(
        statistics.median(v.p50 for v in known),
        statistics.median(v.p95 for v in known),
        statistics.median(v.p99 for v in known),
    )


def merged(runs: Sequence[Outcome]) -> Outcome:
    """One row for several rounds of one system: the median of each figure over
    the rounds that did not fail (the first failure's reason when all did)."""
    good = [o for o in runs if o.error is None]
    if not good:
        return runs[0]
    return dataclasses.replace(
        good[0],
        enqueue=_median([o.enqueue for o in good]),
        sync_send=_median([o.sync_send for o in good]),
        bulk_enqueue=_median([o.bulk_enqueue for o in good]),
        concurrent_enqueue=_median([o.concurrent_enqueue for o in good]),
        drain=_median([o.drain for o in good]),
        start=_median_percentiles([o.start for o in good]),
        result=_median_percentiles([o.result for o in good]),
        rss_mb=_median([o.rss_mb for o in good]),
    )


def _start_p50(o: Outcome) -> float | None:
    return o.start.p50 if o.start else None


def _result_p50(o: Outcome) -> float | None:
    return o.result.p50 if o.result else None


def _enqueue(o: Outcome) -> float | None:
    return o.enqueue


def _sync_send(o: Outcome) -> float | None:
    return o.sync_send


def _concurrent(o: Outcome) -> float | None:
    return o.concurrent_enqueue


def _drain(o: Outcome) -> float | None:
    return o.drain


Figure = Callable[[Outcome], float | None]
#: (column, a system's figure, divided by the reference's same figure) for
#: :func:`round_ratios`: async enqueue over the floor's on redis.asyncio, sync
#: over the floor's on redis.Redis
_ROUND_FIGURES: list[tuple[str, Figure]] = [
    ("start p50", _start_p50),
    ("result p50", _result_p50),
    ("async enqueue", _enqueue),
    ("sync enqueue", _sync_send),
    (f"{CONCURRENCY} at once", _concurrent),
    ("drain", _drain),
]


def round_ratios(rounds: Sequence[Sequence[Outcome]], against: str = FLOOR) -> str:
    """Each system's figures over those of ``against`` measured in the same round:
    the median ratio and its range over the rounds. The machine drifts between
    rounds by more than the systems differ; a ratio within a round cancels that.
    """
    per_round = [{o.system.key: o for o in outcomes if o.error is None} for outcomes in rounds]
    if not any(against in found for found in per_round):
        return ""
    keys: list[str] = []
    for outcomes in rounds:
        keys += [o.system.key for o in outcomes if o.system.key not in keys]
    labels = {o.system.key: o.system.label for outcomes in rounds for o in outcomes}
    head = " | ".join(f"{name} ÷ {against}" for name, _ in _ROUND_FIGURES)
    lines = [f"| system | rounds | {head} |", "|---|--:|" + "--:|" * len(_ROUND_FIGURES)]
    for key in keys:
        cells = []
        both = [found for found in per_round if key in found and against in found]
        for _, figure in _ROUND_FIGURES:
            values = [
                figure(found[key]) / reference
                for found in both
                if figure(found[key]) is not None and (reference := figure(found[against]))
            ]
            if not values:
                cells.append("-")
            elif len(values) == 1:
                cells.append(f"{values[0]:.2f}x")
            else:
                cells.append(
                    f"{statistics.median(values):.2f}x ({min(values):.2f} to {max(values):.2f})"
                )
        lines.append(f"| {labels[key]} | {len(both)} | {' | '.join(cells)} |")
    return "\n".join(lines)


def machine() -> str:
    """nproc, CPU model, kernel."""
    model = "?"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import os

    return f"{os.cpu_count()} CPUs, {model}, Linux {platform.release()}"


def redis_version() -> str:
    try:
        out = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), out.strip())


def versions(outcomes: Sequence[Outcome]) -> str:
    lines = []
    for o in outcomes:
        if o.versions:
            packages = ", ".join(f"{k} {v}" for k, v in o.versions.items())
            lines.append(f"- {o.system.label}: {packages}")
    return "\n".join(lines)


def notes(outcomes: Sequence[Outcome]) -> str:
    return "\n".join(f"- **{o.system.label}**: {o.system.note}" for o in outcomes if o.system.note)


def document(
    outcomes: Sequence[Outcome],
    config: Config,
    command: str,
    rounds: Sequence[Sequence[Outcome]] = (),
) -> str:
    """The whole RESULTS.md; ``outcomes`` are the rows (merged over ``rounds``, if
    there were several)."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    failures = [o for o in outcomes if o.error is not None]
    title = "layerq benchmark results"
    if len(rounds) > 1:
        title = f"layerq benchmark results, {len(rounds)} rounds"
    parts = [
        f"# {title}",
        "",
        "Written by `python -m bench.run`; see bench/README.md for what each column measures.",
        "",
        f"- date: {now}",
        f"- command: `{command}`",
        f"- machine: {machine()}",
        f"- redis-server {redis_version()} (private, `--save '' --appendonly no`)",
        f"- drain: {config.jobs:,} no-op jobs enqueued first ({config.sync_jobs:,} of them"
        f" through the sync path where there is one), then one worker process drains them;"
        f" latency: {config.latency_jobs:,} sequential jobs",
        f"- bulk: before the drain, {config.jobs:,} no-op jobs sent to a separate queue"
        " through the library's many-at-once call where it has one (none run; Redis is"
        " flushed after)",
        f"- {CONCURRENCY} at once: before the drain, {config.jobs:,} no-op jobs sent to a"
        f" separate queue through the async client by {CONCURRENCY} coroutines at once,"
        " each awaiting its sends one after the other (none run; Redis is flushed after)",
        "",
        table(outcomes),
        "",
    ]
    ratio_table = ratios(outcomes)
    if ratio_table:
        parts += [
            "Ratios (above 1x is faster drain or enqueue, or slower result):",
            "",
            ratio_table,
            "",
        ]
    if len(rounds) > 1:
        parts += [
            f"Each system ran in {len(rounds)} rounds, the systems taking turns; the"
            " table above holds each figure's median over the rounds. Below, each figure"
            " over the floor's of the same round: median ratio (range). Start and result:"
            " above 1x is slower; enqueue and drain: above 1x is faster.",
            "",
            round_ratios(rounds),
            "",
        ]
    parts += [
        "## How each system was run",
        "",
        notes(outcomes),
        "",
        "## Versions",
        "",
        versions(outcomes),
    ]
    if failures:
        parts += ["", "## Failures", ""]
        parts += [f"- {o.system.label}: {o.error}" for o in failures]
    return "\n".join(parts) + "\n"
