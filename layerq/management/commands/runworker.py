"""``manage.py runworker CHANNEL...``: parse arguments, hand over to layerq.runtime."""

from __future__ import annotations

import asyncio
import gc
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from layerq import logs
from layerq.errors import ConfigurationError
from layerq.runtime import Worker


class Command(BaseCommand):
    help = "Run layerq worker consumers for the given channels."
    leave_locale_alone = True

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("channels", nargs="+", help="worker channels to consume")
        parser.add_argument("--concurrency", type=int, default=8, help="jobs run at once")
        parser.add_argument(
            "--prefetch",
            type=int,
            default=0,
            help="jobs claimed ahead of free slots, leased while they wait (default 0)",
        )
        parser.add_argument(
            "--burst", action="store_true", help="exit when the channels have no ready jobs"
        )
        parser.add_argument(
            "--shutdown-timeout",
            type=float,
            default=30.0,
            help="seconds running jobs get to finish after SIGTERM/SIGINT",
        )
        parser.add_argument("--layer", default=None, help="CHANNEL_LAYERS alias")
        parser.add_argument("--log-level", default="INFO")
        parser.add_argument("--log-format", choices=("auto", "console", "json"), default="auto")

    def handle(self, *args: Any, **options: Any) -> None:
        from channels.routing import get_default_application

        json = {"auto": None, "console": False, "json": True}[options["log_format"]]
        logs.configure(options["log_level"], json=json)
        if options["concurrency"] < 1:
            raise CommandError("--concurrency must be at least 1")
        if options["prefetch"] < 0:
            raise CommandError("--prefetch must be 0 or more")
        try:
            code = asyncio.run(self._run(get_default_application(), options))
        except ConfigurationError as exc:
            raise CommandError(str(exc)) from exc
        if code:
            raise SystemExit(code)

    async def _run(self, application: Any, options: dict[str, Any]) -> int:
        worker = Worker(
            application,
            options["channels"],
            concurrency=options["concurrency"],
            prefetch=options["prefetch"],
            burst=options["burst"],
            shutdown_timeout=options["shutdown_timeout"],
            layer_alias=options["layer"],
        )
        # What start-up made (modules, settings, routes, the layer) lives as
        # long as the process: kept out of the collector, a collection walks
        # only what jobs made (about 4 % of a no-op job's cost).
        gc.freeze()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.request_stop)
        return await worker.run()
