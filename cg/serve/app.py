"""The ASGI app: routes, the API key, bounded bodies, and the bridge to the worker.

A completion request is read (bounded in size and time), parsed by its API into a FimRequest,
queued for the worker, and answered whole or streamed. Whatever a client sends, the answer is a
status and a JSON body: a BadRequest is a 4xx, anything else a 500 without a traceback, and the
server stays up. A client that goes away cancels its job at the next decode step; one that never
reads its stream holds only its own connection (the worker never waits for a client).
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from cg import report
from cg.serve import infill_api, ollama_api, openai_api
from cg.serve.body import MAX_BODY, BadRequest, parse_json
from cg.serve.dialect import Api, Call, Served, dumps, ndjson, sse
from cg.serve.slots import Failed, Item, Job, Outcome, Text, Worker

BODY_TIMEOUT = 60.0  # seconds a client may take to send its request body
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

Handler = Callable[[Request], Awaitable[Response]]


def json_response(data: Any, status: int = 200) -> Response:
    return Response(dumps(data), status_code=status, media_type="application/json")


class Server:
    """The routes over one worker and its model."""

    def __init__(self, worker: Worker, served: Served, *, key: str | None, loopback: bool, model_size: int = 0):
        self.worker, self.served, self.key, self.loopback = worker, served, key, loopback
        self.model_size = model_size
        self.infill, self.ollama, self.openai = infill_api.InfillApi(), ollama_api.OllamaApi(), openai_api.OpenAiApi()

    def app(self) -> Starlette:
        infill, ollama, openai = self.infill, self.ollama, self.openai
        served = self.served
        routes = [
            Route("/health", self._public(lambda: {"status": "ok"}), methods=["GET"]),
            Route("/v1/health", self._public(lambda: {"status": "ok"}), methods=["GET"]),
            Route("/props", self._info(infill, lambda: infill_api.props(served)), methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            Route("/infill", self._completion(infill), methods=["POST"]),
            Route("/api/generate", self._completion(ollama), methods=["POST"]),
            Route("/api/tags", self._info(ollama, lambda: ollama_api.tags(served, self.model_size)), methods=["GET"]),
            Route("/api/show", self._info(ollama, lambda: ollama_api.show(served)), methods=["GET", "POST"]),
            Route("/api/version", self._info(ollama, ollama_api.version), methods=["GET"]),
            Route("/v1/completions", self._completion(openai), methods=["POST"]),
            Route("/v1/models", self._info(openai, lambda: openai_api.models(served)), methods=["GET"]),
            Route("/models", self._info(openai, lambda: openai_api.models(served)), methods=["GET"]),
            Route("/", self._root, methods=["GET", "HEAD"]),
        ]
        return Starlette(routes=routes, exception_handlers={HTTPException: self._http_error})

    # -- the edges every request passes

    def _refusal(self, api: Api, request: Request) -> Response | None:
        """A request from a page that rebinds its name to 127.0.0.1 (a browser sends that name as
        Host), or without the key: refused before anything is read."""
        if self.loopback and _host(request) not in LOOPBACK_HOSTS | {""}:
            return json_response(api.error(403, "this server answers only requests to a loopback name"), 403)
        if not _own_origin(request):
            return json_response(api.error(403, "this server answers no web page of another site (no CORS)"), 403)
        if self.key is not None and not hmac.compare_digest(_token(request).encode(), self.key.encode()):
            return json_response(api.error(401, "invalid or missing API key"), 401)
        return None

    def _public(self, body: Callable[[], dict[str, Any]]) -> Handler:
        async def handle(_request: Request) -> Response:
            return json_response(body())

        return handle

    def _info(self, api: Api, body: Callable[[], dict[str, Any]]) -> Handler:
        async def handle(request: Request) -> Response:
            return self._refusal(api, request) or json_response(body())

        return handle

    async def _metrics(self, request: Request) -> Response:
        """llama-server's Prometheus counters that say what the worker did."""
        refused = self._refusal(self.infill, request)
        if refused is not None:
            return refused
        running, waiting = self.worker.load()
        w = self.worker
        lines = [f"llamacpp:prompt_tokens_total {w.prompt_tokens}", f"llamacpp:tokens_predicted_total "
                 f"{w.predicted_tokens}", f"llamacpp:requests_processing {running}",
                 f"llamacpp:requests_deferred {waiting}", f"cg:requests_done_total {w.done}"]
        return PlainTextResponse("\n".join(lines) + "\n")

    async def _root(self, request: Request) -> Response:
        return PlainTextResponse("cg serve is running")  # Ollama's clients look for an answer here

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        api = self.ollama if request.url.path.startswith("/api/") else self.openai \
            if request.url.path.startswith("/v1/") else self.infill
        return json_response(api.error(status, "not found" if status == 404 else "method not allowed"
                                       if status == 405 else "bad request"), status)

    # -- completions

    def _completion(self, api: Api) -> Handler:
        async def handle(request: Request) -> Response:
            refused = self._refusal(api, request)
            if refused is not None:
                return refused
            try:
                call = api.parse(parse_json(await _read_body(request)), self.served)
                return await self._answer(api, call, request)
            except BadRequest as exc:
                return json_response(api.error(exc.status, exc.message), exc.status)
            except ClientDisconnect:  # gone while sending its body: nobody to answer
                return Response(status_code=499)
            except Exception as exc:  # a bug: one line in the log, a 500 to the client, the server stays up
                report.say(f"Error: cg serve: {type(exc).__name__}: {exc}")
                return json_response(api.error(500, "internal error"), 500)

        return handle

    async def _answer(self, api: Api, call: Call, request: Request) -> Response:
        if call.reason is not None:  # nothing to run
            nothing = Outcome("", None)
            if call.stream:
                return Response(api.last(call, nothing, self.served), media_type=api.stream_type)
            return json_response(api.whole(call, nothing, self.served))
        job = Job(call.request, asyncio.get_running_loop())
        if not self.worker.submit(job):
            raise BadRequest("the server is busy: too many requests waiting", 503)
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            item = await _next(job, gone)
            while not call.stream and isinstance(item, Text):
                item = await _next(job, gone)
        finally:
            gone.cancel()  # a stream's own response watches for the client from here on
        if item is None:  # the client went away: its job is cancelled, nobody reads an answer
            return Response(status_code=499)
        if isinstance(item, Failed):
            return json_response(api.error(item.status, item.message), item.status)
        if not call.stream:
            assert isinstance(item, Outcome)
            return json_response(api.whole(call, item, self.served))
        return StreamingResponse(self._stream(api, call, job, item), media_type=api.stream_type)

    async def _stream(self, api: Api, call: Call, job: Job, item: Item) -> AsyncIterator[bytes]:
        try:
            while True:
                if isinstance(item, Text):
                    yield api.piece(call, item.text)
                elif isinstance(item, Outcome):
                    yield api.last(call, item, self.served)
                    return
                else:
                    error = api.error(item.status, item.message)
                    yield sse(error) if api.stream_type == "text/event-stream" else ndjson(error)
                    return
                item = await job.items.get()
        finally:
            job.cancel()  # the client went away mid-stream (a finished job ignores it)


async def _read_body(request: Request) -> bytes:
    """The body, at most MAX_BODY bytes, within BODY_TIMEOUT."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        raise BadRequest(f"the body is larger than {MAX_BODY // 2**20} MiB", 413)

    async def read() -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise BadRequest(f"the body is larger than {MAX_BODY // 2**20} MiB", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    try:
        return await asyncio.wait_for(read(), BODY_TIMEOUT)
    except TimeoutError:
        raise BadRequest(f"the body did not arrive within {BODY_TIMEOUT:.0f} s", 408) from None


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _next(job: Job, gone: asyncio.Future[None]) -> Item | None:
    """The job's next item, or None (and the job cancelled) once the client has gone."""
    get: asyncio.Future[Item] = asyncio.ensure_future(job.items.get())
    waiting: set[asyncio.Future[Any]] = {get, gone}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if get.done():
        return get.result()
    get.cancel()
    job.cancel()
    return None


def _host(request: Request) -> str:
    """The Host header's name, without the port ("[::1]:8080" -> "::1")."""
    host = request.headers.get("host", "").strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _own_origin(request: Request) -> bool:
    """No Origin (editors' HTTP clients send none), or a page of a loopback name or of this server.
    A page on any other site may not even send a request: a form or `no-cors` fetch reaches the
    server without a preflight and, unread, still runs a completion or replaces a slot's. Origins
    of other schemes (vscode-webview://, an extension's) are not web sites."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    scheme, sep, rest = origin.strip().lower().partition("://")
    if not sep:
        return False  # "null": a sandboxed frame or a file, any site can make one
    if scheme not in ("http", "https"):
        return True
    name = rest[1:].split("]", 1)[0] if rest.startswith("[") else rest.rsplit(":", 1)[0]
    return name in LOOPBACK_HOSTS or name == _host(request)


def _token(request: Request) -> str:
    """The key a client sent: `Authorization: Bearer KEY` (llama.vim, OpenAI's and Ollama's
    clients) or `X-Api-Key`."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        return token.strip()
    return request.headers.get("x-api-key", "").strip()
