"""What the three APIs share: the parsed call, the shape of an API (a small object per API owns
all of its differences), and the encodings they stream in."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from cg.serve.body import Fields, FimRequest
from cg.serve.slots import Outcome


@dataclass(frozen=True)
class Served:
    """What the server serves, as the APIs describe it."""

    model: str  # the name clients see (the model file's stem)
    path: str
    n_ctx: int
    slots: int
    fim: bool


@dataclass(frozen=True)
class Call:
    """One request of one API: what to complete, and what its answer must carry."""

    request: FimRequest
    stream: bool
    model: str
    fields: tuple[str, ...] = ()  # llama.cpp's response_fields
    reason: str | None = None  # set: answered at once with this finish reason, no model run (Ollama's "load")
    id: str = field(default_factory=lambda: "cmpl-" + uuid.uuid4().hex[:24])
    created: float = field(default_factory=time.time)


class Api(Protocol):
    """One API: its request into a Call, an Outcome into its answer, its error body."""

    stream_type: str

    def parse(self, body: Fields, served: Served) -> Call: ...

    def whole(self, call: Call, outcome: Outcome, served: Served) -> dict[str, Any]: ...

    def piece(self, call: Call, text: str) -> bytes: ...

    def last(self, call: Call, outcome: Outcome, served: Served) -> bytes: ...

    def error(self, status: int, message: str) -> dict[str, Any]: ...


def dumps(data: Any) -> str:
    """Compact JSON, as llama-server writes it: llama.vim checks for `"content":"` without a space."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def sse(data: Any) -> bytes:
    return f"data: {dumps(data)}\n\n".encode()


def ndjson(data: Any) -> bytes:
    return (dumps(data) + "\n").encode()


def finish_reason(outcome: Outcome) -> str:
    """OpenAI's and Ollama's: "length" when the token limit ended it, else "stop"."""
    done = outcome.completion
    return "length" if done is not None and done.stop_reason == "max_tokens" else "stop"


def counts(outcome: Outcome) -> tuple[int, int]:
    """(prompt tokens, generated tokens)."""
    done = outcome.completion
    return (done.prompt_tokens, done.completion_tokens) if done is not None else (0, 0)
