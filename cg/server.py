"""The server engine: the model runs on llama.cpp's llama-server (its native API) or on an
OpenAI-compatible completions API that takes token-id prompts (vLLM, SGLang, llama-server's /v1).

cg gets FIM right there as it does locally, because it never sends text for the server to
tokenize: it tokenizes user text through the server's tokenizer with the sentinel splitting the
local engine uses (code that contains `<|fim_prefix|>` stays text), finds the special ids in the
server's vocabulary (by their text, with special parsing on), sends the prompt as ids, and stops
on every stop id: with `stop_token_ids` where the API has it, and on the token ids it streams
back (the stream is closed, which stops llama-server generating). Servers on their own do
neither: llama-server's /tokenize parses sentinels in user text, and a CodeGemma GGUF from
llama.cpp's converter (no fim_sep key) runs past `<|file_separator|>` on llama-server and vLLM.

Plain HTTP with the standard library: one connection per request, so threads (eval --jobs) can
share an engine.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from quantize.tokens import SENTINELS

from .engine import (
    LogitsProcessor,
    PromptProgress,
    Sampling,
    SpecialIds,
    Timings,
    TokenEvent,
    find_special_ids,
    is_instruct_name,
    split_sentinels,
)
from .errors import (
    AuthError,
    ModelNotServedError,
    ServerError,
    ServerUnreachableError,
    UnsupportedServerError,
    UsageError,
)

DEFAULT_TIMEOUT = 600.0  # seconds a read may wait: a long prompt on a busy CPU server takes a while
CONNECT_TIMEOUT = 10.0


def timeout() -> float:
    """CG_SERVER_TIMEOUT, else DEFAULT_TIMEOUT: the longest wait for the server's next bytes."""
    raw = os.environ.get("CG_SERVER_TIMEOUT")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UsageError(f"CG_SERVER_TIMEOUT={raw!r} is not a number of seconds", "Set it to e.g. 600.")
    return value


class Api(StrEnum):
    LLAMA = "llama"  # llama-server's native /completion
    OPENAI = "openai"  # /v1/completions with token-id prompts


@dataclass
class Http:
    """JSON over HTTP to one server; errors become cg's errors, naming the URL."""

    base: str  # scheme://host:port[/prefix], no trailing slash
    api_key: str | None = None

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        parts = urlsplit(self.base)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        return cls(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)

    def _send(self, method: str, path: str, body: Any, timeout: float
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        conn = self._connection(CONNECT_TIMEOUT)
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        target = urlsplit(self.base).path.rstrip("/") + path
        try:
            conn.connect()
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            conn.request(method, target, json.dumps(body) if body is not None else None, headers)
            return conn, conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ServerUnreachableError(f"cannot reach the server at {self.base}: {_reason(exc)}") from None

    def _timed_out(self) -> ServerUnreachableError:
        return ServerUnreachableError(f"the server at {self.base} stopped answering (timed out)",
                                      "It may be overloaded; CG_SERVER_TIMEOUT sets the wait.")

    def call(self, method: str, path: str, body: Any = None, *, missing_ok: bool = False) -> Any:
        """A request's JSON answer; None for a 404 when missing_ok (probing what the server has)."""
        conn, resp = self._send(method, path, body, timeout())
        try:
            data = resp.read()
        except TimeoutError:
            raise self._timed_out() from None
        except (OSError, http.client.HTTPException) as exc:
            raise ServerError(f"the server at {self.base} broke off its answer to {path}: {_reason(exc)}") from None
        finally:
            conn.close()
        if resp.status == 404 and missing_ok:
            return None
        self._check(resp.status, data, path)
        try:
            return json.loads(data)
        except ValueError:
            if missing_ok:
                return None
            raise ServerError(f"the server at {self.base} answered {path} with something that is not JSON") from None

    def events(self, path: str, body: Any) -> Generator[dict[str, Any], None, None]:
        """The JSON objects of a server-sent event stream. Closing the iterator closes the
        connection, which stops llama-server generating."""
        conn, resp = self._send("POST", path, body, timeout())
        try:
            if resp.status != 200:
                self._check(resp.status, resp.read(), path)
            finished = False
            while True:
                try:
                    line = resp.readline()
                except TimeoutError:
                    raise self._timed_out() from None
                except (OSError, http.client.HTTPException) as exc:
                    raise ServerError(f"the server at {self.base} dropped the stream: {_reason(exc)}") from None
                if not line:
                    break
                text = line.decode("utf-8", "replace").strip()
                if not text.startswith("data:"):
                    continue
                payload = text[5:].strip()
                if payload == "[DONE]":
                    finished = True
                    break
                event = json.loads(payload)
                if "error" in event:
                    raise ServerError(f"the server at {self.base} failed: {_message(event)}")
                yield event
                if event.get("stop") is True:  # llama-server's last event
                    finished = True
                    break
            if not finished:
                raise ServerError(f"the server at {self.base} closed the stream before the completion finished")
        finally:
            conn.close()

    def _check(self, status: int, data: bytes, path: str) -> None:
        if status < 400:
            return
        message = _message(data)
        if status in (401, 403):
            raise AuthError(f"the server at {self.base} refused the request ({status}): {message}",
                            "Pass the server's key with --api-key or CG_API_KEY.")
        if status >= 500:
            raise ServerError(f"the server at {self.base} failed ({status}) on {path}: {message}")
        raise ServerRejectedError(f"the server at {self.base} rejected {path} ({status}): {message}")


class ServerRejectedError(ServerError):
    """A 4xx answer: the server does not take the request as cg sends it."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def _message(data: bytes | dict[str, Any]) -> str:
    try:
        body = json.loads(data) if isinstance(data, bytes) else data
    except ValueError:
        return data.decode("utf-8", "replace")[:200] if isinstance(data, bytes) else ""
    error = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or error)[:300]
    return str(error)[:300]


@dataclass
class ServerEngine:
    http: Http
    api: Api
    model: str
    context: int
    vocab: int
    special: SpecialIds = field(default_factory=SpecialIds)
    protected: dict[int, str] = field(default_factory=dict)
    load_ms: float = 0.0

    @property
    def name(self) -> str:
        return self.model

    @property
    def label(self) -> str:
        return f"{PurePosixPath(self.model).name} at {self.http.base}"

    @property
    def server(self) -> str | None:
        return self.http.base

    @property
    def n_ctx(self) -> int:
        return self.context

    @property
    def n_vocab(self) -> int:
        return self.vocab

    @property
    def is_chat(self) -> bool:
        return is_instruct_name(PurePosixPath(self.model).name)

    @property
    def default_window(self) -> int:
        return self.context  # prompt evaluation is cheap where servers run

    @property
    def bos(self) -> int:
        if self.special.bos is None:
            raise UnsupportedServerError(f"the model at {self.http.base} has no <bos> token cg can find")
        return self.special.bos

    @property
    def _root(self) -> Http:
        """llama-server's and vLLM's /tokenize and /detokenize live beside /v1, not in it."""
        base = self.http.base
        return Http(base[:-3], self.http.api_key) if base.endswith("/v1") else self.http

    def _tokenize(self, text: str, *, special: bool) -> list[int]:
        # Both dialects in one body: llama-server reads content/parse_special, vLLM prompt/model.
        body = {"content": text, "add_special": False, "parse_special": special,
                "prompt": text, "model": self.model, "add_special_tokens": False}
        data = self._root.call("POST", "/tokenize", body)
        tokens = data.get("tokens", []) if isinstance(data, dict) else []
        return [t["id"] if isinstance(t, dict) else int(t) for t in tokens]

    def _detokenize(self, tokens: list[int]) -> str | None:
        data = self._root.call("POST", "/detokenize", {"tokens": tokens, "model": self.model}, missing_ok=True)
        if not isinstance(data, dict):
            return None
        text = data.get("content", data.get("prompt"))
        return text if isinstance(text, str) else None

    def tokenize_text(self, text: str) -> list[int]:
        """User text through the server's tokenizer, sentinels split so none can be injected."""
        return split_sentinels(text, lambda t: self._tokenize(t, special=False), self.protected)

    def lookup(self, text: str) -> int | None:
        """The id of a special token's text in the server's vocabulary, checked both ways."""
        ids = self._tokenize(text, special=True)
        if len(ids) == 1 and self._detokenize(ids) in (text, None):
            return ids[0]
        return None

    def stream(self, prompt: Sequence[int], *, max_tokens: int, sampling: Sampling = Sampling(),
               logit_bias: dict[int, float] | None = None, logits_processor: LogitsProcessor | None = None,
               timings: Timings | None = None, on_prompt: PromptProgress | None = None,
               ) -> Generator[TokenEvent, None, None]:
        if logits_processor is not None:
            raise UsageError("a logits processor runs inside this process; a server cannot take one",
                             "Drop --server to run the model locally.")
        timings = timings if timings is not None else Timings()
        stops = self.special.stop_ids
        start, first = time.perf_counter(), None
        chunks = self._events(prompt, max_tokens, sampling, logit_bias or {}, stops)
        n = 0
        try:
            for ids, text, final in chunks:
                now = time.perf_counter()
                if first is None and (ids or text):
                    first = now
                    timings.prompt_ms = (now - start) * 1000
                if first is not None:
                    timings.generation_ms = (now - first) * 1000
                if final is not None:
                    timings.cached_tokens = final.get("cached", 0)
                for i, token in enumerate(ids):
                    if token in stops:
                        yield TokenEvent(token, "", True)
                        return
                    n += 1
                    yield TokenEvent(token, text if i == len(ids) - 1 else "", False)
                    if n >= max_tokens:
                        return
                if text and not ids:
                    yield TokenEvent(-1, text, False)
                if final is not None and final.get("stop_id") is not None:
                    yield TokenEvent(int(final["stop_id"]), "", True)
                    return
        finally:
            chunks.close()

    def _events(self, prompt: Sequence[int], max_tokens: int, sampling: Sampling, bias: dict[int, float],
                stops: frozenset[int]) -> Generator[tuple[list[int], str, dict[str, Any] | None], None, None]:
        """(token ids, their text, the final summary or None) per streamed event."""
        if self.api == Api.LLAMA:
            body = {"prompt": list(prompt), "n_predict": max_tokens, "stream": True, "return_tokens": True,
                    "cache_prompt": True, "temperature": sampling.temperature, "top_k": sampling.top_k,
                    "top_p": sampling.top_p, "min_p": sampling.min_p, "repeat_penalty": sampling.repeat_penalty,
                    "seed": sampling.seed, "logit_bias": [[t, b] for t, b in bias.items()]}
            events = self.http.events("/completion", body)
            try:
                for event in events:
                    final = None
                    if event.get("stop"):
                        eos = event.get("stop_type") == "eos"
                        final = {"cached": (event.get("timings") or {}).get("cache_n", 0),
                                 "stop_id": self.special.eos if eos else None}
                    yield [int(t) for t in event.get("tokens") or []], event.get("content", ""), final
            finally:
                events.close()
            return
        body = {"model": self.model, "prompt": list(prompt), "max_tokens": max_tokens, "stream": True,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                "min_p": sampling.min_p, "repetition_penalty": sampling.repeat_penalty, "seed": sampling.seed,
                "stop_token_ids": sorted(stops), "logprobs": 1, "return_tokens_as_token_ids": True,
                "stream_options": {"include_usage": True},
                **({"logit_bias": {str(t): b for t, b in bias.items()}} if bias else {})}
        events = self.http.events("/completions", body)
        try:
            for event in events:
                choices = event.get("choices") or []
                usage = event.get("usage") or {}
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                if not choices:
                    yield [], "", {"cached": cached}
                    continue
                choice = choices[0]
                finish = choice.get("finish_reason")
                final = None
                if finish is not None:
                    stop_id = choice.get("stop_reason")
                    if finish == "stop" and not isinstance(stop_id, int):
                        stop_id = self.special.eos
                    final = {"cached": cached, "stop_id": stop_id if isinstance(stop_id, int) else None}
                yield _openai_ids(choice), choice.get("text", ""), final
        finally:
            events.close()


def _openai_ids(choice: dict[str, Any]) -> list[int]:
    """Token ids of one streamed choice: vLLM's token_ids or "token_id:N" logprob tokens,
    llama-server's logprobs.content[].id."""
    if isinstance(choice.get("token_ids"), list):
        return [int(t) for t in choice["token_ids"]]
    logprobs = choice.get("logprobs") or {}
    if isinstance(logprobs.get("content"), list):
        return [int(c["id"]) for c in logprobs["content"] if "id" in c]
    out = []
    for token in logprobs.get("tokens") or []:
        if isinstance(token, str) and token.startswith("token_id:"):
            out.append(int(token.split(":", 1)[1]))
    return out


def connect(url: str, *, api: str | None = None, api_key: str | None = None, model: str | None = None,
            n_ctx: int = 4096) -> ServerEngine:
    """Find out what the server at url is and serves; check it can run FIM safely."""
    start = time.perf_counter()
    base = url.rstrip("/") if "://" in url else f"http://{url.rstrip('/')}"
    http_ = Http(base, api_key)
    kind, http_, props = _detect(http_, Api(api) if api else None)
    served = _models(http_, kind, props)
    name = _choose(served, model, http_.base)
    context = _context(kind, props, served.get(name) or {}, n_ctx)
    vocab = int(((served.get(name) or {}).get("meta") or {}).get("n_vocab") or 2**31 - 1)
    engine = ServerEngine(http_, kind, name, context, vocab)
    recorded = _recorded_ids(name)
    engine.special = find_special_ids(lambda _key: None, engine.lookup, recorded)
    engine.protected = {token: t.text for t in SENTINELS if (token := getattr(engine.special, t.name)) is not None}
    _check_token_prompts(engine)
    engine.load_ms = (time.perf_counter() - start) * 1000
    return engine


def _detect(http_: Http, forced: Api | None) -> tuple[Api, Http, dict[str, Any]]:
    base = http_.base
    if forced == Api.OPENAI or (forced is None and base.endswith("/v1")):
        v1 = http_ if base.endswith("/v1") else Http(base + "/v1", http_.api_key)
        if v1.call("GET", "/models", missing_ok=True) is None:
            raise UnsupportedServerError(f"no OpenAI-compatible API at {v1.base} (GET /models found nothing)",
                                         "Check the URL: vLLM serves http://host:8000/v1.")
        return Api.OPENAI, v1, {}
    props = http_.call("GET", "/props", missing_ok=True)
    if isinstance(props, dict) and "default_generation_settings" in props:
        return Api.LLAMA, http_, props
    if forced == Api.LLAMA:
        raise UnsupportedServerError(f"no llama.cpp server API at {base} (GET /props)",
                                     "Check the URL: llama-server serves http://host:8080.")
    return _detect(http_, Api.OPENAI)


def _models(http_: Http, kind: Api, props: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Served model id -> its entry in /v1/models (llama-server: its one model)."""
    v1 = http_ if kind == Api.OPENAI else Http(http_.base + "/v1", http_.api_key)
    data = v1.call("GET", "/models", missing_ok=True) or {}
    models = {m["id"]: m for m in data.get("data", []) if isinstance(m, dict) and "id" in m}
    if kind == Api.LLAMA and not models:
        alias = props.get("model_alias") or props.get("model_path") or "model"
        models = {alias: {}}
    return models


def _choose(served: dict[str, dict[str, Any]], wanted: str | None, base: str) -> str:
    names = sorted(served)
    if wanted:
        for name in names:
            if wanted in (name, PurePosixPath(name).name, PurePosixPath(name).stem):
                return name
        raise ModelNotServedError(f"the server at {base} does not serve {wanted!r}; it serves: " + ", ".join(names),
                                  "Pick one of them with --model, or drop --model.")
    if len(names) == 1:
        return names[0]
    raise ModelNotServedError(f"the server at {base} serves several models: " + ", ".join(names),
                              "Pick one with --model.")


def _context(kind: Api, props: dict[str, Any], entry: dict[str, Any], fallback: int) -> int:
    if kind == Api.LLAMA:
        n = (props.get("default_generation_settings") or {}).get("n_ctx")
    else:
        n = entry.get("max_model_len") or (entry.get("meta") or {}).get("n_ctx")
    return int(n) if n else fallback


def _recorded_ids(name: str) -> dict[str, int]:
    """Ids cg's store recorded for an installed model of that name or file (GGUFs that lack them)."""
    from . import store

    stem = PurePosixPath(name).stem
    try:
        records = store.list_models()
    except Exception:
        return {}
    for rec in records:
        if stem in (rec.name, PurePosixPath(rec.path).stem):
            return rec.special_ids
    return {}


def _check_token_prompts(engine: ServerEngine) -> None:
    """One token in, one out: a server that cannot take token-id prompts is refused."""
    if not engine.special.has_fim:
        return  # prefix-only continuation: still ids, checked by the first real request
    try:
        for _ in engine.stream([engine.bos], max_tokens=1):
            pass
    except ServerRejectedError as exc:
        raise UnsupportedServerError(
            f"the server at {engine.http.base} does not take prompts as token ids ({exc.message})",
            "cg refuses text prompts: the server would tokenize the sentinels in code (injection) and the FIM "
            "layout differently, and miss stops. Use llama-server, vLLM, or another server that takes token ids."
        ) from None

