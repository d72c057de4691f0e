"""The public API is `layerq.__all__`, and every name in it is documented."""

from __future__ import annotations

import re
from pathlib import Path

import layerq
import layerq.tasks

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_public_name_exists() -> None:
    """Each name in __all__ is importable from layerq."""
    missing = [name for name in layerq.__all__ if not hasattr(layerq, name)]
    assert missing == []


def test_every_public_name_is_documented_in_the_readme() -> None:
    """The README shows each public name of layerq and layerq.tasks in code (a fenced
    block or `inline`), not merely as a word of its prose ("send", "Job" and "Event"
    are English too)."""
    text = README.read_text()
    code = "\n".join(
        re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
        + re.findall(r"`([^`\n]+)`", text)
    )
    public = [*layerq.__all__, *layerq.tasks.__all__]
    undocumented = [name for name in public if not re.search(rf"\b{name}\b", code)]
    assert undocumented == []


def test_design_names_are_part_of_the_api() -> None:
    """The names DESIGN.md fixes are exported."""
    fixed = {
        "Event",
        "send",
        "asend",
        "Job",
        "JobStatus",
        "JobFailed",
        "QueueFull",
        "WorkerConsumer",
        "AsyncWorkerConsumer",
        "JobEventsConsumer",
        "user_group",
    }
    assert fixed <= set(layerq.__all__)


def test_layer_backends_load_by_dotted_path() -> None:
    """CHANNEL_LAYERS can name layerq.layers.SQLiteChannelLayer and RedisChannelLayer."""
    from channels.layers import BaseChannelLayer

    from layerq import layers

    assert issubclass(layers.SQLiteChannelLayer, BaseChannelLayer)
    assert issubclass(layers.RedisChannelLayer, layers.QueueLayer)


def test_importing_layerq_opens_no_connection() -> None:
    """A fresh interpreter imports layerq without reading settings."""
    import subprocess
    import sys

    code = "import layerq, layerq.layers; print('ok')"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "", "PYTHONPATH": str(README.parent)},
    )
    assert out.stdout.strip() == "ok", out.stderr


def test_the_readme_redis_configuration_is_valid() -> None:
    """The README's RedisChannelLayer CONFIG example builds a layer (no connection made)."""
    from layerq.layers import RedisChannelLayer

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    (example,) = [block for block in blocks if "rediss://" in block]
    namespace: dict[str, object] = {}
    exec(example, namespace)
    config = namespace["CHANNEL_LAYERS"]["default"]  # type: ignore[index]
    layer = RedisChannelLayer(**config["CONFIG"])
    assert [host.name for host in layer.hosts] == [
        "rediss://:password@redis-a:6380/0",
        "redis://redis-b:6379/0",
    ]
    assert layer.get_capacity("images") == 10_000
    assert layer.get_capacity("http.request.body") == 200
