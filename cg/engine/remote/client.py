"""JSON over HTTP to one server, bounded in time and size; its failures become cg's errors,
naming the URL and what the server sent.

CG_SERVER_TIMEOUT bounds each whole request, not each read: a server that sends keep-alive
comments forever cannot hold cg past it. A streamed answer is read by a helper thread, so the
stream can hand its reader a sign of life (None) at least once a second while the server is
silent, and a caller with a time budget (--max-time) can act on it.

Plain HTTP with the standard library: one connection per request, so threads (eval --jobs) can
share an engine.

Credentials: a user name and password in the URL (http://user:pass@host:8080) go as HTTP Basic
auth, an API key (--api-key, CG_API_KEY) as a Bearer token; both at once are refused, as both
would be the one Authorization header. A URL is only ever printed through display_url(), which
drops them.
"""

from __future__ import annotations

import base64
import http.client
import json
import queue
import socket
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

from cg import settings
from cg.errors import AuthError, ServerError, ServerRejectedError, ServerUnreachableError, UsageError
from cg.request import header_safe

CONNECT_TIMEOUT = 10.0
TICK = 1.0  # the longest a stream's reader waits without hearing from it
MAX_BODY = 64 * 2**20  # a JSON answer cg reads (model lists, vocabulary lookups) is far smaller
MAX_LINE = 16 * 2**20  # one event of a stream


def shown(data: bytes | str | object, limit: int = 120) -> str:
    """What a server sent, short enough for an error line."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data if isinstance(data, str) else \
        json.dumps(data, default=str)
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


def display_url(url: str) -> str:
    """A server URL as cg prints it (errors, --json, doctor) and sends requests to: without the
    user name, password, query or fragment, which may hold secrets. Everything up to the last @
    goes, so that a password holding a raw / ? or # (which URL parsers end the host at) does
    not show either."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "http", url
    rest = rest.rpartition("@")[2]
    for end in "?#":
        rest = rest.partition(end)[0]
    return f"{scheme}://{rest.rstrip('/')}"


def open_server(url: str, api_key: str | None = None) -> Http:
    """The server at url (http:// when it names no scheme), with the Authorization header cg
    sends it: the URL's user:password as HTTP Basic auth, or api_key as a Bearer token."""
    shown_url = display_url(url)
    parts = _checked(url, shown_url)
    return Http(shown_url, _authorization(parts.username, parts.password, api_key or None, shown_url))


def _checked(url: str, shown_url: str) -> SplitResult:
    """url's parts, refused (naming only shown_url) where cg would send it anywhere but its host."""
    bad_host = UsageError(f"the server URL {shown_url} has no valid host and port",
                          "e.g. http://127.0.0.1:8080; a port is a number from 0 to 65535.")
    try:
        parts = urlsplit(url if "://" in url else f"http://{url}")
    except ValueError:  # a [ that does not close
        raise bad_host from None
    if "@" in parts.path + parts.query + parts.fragment:
        raise UsageError(f"the server URL {shown_url} has an @ after its host",
                         "Percent-encode / ? # and @ in a user name or password (%2F %3F %23 %40).")
    if parts.query or parts.fragment:
        raise UsageError(f"the server URL {shown_url} has a query or fragment (? or #)",
                         "Give the server's base URL, e.g. http://127.0.0.1:8080 or http://host:8000/v1.")
    if parts.scheme not in ("http", "https"):
        raise UsageError(f"the server URL {shown_url} is not http:// or https://", "e.g. http://127.0.0.1:8080")
    try:
        parts.port  # noqa: B018 -- it checks the port
    except ValueError:
        raise bad_host from None
    if not parts.hostname:
        raise bad_host
    return parts


def _authorization(user: str | None, password: str | None, api_key: str | None, shown_url: str) -> str | None:
    if user is None and password is None:
        if api_key is None:
            return None
        if not header_safe(api_key):
            raise UsageError("the API key holds characters an HTTP header cannot carry (spaces are fine)",
                             "Check --api-key / CG_API_KEY: no line breaks or control characters.")
        return f"Bearer {api_key}"
    if api_key is not None:
        raise UsageError(f"the server URL {shown_url} holds a user name and password, and an API key is given too",
                         "Give one: cg sends the URL's user:password as HTTP Basic auth and --api-key / CG_API_KEY "
                         "as a Bearer token, in the same header.")
    pair = f"{unquote(user or '')}:{unquote(password or '')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


@dataclass(frozen=True)
class Http:
    """A server reached at base (as display_url gives it) with an Authorization header, which no
    repr shows."""

    base: str  # scheme://host:port[/prefix], no trailing slash, no credentials
    authorization: str | None = field(default=None, repr=False)

    def at(self, base: str) -> Http:
        return Http(display_url(base), self.authorization)

    def _send(self, method: str, path: str, body: Any, deadline: float
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        parts = urlsplit(self.base)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname or "127.0.0.1", parts.port, timeout=CONNECT_TIMEOUT)
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.authorization:
            headers["Authorization"] = self.authorization
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(max(0.001, deadline - time.monotonic()))
            conn.request(method, parts.path.rstrip("/") + path, json.dumps(body) if body is not None else None, headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            conn.close()
            if time.monotonic() >= deadline:
                raise self.timed_out() from None
            raise ServerUnreachableError(f"cannot reach the server at {self.base}: {_reason(exc)}") from None

    def timed_out(self) -> ServerUnreachableError:
        return ServerUnreachableError(f"the server at {self.base} did not finish answering in time (timed out)",
                                      "It may be overloaded; CG_SERVER_TIMEOUT sets how long a request may take.")

    def call(self, method: str, path: str, body: Any = None, *, missing_ok: bool = False) -> Any:
        """A request's JSON answer; None for a 404 when missing_ok (probing what the server has)."""
        deadline = time.monotonic() + settings.server_timeout()
        conn, resp = self._send(method, path, body, deadline)
        try:
            data = self._read_body(resp, path, deadline)
        finally:
            conn.close()
        if resp.status == 404 and missing_ok:
            return None
        self.check(resp.status, data, path)
        try:
            return json.loads(data)
        except ValueError:
            if missing_ok:
                return None
            raise ServerError(f"the server at {self.base} answered {path} with something that is not JSON: "
                              + shown(data)) from None

    def _read_body(self, resp: http.client.HTTPResponse, path: str, deadline: float) -> bytes:
        data = bytearray()
        try:
            while chunk := resp.read1(65536):
                data += chunk
                if len(data) > MAX_BODY:
                    raise ServerError(f"the server at {self.base} answered {path} with over "
                                      f"{MAX_BODY // 2**20} MiB; cg expected a short JSON answer")
                if time.monotonic() >= deadline:
                    raise self.timed_out()
        except TimeoutError:
            raise self.timed_out() from None
        except (OSError, http.client.HTTPException) as exc:
            raise ServerError(f"the server at {self.base} broke off its answer to {path}: {_reason(exc)}") from None
        return bytes(data)

    def events(self, path: str, body: Any) -> Generator[dict[str, Any] | None, None, None]:
        """The JSON objects of a server-sent event stream, and None at least once a second while
        the server sends nothing new (keep-alives, silence). Closing the iterator closes the
        connection, which stops llama-server generating."""
        deadline = time.monotonic() + settings.server_timeout()
        conn, resp = self._send("POST", path, body, deadline)
        lines: queue.Queue[bytes | BaseException] = queue.Queue()
        try:
            if resp.status != 200:
                self.check(resp.status, self._read_body(resp, path, deadline), path)
            threading.Thread(target=_read_lines, args=(resp, lines), daemon=True).start()
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self.timed_out()
                try:
                    item = lines.get(timeout=min(TICK, remaining))
                except queue.Empty:
                    yield None
                    continue
                if isinstance(item, BaseException):
                    if isinstance(item, TimeoutError):
                        raise self.timed_out()
                    raise ServerError(f"the server at {self.base} dropped the stream: {_reason(item)}")
                if not item:
                    raise ServerError(f"the server at {self.base} closed the stream before the completion finished")
                done, event = self._event(item)
                if done:
                    return
                yield event
        finally:
            _close(conn)

    def _event(self, line: bytes) -> tuple[bool, dict[str, Any] | None]:
        """One line of the stream: (the end of it, an event's object or None for a comment or a
        keep-alive)."""
        text = line.decode("utf-8", "replace").strip()
        if not text.startswith("data:"):
            return False, None
        payload = text[5:].strip()
        if payload == "[DONE]":
            return True, None
        if not payload:
            return False, None
        try:
            event = json.loads(payload)
        except ValueError:
            raise ServerError(f"the server at {self.base} sent an event that is not JSON: {shown(payload)}") from None
        if not isinstance(event, dict):
            raise ServerError(f"the server at {self.base} sent an event that is not a JSON object: {shown(payload)}")
        if "error" in event:
            raise ServerError(f"the server at {self.base} failed: {message_of(event)}")
        return False, event

    def check(self, status: int, data: bytes, path: str) -> None:
        if status < 400:
            return
        message = message_of(data)
        if status in (401, 403):
            raise AuthError(f"the server at {self.base} refused the request ({status}): {message}",
                            "Pass the server's key with --api-key or CG_API_KEY (or user:password@ in its URL "
                            "for HTTP Basic auth).")
        if status >= 500:
            raise ServerError(f"the server at {self.base} failed ({status}) on {path}: {message}")
        raise ServerRejectedError(f"the server at {self.base} rejected {path} ({status}): {message}")


def _read_lines(resp: http.client.HTTPResponse, out: queue.Queue[bytes | BaseException]) -> None:
    """The helper thread: the stream's lines into out, then b"" at its end or the exception."""
    try:
        while True:
            line = resp.readline(MAX_LINE + 1)
            if len(line) > MAX_LINE:
                raise ValueError(f"an event of over {MAX_LINE // 2**20} MiB")
            out.put(line)
            if not line:
                return
    except BaseException as exc:
        out.put(exc)


def _close(conn: http.client.HTTPConnection) -> None:
    """Close now, also waking the helper thread blocked in a read."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    conn.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def message_of(data: bytes | dict[str, Any]) -> str:
    """The message of an error answer, whatever shape the server gives it."""
    try:
        body = json.loads(data) if isinstance(data, bytes) else data
    except ValueError:
        return data.decode("utf-8", "replace")[:200] if isinstance(data, bytes) else ""
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)[:300]
    return str(error)[:300]
