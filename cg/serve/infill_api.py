"""llama.cpp's `/infill`, as llama.vim and llama.vscode send it, answered as llama-server answers.

The request: input_prefix, input_suffix, input_extra ([{filename, text}], the ring of chunks
from other files, oldest first: nearest the current file last in the prompt), prompt (the
cursor's line before the cursor: llama-server appends it to the prefix), n_predict,
t_max_predict_ms, id_slot, the sampling fields, stop, logit_bias, stream, response_fields. Accepted and
left to cg: n_indent (cg's block stop ends a completion where its block ends), samplers,
cache_prompt (cg always keeps the last prompt; exact reuse gives a fresh run's result),
t_max_prompt_ms (llama-server ignores it too).

Unlike llama-server for CodeGemma: chunks go in CodeGemma's multi-file layout with their file
names, after the one BOS, and `<|file_separator|>` ends a completion.
"""

from __future__ import annotations

from typing import Any

from cg.serve.body import (
    MAX_EXTRA,
    MAX_NAME,
    MAX_STOPS,
    MAX_TIME_MS,
    Fields,
    FimRequest,
    logit_bias,
    max_tokens,
    sampling,
)
from cg.serve.dialect import Call, Served, sse
from cg.serve.slots import Outcome
from cg.settings import DEFAULT_MAX_TOKENS

# cg's stop reasons as llama-server names them: "word" is its name for a stop text; cg's cuts
# (end of block, suffix overlap...) are that kind of stop.
MAX_SLOT = 1023  # ids name replacement groups: one worker decodes for all of them
_STOP_TYPE = {"stop_token": "eos", "max_tokens": "limit", "time_limit": "limit"}


class InfillApi:
    stream_type = "text/event-stream"

    def parse(self, body: Fields, served: Served) -> Call:
        extra = [(chunk.text("filename"), chunk.text("text")) for chunk in body.objects("input_extra", MAX_EXTRA)]
        predict_ms = body.integer("t_max_predict_ms", 0, -1, MAX_TIME_MS)
        for name, low, high in (("n_indent", -1, 1 << 20), ("t_max_prompt_ms", -1, MAX_TIME_MS)):
            body.integer(name, 0, low, high)
        body.flag("cache_prompt", True)
        body.texts("samplers")
        slot = body.integer("id_slot", -1, -1, MAX_SLOT)
        request = FimRequest(
            prefix=body.text("input_prefix") + body.text("prompt"), suffix=body.text("input_suffix"),
            context=tuple(reversed(extra)),  # stream_complete takes the nearest first
            max_tokens=max_tokens(body, "n_predict") if body.has("n_predict") else DEFAULT_MAX_TOKENS,
            max_time=predict_ms / 1000 if predict_ms > 0 else None, sampling=sampling(body),
            stop=body.texts("stop", MAX_STOPS), logit_bias=logit_bias(body), slot=slot if slot >= 0 else None)
        return Call(request, stream=body.flag("stream", False),
                    model=body.text("model", limit=MAX_NAME) or served.model,
                    fields=body.texts("response_fields"))

    def whole(self, call: Call, outcome: Outcome, served: Served) -> dict[str, Any]:
        full = self._final(call, outcome, served)
        return _only(full, call.fields) if call.fields else full

    def piece(self, call: Call, text: str) -> bytes:
        return sse({"index": 0, "content": text, "tokens": [], "stop": False,
                    "id_slot": call.request.slot if call.request.slot is not None else 0})

    def last(self, call: Call, outcome: Outcome, served: Served) -> bytes:
        final = {**self._final(call, outcome, served), "content": ""}  # the text went in the pieces
        return sse(_only(final, call.fields) if call.fields else final)

    def error(self, status: int, message: str) -> dict[str, Any]:
        kind = {401: "authentication_error", 404: "not_found_error", 503: "unavailable_error"}
        return {"error": {"code": status, "message": message,
                          "type": kind.get(status, "invalid_request_error" if status < 500 else "server_error")}}

    def _final(self, call: Call, outcome: Outcome, served: Served) -> dict[str, Any]:
        done = outcome.completion
        prompt_n = cached = predicted = 0
        prompt_ms = predicted_ms = 0.0
        reason = "none"
        if done is not None:
            cached = done.timings.cached_tokens
            evaluated = done.timings.evaluated_tokens
            prompt_n = evaluated if evaluated is not None else done.prompt_tokens - cached
            predicted, prompt_ms, predicted_ms = done.completion_tokens, done.timings.prompt_ms, \
                done.timings.generation_ms
            reason = "none" if outcome.cancelled else _STOP_TYPE.get(done.stop_reason, "word")
        return {
            "index": 0, "content": outcome.text, "tokens": [],
            "id_slot": call.request.slot if call.request.slot is not None else 0, "stop": True,
            "model": call.model, "tokens_predicted": predicted,
            "tokens_evaluated": done.prompt_tokens if done is not None else 0,
            "generation_settings": _settings(call, served), "prompt": "",
            "has_new_line": "\n" in outcome.text, "truncated": done is not None and done.truncated,
            "stop_type": reason, "stopping_word": "",
            "tokens_cached": cached, "stop_reason": done.stop_reason if done is not None else "cancelled",
            "timings": {"cache_n": cached, "prompt_n": prompt_n, "prompt_ms": prompt_ms,
                        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
                        "prompt_per_second": prompt_n * 1000 / prompt_ms if prompt_ms else 0.0,
                        "predicted_n": predicted, "predicted_ms": predicted_ms,
                        "predicted_per_token_ms": predicted_ms / predicted if predicted else 0.0,
                        "predicted_per_second": predicted * 1000 / predicted_ms if predicted_ms else 0.0},
        }


def _settings(call: Call, served: Served) -> dict[str, Any]:
    req = call.request
    return {"n_ctx": served.n_ctx, "n_predict": req.max_tokens, "temperature": req.sampling.temperature,
            "top_k": req.sampling.top_k, "top_p": req.sampling.top_p, "min_p": req.sampling.min_p,
            "seed": req.sampling.seed, "stop": list(req.stop)}


def _only(data: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    """llama-server's response_fields: each path ("timings/prompt_n") found, under its own name."""
    out: dict[str, Any] = {}
    for path in paths:
        node: Any = data
        for key in path.split("/"):
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            out[path] = node
    return out


def props(served: Served) -> dict[str, Any]:
    """What llama-server's /props says that clients read."""
    return {"default_generation_settings": {"n_ctx": served.n_ctx, "params": {"n_predict": DEFAULT_MAX_TOKENS}},
            "total_slots": served.slots, "model_path": served.path, "model_alias": served.model,
            "build_info": "cg serve", "infill": served.fim}
