"""Events the test suite sends."""

import layerq


class Add(layerq.Event, type="math.add", channel="math"):
    a: int
    b: int


class Multiply(layerq.Event, type="math.multiply", channel="math"):
    a: int
    b: int


class Fail(layerq.Event, type="math.fail", channel="math"):
    message: str = "boom"


class Flaky(layerq.Event, type="math.flaky", channel="math"):
    """Fails until its attempt number reaches ``succeed_on``."""

    succeed_on: int


class Steps(layerq.Event, type="slow.steps", channel="slow"):
    steps: int = 3
    pause: float = 0.01


class Sleep(layerq.Event, type="slow.sleep", channel="slow"):
    seconds: float
    marker: str = ""


class SyncAdd(layerq.Event, type="sync.add", channel="sync"):
    a: int
    b: int


class SyncSleep(layerq.Event, type="sync.sleep", channel="sync"):
    seconds: float


class Again(layerq.Event, type="math.again", channel="math"):
    """Asks for a retry (layerq.Retry) on its first attempt."""
