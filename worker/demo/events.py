"""The jobs the demo page can submit."""

from typing import Annotated

import msgspec

import layerq

Steps = Annotated[int, msgspec.Meta(ge=1, le=100)]
Pause = Annotated[float, msgspec.Meta(ge=0.0, le=5.0)]


class Render(layerq.Event, type="demo.render", channel="demo"):
    """A slow job: ``steps`` steps of ``pause`` seconds each, reporting progress."""

    steps: Steps = 8
    pause: Pause = 0.4


class Explode(layerq.Event, type="demo.explode", channel="demo"):
    """A job that makes some progress, then raises: shows retries and failure."""

    steps: Steps = 8
    pause: Pause = 0.4
    fail_at: Steps = 3
