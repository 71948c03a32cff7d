"""OpenAI's `/v1/completions` with `prompt` (the code before the cursor) and `suffix` (which
vLLM and llama-server refuse), streamed as server-sent events ending in `data: [DONE]`;
`/v1/models`.

A token-id prompt, several prompts, `n` > 1 and `echo` are refused: an editor sends one text
prompt. `max_tokens` absent is cg's default (128), not OpenAI's 16. Without `suffix`, a prompt
that is CodeGemma's FIM layout written out (Continue's `openai` provider renders it so) is read
as the prefix and suffix it spells (request.rendered_fim).
"""

from __future__ import annotations

import time
from typing import Any

from cg.serve.body import (
    MAX_NAME,
    MAX_STOPS,
    BadRequest,
    Fields,
    FimRequest,
    logit_bias,
    max_tokens,
    prefix_and_suffix,
    sampling,
)
from cg.serve.dialect import Call, Served, counts, finish_reason, sse
from cg.serve.slots import Outcome


class OpenAiApi:
    stream_type = "text/event-stream"

    def parse(self, body: Fields, served: Served) -> Call:
        body.integer("n", 1, 1, 1)
        if body.flag("echo", False):
            raise BadRequest("echo is not supported")
        prefix, suffix = prefix_and_suffix(_prompt(body), body.text("suffix") if body.has("suffix") else None)
        request = FimRequest(prefix=prefix, suffix=suffix, max_tokens=max_tokens(body, "max_tokens"),
                             sampling=sampling(body), stop=body.texts("stop", MAX_STOPS), logit_bias=logit_bias(body))
        return Call(request, stream=body.flag("stream", False),
                    model=body.text("model", limit=MAX_NAME) or served.model)

    def whole(self, call: Call, outcome: Outcome, served: Served) -> dict[str, Any]:
        prompt, generated = counts(outcome)
        return {**self._head(call), "choices": [self._choice(outcome.text, finish_reason(outcome))],
                "usage": {"prompt_tokens": prompt, "completion_tokens": generated,
                          "total_tokens": prompt + generated}}

    def piece(self, call: Call, text: str) -> bytes:
        return sse({**self._head(call), "choices": [self._choice(text, None)]})

    def last(self, call: Call, outcome: Outcome, served: Served) -> bytes:
        return sse({**self._head(call), "choices": [self._choice("", finish_reason(outcome))]}) + b"data: [DONE]\n\n"

    def error(self, status: int, message: str) -> dict[str, Any]:
        kind = {401: "authentication_error", 404: "not_found_error"}
        return {"error": {"message": message, "type": kind.get(status, "invalid_request_error" if status < 500
                                                               else "server_error"), "param": None, "code": None}}

    def _head(self, call: Call) -> dict[str, Any]:
        return {"id": call.id, "object": "text_completion", "created": int(call.created), "model": call.model}

    def _choice(self, text: str, reason: str | None) -> dict[str, Any]:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": reason}


def _prompt(body: Fields) -> str:
    """A text prompt, or a list of exactly one."""
    value = body.data.get("prompt")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]
    if value is not None and not isinstance(value, str):
        raise BadRequest("prompt must be a string (token ids and several prompts are not supported)")
    return value or ""


def models(served: Served) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": served.model, "object": "model", "created": int(time.time()),
                                        "owned_by": "cg"}]}
