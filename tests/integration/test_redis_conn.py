"""The Redis layer's own connections: set-up, pipelining, cancellation, threads, options."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from layerq.errors import ConfigurationError, TransportError
from layerq.layers import redis_conn
from layerq.layers.redis import RedisChannelLayer
from layerq.layers.redis_conn import SyncPipe, Target
from layerq.layers.redis_keys import Host, parse_hosts
from layerq.layers.redis_pipe import AsyncPipe, BlockingPool
from layerq.testing import RedisServer, free_port
from tests.integration.test_redis import job

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private server with a password, also listening on a unix socket."""
    socket_path = tmp_path_factory.mktemp("sock") / "redis.sock"
    args = ("--requirepass", "s3cret", "--unixsocket", str(socket_path))
    with RedisServer(extra_args=args) as server:
        yield server


def _socket_of(server: RedisServer) -> str:
    return server.extra_args[server.extra_args.index("--unixsocket") + 1]


@pytest.mark.parametrize("via", ["tcp", "unix"])
async def test_password_and_db_from_the_url_are_used(guarded_server: RedisServer, via: str) -> None:
    """AUTH and SELECT come from the URL, over TCP and over a unix socket."""
    if via == "tcp":
        url = f"redis://:s3cret@127.0.0.1:{guarded_server.port}/3"
    else:
        url = f"unix://:s3cret@{_socket_of(guarded_server)}?db=3"
    layer = RedisChannelLayer(hosts=[url], prefix="guarded")
    try:
        await layer.send("c", {"type": "t", "n": 1})
        assert await asyncio.wait_for(layer.receive("c"), 5) == {"type": "t", "n": 1}
        message, record = job("jobs")
        layer.enqueue_sync("jobs", message, record)  # the sync connection authenticates too
        inspector = redis.Redis(port=guarded_server.port, password="s3cret", db=3)
        try:
            assert inspector.hexists("{guarded:jobs}:msg", record.id)
            assert redis.Redis(port=guarded_server.port, password="s3cret").dbsize() == 0
        finally:
            inspector.close()
    finally:
        await layer.flush()
        await layer.close()


async def test_an_acl_username_from_the_url_or_the_options_is_used(
    guarded_server: RedisServer,
) -> None:
    """A Redis 6+ ACL user authenticates, given in the URL or as username/password."""
    admin = redis.Redis(port=guarded_server.port, password="s3cret")
    try:
        admin.acl_setuser(
            "jobs", enabled=True, passwords=["+pw1"], keys=["*"], channels=["*"],
            commands=["+@all"],
        )  # fmt: skip
    finally:
        admin.close()
    for host in (
        f"redis://jobs:pw1@127.0.0.1:{guarded_server.port}/0",
        {"address": ("127.0.0.1", guarded_server.port), "username": "jobs", "password": "pw1"},
    ):
        layer = RedisChannelLayer(hosts=[host], prefix="acl")
        try:
            await layer.send("c", {"type": "t", "who": "jobs"})
            assert await asyncio.wait_for(layer.receive("c"), 5) == {"type": "t", "who": "jobs"}
        finally:
            await layer.flush()
            await layer.close()
    wrong = RedisChannelLayer(
        hosts=[f"redis://jobs:nope@127.0.0.1:{guarded_server.port}/0"], prefix="acl"
    )
    try:
        with pytest.raises(redis.ResponseError, match=r"WRONGPASS|invalid"):
            await wrong.send("c", {"type": "t"})
    finally:
        await wrong.close()


async def test_a_wrong_password_is_an_error_not_a_hang(guarded_server: RedisServer) -> None:
    """Redis refusing the credentials surfaces at once as Redis's own error."""
    layer = RedisChannelLayer(hosts=[f"redis://:wrong@127.0.0.1:{guarded_server.port}/0"])
    try:
        with pytest.raises(redis.ResponseError, match=r"WRONGPASS|invalid password"):
            await layer.send("c", {"type": "t"})
    finally:
        await layer.close()


def test_unknown_connection_options_are_refused() -> None:
    """A misspelt option is a ConfigurationError; redis-py's socket options are accepted."""
    with pytest.raises(ConfigurationError, match="socket_tiemout"):
        RedisChannelLayer(connection_kwargs={"socket_tiemout": 3})
    RedisChannelLayer(connection_kwargs={"socket_timeout": 3, "retry_on_timeout": True})
    RedisChannelLayer(hosts=[{"address": "redis://localhost:6379/0", "password": "x"}])


async def test_concurrent_callers_share_a_connection_and_get_their_own_replies(
    redis_server: RedisServer,
) -> None:
    """Hundreds of calls from concurrent tasks, pipelined on one connection, each matched."""
    pipe = AsyncPipe(Target(parse_hosts([redis_server.url])[0], {}))
    try:
        key = "pipe:concurrent"
        replies = await asyncio.gather(*(pipe.call([("INCR", key)]) for _ in range(500)))
        assert sorted(reply for (reply,) in replies) == list(range(1, 501))
        assert await pipe.call([("DEL", key)]) == [1]
    finally:
        await pipe.close()


async def test_a_cancelled_caller_does_not_shift_the_replies_of_the_next(
    redis_server: RedisServer,
) -> None:
    """A caller cancelled while Redis blocks: its late reply is dropped, not handed on."""
    pipe = AsyncPipe(Target(parse_hosts([redis_server.url])[0], {}))
    try:
        blocked = asyncio.create_task(pipe.call([("BLPOP", "pipe:never", 0.3)]))
        await asyncio.sleep(0.05)
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        # Queued behind the BLPOP on the same connection: it must get ITS reply.
        assert await pipe.call([("ECHO", "mine")]) == [b"mine"]
    finally:
        await pipe.close()


async def test_a_killed_connection_is_reopened_by_the_next_call(redis_server: RedisServer) -> None:
    """CLIENT KILL from outside: the next call reconnects (and retries) by itself."""
    pipe = AsyncPipe(Target(parse_hosts([redis_server.url])[0], {}))
    admin = redis.Redis(port=redis_server.port)
    try:
        await pipe.call([("CLIENT", "SETNAME", "victim")])
        victims = [c for c in admin.client_list() if c["name"] == "victim"]
        assert len(victims) == 1
        admin.client_kill_filter(_id=victims[0]["id"])
        assert await pipe.call([("ECHO", "back")]) == [b"back"]
    finally:
        admin.close()
        await pipe.close()


async def _clients_settle_at(admin: redis.Redis, count: int) -> int:
    """The server's connected clients once they reach ``count`` (or after 3 s)."""
    for _ in range(60):
        clients = int(admin.info("clients")["connected_clients"])
        if clients == count:
            break
        await asyncio.sleep(0.05)
    return clients


async def test_a_pipe_closed_while_it_connects_keeps_no_connection() -> None:
    """close() during the connect: the call fails, and the new connection is closed."""
    with RedisServer() as server:
        admin = redis.Redis(port=server.port)
        try:
            admin.ping()
            pipe = AsyncPipe(Target(parse_hosts([server.url])[0], {}))
            calling = asyncio.create_task(pipe.call([("PING",)]))
            await asyncio.sleep(0)  # the call has started to connect
            assert admin.info("clients")["connected_clients"] == 1
            await pipe.close()
            with pytest.raises(RedisConnectionError):
                await calling
            assert await _clients_settle_at(admin, 1) == 1
        finally:
            admin.close()


@pytest.mark.parametrize("ending", ["pool closed", "tasks cancelled"])
async def test_a_pipe_released_mid_block_is_closed_however_its_wait_ends(ending: str) -> None:
    """A pipe released mid-block, then at once the pool closed, or every other task
    cancelled (as asyncio.run does as it ends): no socket is left open."""
    with RedisServer() as server:
        admin = redis.Redis(port=server.port)
        pool = BlockingPool(Target(parse_hosts([server.url])[0], {}))
        try:
            pipe = pool.acquire()
            blocked = asyncio.create_task(pipe.call([("BLPOP", "pool:never", 20)]))
            for _ in range(60):
                if admin.info("clients")["blocked_clients"] == 1:
                    break
                await asyncio.sleep(0.05)
            blocked.cancel()
            with pytest.raises(asyncio.CancelledError):
                await blocked
            pool.release(pipe)  # its BLPOP is still in flight: it is to close
            if ending == "pool closed":
                await pool.close()
            else:
                for task in asyncio.all_tasks() - {asyncio.current_task()}:
                    task.cancel()
            assert await _clients_settle_at(admin, 1) == 1
            await pool.close()
            with pytest.raises(RedisConnectionError):
                pool.acquire()
        finally:
            admin.close()


def test_pipelined_batches_run_again_after_the_connection_is_killed(
    redis_server: RedisServer,
) -> None:
    """call_each writes a batch before reading the last one's replies; killed in between,
    it reopens the connection and runs the unanswered batches again, in order."""
    pipe = SyncPipe(Target(parse_hosts([redis_server.url])[0], {}))
    admin = redis.Redis(port=redis_server.port)
    keys = [f"each:{n}" for n in range(4)]

    def batches() -> Iterator[list[redis_conn.Call]]:
        yield [("CLIENT", "SETNAME", "streamer"), ("SET", keys[0], "0")]
        # The batch above is written, its replies not read yet.
        (victim,) = [c for c in admin.client_list() if c["name"] == "streamer"]
        admin.client_kill_filter(_id=victim["id"])
        for n in range(1, 4):
            yield [("SET", keys[n], str(n))]

    try:
        replies = list(pipe.call_each(batches()))
        assert replies == [[b"OK", b"OK"], [b"OK"], [b"OK"], [b"OK"]]
        assert admin.mget(keys) == [b"0", b"1", b"2", b"3"]
        # Left half-read (the caller stopped early), the connection is not reused.
        stream = pipe.call_each([[("ECHO", "a")], [("ECHO", "b")]])
        assert next(stream) == [b"a"]
        stream.close()
        assert pipe.call([("ECHO", "c")]) == [b"c"]
    finally:
        admin.delete(*keys)
        admin.close()
        pipe.close()


def test_sync_callers_in_many_threads_each_get_their_own_connection(
    redis_server: RedisServer,
) -> None:
    """enqueue_sync from 8 threads at once: every job stored once, no crossed replies."""
    layer = RedisChannelLayer(hosts=[redis_server.url], prefix="threads")
    records = [job("jobs") for _ in range(400)]
    errors: list[BaseException] = []

    def produce(part: int) -> None:
        try:
            for message, record in records[part::8]:
                layer.enqueue_sync("jobs", message, record)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    async def check() -> None:
        try:
            assert await layer.pending("jobs") == 400
            for _, record in records[::50]:
                found = await layer.get_record(record.id)
                assert found is not None
                assert found.id == record.id
        finally:
            await layer.flush()
            await layer.close()

    asyncio.run(check())


def test_sync_pipe_survives_a_server_restart(tmp_path: Path) -> None:
    """A sync connection broken by a restart is replaced on the next call."""
    with RedisServer() as server:
        pipe = SyncPipe(Target(Host(server.url, server.url, {}), {}))
        try:
            assert pipe.call([("SET", "k", "1")]) == [b"OK"]
            server.restart()
            assert pipe.call([("GET", "k")]) == [None]  # a fresh, empty server
        finally:
            pipe.close()


def test_a_silent_server_is_a_transport_error_for_sync_callers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that accepts and never answers ends a sync call, not blocks it."""
    monkeypatch.setattr(redis_conn, "READ_TIMEOUT", 0.2)
    with socket.socket() as silent:  # connections complete in the backlog, unread
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        layer = RedisChannelLayer(hosts=[f"redis://127.0.0.1:{silent.getsockname()[1]}"])
        began = time.monotonic()
        with pytest.raises(TransportError, match="Redis unreachable"):
            layer.get_record_sync("some-job")
        # Every try waited out the 0.2 s read timeout, then gave up in bounded time.
        assert 0.2 * redis_conn.RETRIES <= time.monotonic() - began < 20


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a certificate for localhost (fit for a server and for a
    client), made by the openssl CLI.

    With the extensions Python 3.13's default context insists on
    (VERIFY_X509_STRICT): key usage on the CA, key identifiers on both.
    """
    ca_key, ca_cert = directory / "ca.key", directory / "ca.crt"
    key, request, cert = directory / "s.key", directory / "s.csr", directory / "s.crt"
    extensions = directory / "ext.cnf"
    extensions.write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    commands = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-keyout", ca_key, "-out", ca_cert],
        ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
         "-keyout", key, "-out", request],
        ["x509", "-req", "-in", request, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
         "-days", "2", "-extfile", extensions, "-out", cert],
    ]  # fmt: skip
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl not found: install it with `apt-get install -y openssl`")
    for command in commands:
        subprocess.run([openssl, *map(str, command)], check=True, capture_output=True, timeout=60)
    return ca_cert, cert, key


async def _works_over(url: str, options: dict[str, str]) -> None:
    """A layer with these connection options sends, receives and reads records,
    on its async and its sync connections."""
    layer = RedisChannelLayer(hosts=[url], connection_kwargs=options)
    try:
        await layer.send("c", {"type": "t", "over": "tls"})
        assert await asyncio.wait_for(layer.receive("c"), 5) == {"type": "t", "over": "tls"}
        message, record = job("jobs")
        layer.enqueue_sync("jobs", message, record)
        found = layer.get_record_sync(record.id)
        assert found is not None
        assert found.id == record.id
    finally:
        await layer.flush()
        await layer.close()


async def _refused_over(url: str, options: dict[str, str], match: str | None = None) -> None:
    """A layer with these connection options gets TransportError, async and sync."""
    layer = RedisChannelLayer(hosts=[url], connection_kwargs=options)
    try:
        with pytest.raises(TransportError, match=match):
            await layer.send("c", {"type": "t"})
        with pytest.raises(TransportError, match=match):
            layer.get_record_sync("nope")
    finally:
        await layer.close()


@contextlib.contextmanager
def _tls_server(directory: Path, clients: bool) -> Iterator[tuple[str, Path, Path, Path]]:
    """A private server on TLS (asking clients for certificates when ``clients``):
    its rediss:// URL, and the CA, certificate and key."""
    ca_cert, cert, key = _certificates(directory)
    tls_port = free_port()
    args = (
        "--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(ca_cert),
        "--tls-auth-clients", "yes" if clients else "no",
    )  # fmt: skip
    with RedisServer(extra_args=args):
        yield f"rediss://localhost:{tls_port}/0", ca_cert, cert, key


async def test_tls_with_the_servers_ca_verifies_and_works(tmp_path: Path) -> None:
    """rediss:// with ssl_ca_certs: the certificate is checked, then the layer works as usual."""
    with _tls_server(tmp_path, clients=False) as (url, ca_cert, _, _):
        await _works_over(url, {"ssl_ca_certs": str(ca_cert)})
        # Without the CA the server's certificate is refused: no silent downgrade.
        await _refused_over(url, {}, match="CERTIFICATE_VERIFY_FAILED")


async def test_tls_client_certificates_and_unverified_servers(tmp_path: Path) -> None:
    """ssl_certfile and ssl_keyfile present a client certificate to a server that asks
    for one (refused without it); ssl_cert_reqs="none" connects without the CA."""
    with _tls_server(tmp_path, clients=True) as (url, ca_cert, cert, key):
        client = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
        verified, unverified = {"ssl_ca_certs": str(ca_cert)}, {"ssl_cert_reqs": "none"}
        for options in ({**verified, **client}, {**unverified, **client}):
            await _works_over(url, options)
        # Without a client certificate the server refuses the connection.
        await _refused_over(url, verified)


def test_the_layer_runs_on_uvloop(redis_server: RedisServer) -> None:
    """uvloop (uvicorn's default loop) hands protocols transports that are not
    asyncio.Transport subclasses; every kind of connection must still work."""
    import uvloop  # a dev dependency: the test fails, never skips, without it

    async def scenario() -> None:
        layer = RedisChannelLayer(hosts=[redis_server.url], prefix="uvloop")
        try:
            await layer.send("plain", {"type": "t", "n": 1})
            assert await asyncio.wait_for(layer.receive("plain"), 5) == {"type": "t", "n": 1}
            message, record = job("uvjobs")
            await layer.enqueue("uvjobs", message, record)
            # wait > 0 on one drained channel: the blocking take of the pool connection
            (delivery,) = await layer.claim(["uvjobs"], 1, 30.0, 5.0)
            assert await layer.ack(delivery, "done", 60.0)
            found = await layer.wait_record(record.id, 5.0)
            assert found is not None
            assert found.result == "done"
        finally:
            await layer.flush()
            await layer.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert type(runner.get_loop()).__module__.startswith("uvloop")
        runner.run(scenario())
