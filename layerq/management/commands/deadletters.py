"""``manage.py deadletters CHANNEL``: list dead letters, or requeue them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from layerq.errors import LayerqError
from layerq.layers import require_queue_layer


class Command(BaseCommand):
    help = "List the dead letters of a worker channel, or send them back (--requeue)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("channel")
        parser.add_argument("--limit", type=int, default=100)
        parser.add_argument("--requeue", action="store_true", help="send them back to the channel")
        parser.add_argument("--id", action="append", dest="ids", help="only these dead letters")
        parser.add_argument("--layer", default=None, help="CHANNEL_LAYERS alias")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            layer = require_queue_layer(options["layer"], "dead letters")
            asyncio.run(self._run(layer, options))
        except LayerqError as exc:
            raise CommandError(str(exc)) from exc

    async def _run(self, layer: Any, options: dict[str, Any]) -> None:
        channel = options["channel"]
        if options["requeue"]:
            count = await layer.requeue_dead(channel, options["ids"])
            self.stdout.write(f"requeued {count} dead letter(s) to {channel!r}")
            return
        for letter in await layer.dead_letters(channel, options["limit"]):
            self.stdout.write(
                json.dumps(
                    {
                        "id": letter.id,
                        "job_id": letter.job_id,
                        "failed_at": letter.failed_at,
                        "reason": letter.reason,
                        "type": (letter.message or {}).get("type"),
                    }
                )
            )
