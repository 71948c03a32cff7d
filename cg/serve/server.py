"""Running cg's own server: the key, the listening socket, the model loaded once, the worker, and
uvicorn until Ctrl-C, SIGTERM or SIGHUP (then `cg serve` exits 130, 143 or 129, as cg does)."""

from __future__ import annotations

import asyncio
import ipaddress
import signal
import socket
from collections.abc import Callable, Generator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from cg import report
from cg.engine.factory import get_engine
from cg.errors import UsageError
from cg.request import Request
from cg.serve.app import Server
from cg.serve.dialect import Served
from cg.serve.slots import Worker
from cg_core import interrupts

GRACE = 5  # seconds open connections get to finish once the server is told to stop
MAX_CONNECTIONS = 128  # beyond, uvicorn answers 503
HEADER_TIMEOUT = 10.0  # seconds a client may take to send a request's head (the body has app.BODY_TIMEOUT)


@dataclass(frozen=True)
class ServeSettings:
    run: Request  # the model and how it runs; each request sets its own limits and sampling
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    jobs: int = 1


def serve(settings: ServeSettings, on_ready: Callable[[str, str], None]) -> None:
    """Listen, load the model, and serve until a signal; on_ready(url, the model's label) once
    both are done."""
    if settings.jobs != 1:
        raise UsageError("cg's own server decodes one sequence at a time for now (--jobs 1)",
                         "For parallel slots run llama-server through cg: cg serve --llama-server --jobs N")
    sock = listen(settings.host, settings.port)
    try:
        engine = get_engine(settings.run)
        info = engine.info
        path = Path(info.name)
        served = Served(model=path.stem, path=str(path), n_ctx=info.n_ctx, slots=settings.jobs,
                        fim=info.special.has_fim)
        if not served.fim:
            report.warn(f"{info.label} has no FIM tokens: completions continue the prefix only")
        if not is_loopback(settings.host) and settings.api_key is None:
            report.warn(f"listening on {settings.host} without an API key: anyone who can reach this port can use "
                        "the model; set one with --api-key-file or CG_API_KEY")
        worker = Worker(engine, settings.run)
        worker.start()
        server = Server(worker, served, key=settings.api_key, loopback=is_loopback(settings.host),
                        model_size=path.stat().st_size if path.is_file() else 0)
        try:
            host, port = sock.getsockname()[:2]
            stopped_by = asyncio.run(_run(server, sock, worker, lambda: on_ready(url(host, port), info.label)))
        finally:
            worker.stop()
    finally:
        sock.close()
    if stopped_by is not None:
        report.say("Stopped cg serve.")
        raise interrupts.exception_for(stopped_by)


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the model loads: a taken port is a clean error now."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}: {exc.strerror or exc}", "Check --host.") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == 98:  # EADDRINUSE
            raise UsageError(f"port {port} on {host} is taken by another program",
                             f"Pick a free port with --port, or stop what listens on {port}.") from None
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}", "Check --host and --port.") \
            from None
    sock.set_inheritable(False)
    return sock


async def _run(server: Server, sock: socket.socket, worker: Worker, ready: Callable[[], None]) -> int | None:
    """uvicorn on the socket until a signal; the signal's number, or None if it ended by itself."""
    config = uvicorn.Config(server.app(), log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=GRACE, limit_concurrency=MAX_CONNECTIONS,
                            server_header=False, http=_TimedHeads)
    runner = _Uvicorn(config, worker)
    watcher = asyncio.ensure_future(_when_started(runner, ready))
    try:
        await runner.serve(sockets=[sock])
    finally:
        watcher.cancel()
    return runner.signals[0] if runner.signals else None


async def _when_started(runner: _Uvicorn, ready: Callable[[], None]) -> None:
    while not runner.started:
        await asyncio.sleep(0.02)
    ready()


class _TimedHeads(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request head has not arrived within
    HEADER_TIMEOUT: uvicorn waits for one forever, so MAX_CONNECTIONS clients that send half a
    head (a crashed plugin, a slowloris) would have every other client answered 503."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._expect_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._expect_head()

    def _expect_head(self) -> None:
        waiting_for = self.cycle  # a new request makes a new cycle
        self.loop.call_later(HEADER_TIMEOUT, self._head_late, waiting_for)

    def _head_late(self, waiting_for: object) -> None:
        answered = self.cycle is None or self.cycle.response_complete  # not one running (pipelined)
        if self.cycle is waiting_for and answered and not self.transport.is_closing():
            self.transport.close()


class _Uvicorn(uvicorn.Server):
    """uvicorn's server stopping on SIGHUP too, and cancelling the jobs at once: a stop must not
    wait for a completion to run out."""

    def __init__(self, config: uvicorn.Config, worker: Worker):
        super().__init__(config)
        self.worker = worker
        self.signals: list[int] = []

    @contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in interrupts.HANDLED}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.signals.append(sig)
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: do not wait for open connections
        self.should_exit = True
        self.worker.cancel_all()
