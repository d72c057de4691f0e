"""Key layout, host selection and the Lua scripts of the Redis layer.

Every key of one channel carries the hash tag ``{prefix:channel}`` so Redis
Cluster keeps a channel in one slot and a script may touch all of it::

    {prefix:channel}:msg        HASH  id -> payload (msgpack)    every stored message
    {prefix:channel}:ready      LIST  ids, FIFO                  ready to be taken
    {prefix:channel}:delay      ZSET  id -> due time             delayed sends and retries
    {prefix:channel}:lease      ZSET  id -> lease deadline       claimed, not yet settled
    {prefix:channel}:att        HASH  id -> deliveries           also the lease token
    {prefix:channel}:rel        HASH  id -> releases             deliveries not counted
    {prefix:channel}:recl       SET   ids whose lease expired    -> Delivery.reclaimed
    {prefix:channel}:exp        ZSET  id -> expiry               plain (non-job) messages
    {prefix:channel}:wake       LIST  wake-up tokens             BLPOP-ed by idle receivers
    {prefix:channel}:dead       HASH  id -> payload              dead letters
    {prefix:channel}:deadinfo   HASH  id -> [reason, at, job]    why they died
    {prefix:channel}:deadq      ZSET  id -> failed_at            dead letters, oldest first
    {prefix:channel}:job:<id>   HASH  JobRecord fields           the job record, once
                                                                 its job was first taken
                                                                 (while it waits, its
                                                                 record is read from its
                                                                 payload in :msg)
    {prefix:channel}:done:<id>  LIST  a token, 10 s TTL          wakes result waiters
    prefix:loc:<job id>         STRING channel                   finds a record by job id
                                                                 (its own slot: written by
                                                                 pipelined commands, never
                                                                 by a script)
    prefix:group:<group>        ZSET  channel -> joined at       group members

A job message's id is its job id; a plain message gets a random one starting
with ``.`` (the scripts tell jobs from plain messages by that dot). The
channel of a process-local name (``a.b!c``) is its non-local part (``a.b!``):
one list per process, demultiplexed by the receiving process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigurationError

SCRIPT_NAMES = ("enqueue", "claim", "settle", "cancel", "requeue", "progress", "watch")


@dataclasses.dataclass(frozen=True, slots=True)
class Script:
    """One Lua script, run by SHA1 (EVALSHA) and loaded on NOSCRIPT."""

    name: str
    source: str
    sha: str


def load_scripts() -> dict[str, Script]:
    """Read the ``redis_*.lua`` files next to this module."""
    scripts = {}
    for name in SCRIPT_NAMES:
        source = Path(__file__).with_name(f"redis_{name}.lua").read_text(encoding="utf-8")
        sha = hashlib.sha1(source.encode()).hexdigest()
        scripts[name] = Script(name, source, sha)
    return scripts


def channel_base(prefix: str, channel: str) -> str:
    """The hash-tagged base of a channel's keys (``channel`` already non-local)."""
    return f"{{{prefix}:{channel}}}"


def messages_key(prefix: str, channel: str) -> str:
    """The channel's hash of stored messages by id."""
    return f"{channel_base(prefix, channel)}:msg"


def record_key(prefix: str, channel: str, job_id: str) -> str:
    return f"{channel_base(prefix, channel)}:job:{job_id}"


def done_key(prefix: str, channel: str, job_id: str) -> str:
    """Where a watched job's end leaves a wake-up token (same slot as its record)."""
    return f"{channel_base(prefix, channel)}:done:{job_id}"


def locator_key(prefix: str, job_id: str) -> str:
    return f"{prefix}:loc:{job_id}"


def group_key(prefix: str, group: str) -> str:
    return f"{prefix}:group:{group}"


def scan_patterns(prefix: str) -> list[str]:
    """SCAN MATCH patterns covering every key of ``prefix`` and nothing else."""
    escaped = "".join(f"\\{c}" if c in "*?[]\\{}" else c for c in prefix)
    return [f"\\{{{escaped}:*", f"{escaped}:*"]


# --- hosts -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Host:
    """One Redis server of the layer and the keyword arguments for its client."""

    name: str  #: stable identity for rendezvous hashing (the address)
    url: str | None
    kwargs: dict[str, Any]


def parse_hosts(hosts: Sequence[Any] | None) -> list[Host]:
    """channels_redis-style ``hosts``: URL strings, or dicts with an ``address``."""
    if not hosts:
        hosts = ["redis://localhost:6379/0"]
    if isinstance(hosts, str | dict):
        raise ConfigurationError("RedisChannelLayer hosts must be a list")
    parsed = []
    for entry in hosts:
        if isinstance(entry, str):
            parsed.append(Host(entry, entry, {}))
            continue
        if isinstance(entry, list | tuple) and len(entry) == 2:
            host, port = entry
            parsed.append(Host(f"{host}:{port}", None, {"host": host, "port": int(port)}))
            continue
        if not isinstance(entry, dict) or "address" not in entry:
            raise ConfigurationError(f"invalid Redis host {entry!r}: use a URL or a dict")
        kwargs = {k: v for k, v in entry.items() if k != "address"}
        address = entry["address"]
        if isinstance(address, str):
            parsed.append(Host(address, address, kwargs))
        else:
            host, port = address
            kwargs.update(host=host, port=int(port))
            parsed.append(Host(f"{host}:{port}", None, kwargs))
    for host_ in parsed:
        if host_.url is not None and urlsplit(host_.url).scheme not in {
            "redis",
            "rediss",
            "unix",
        }:
            raise ConfigurationError(f"invalid Redis URL {host_.url!r}")
    return parsed


def pick_host(name: str, hosts: Sequence[Host]) -> int:
    """Rendezvous hashing: the host index for ``name``.

    Adding or removing a host moves only the names that hash to it, and every
    process agrees without coordination as long as they list the same hosts.
    """
    if len(hosts) == 1:
        return 0
    key = name.encode()
    scores = [zlib.crc32(key, zlib.crc32(host.name.encode())) for host in hosts]
    return scores.index(max(scores))
