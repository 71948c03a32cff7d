"""Ollama's `/api/generate` with `prompt` (the code before the cursor) and `suffix`, streamed as
NDJSON by default as Ollama does; `/api/tags`, `/api/show` and `/api/version` for the clients
that ask first.

`/api/show` gives a template that names `.Suffix`: that is how Continue decides a model can fill
in the middle and sends `suffix` (Ollama's `codegemma` carries a chat template, so Continue
falls back to a raw prompt there). cg always builds CodeGemma's own prompt from prompt and
suffix: `raw`, `template`, `system` and `context` change nothing, and sentinel text in a prompt
stays text, but for one case: without `suffix`, a prompt that is CodeGemma's FIM layout written
out whole (Continue's raw fallback) is read as the prefix and suffix it spells. `num_ctx` is the
server's `--ctx` (the model is loaded once).
"""

from __future__ import annotations

import datetime
from typing import Any

from cg.serve.body import MAX_NAME, MAX_STOPS, Fields, FimRequest, max_tokens, prefix_and_suffix, sampling
from cg.serve.dialect import Call, Served, counts, finish_reason, ndjson
from cg.serve.slots import Outcome

API_VERSION = "0.9.0"  # the Ollama API these endpoints follow (clients compare versions)
# CodeGemma's FIM layout in Ollama's template language: what Ollama would need to send suffix.
TEMPLATE = ("{{- if .Suffix }}<|fim_prefix|>{{ .Prompt }}<|fim_suffix|>{{ .Suffix }}<|fim_middle|>"
            "{{- else }}{{ .Prompt }}{{- end }}")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


class OllamaApi:
    stream_type = "application/x-ndjson"

    def parse(self, body: Fields, served: Served) -> Call:
        options = body.object("options")
        body.flag("raw", False)
        options.integer("num_ctx", 0, 0, 1 << 30)
        prefix, suffix = prefix_and_suffix(body.text("prompt"), body.text("suffix") if body.has("suffix") else None)
        limit = max_tokens(options, "num_predict")
        # No prompt: Ollama loads the model (keep_alive 0: unloads it) and answers at once. cg's
        # model is loaded already and stays; the KV cache of the last prompt is left as it is.
        reason = None if prefix or suffix else "unload" if body.data.get("keep_alive") in (0, "0", "0s") else "load"
        request = FimRequest(prefix=prefix, suffix=suffix, max_tokens=limit, sampling=sampling(options),
                             stop=options.texts("stop", MAX_STOPS))
        return Call(request, stream=body.flag("stream", True),
                    model=body.text("model", limit=MAX_NAME) or served.model, reason=reason)

    def whole(self, call: Call, outcome: Outcome, served: Served) -> dict[str, Any]:
        return {**self._done(call, outcome), "response": outcome.text}

    def piece(self, call: Call, text: str) -> bytes:
        return ndjson({"model": call.model, "created_at": _now(), "response": text, "done": False})

    def last(self, call: Call, outcome: Outcome, served: Served) -> bytes:
        return ndjson({**self._done(call, outcome), "response": ""})

    def error(self, status: int, message: str) -> dict[str, Any]:
        return {"error": message}

    def _done(self, call: Call, outcome: Outcome) -> dict[str, Any]:
        prompt, generated = counts(outcome)
        done = outcome.completion
        ms = (done.timings.load_ms, done.timings.prompt_ms, done.timings.generation_ms) if done else (0.0, 0.0, 0.0)
        ns = [int(v * 1e6) for v in ms]
        return {"model": call.model, "created_at": _now(), "done": True,
                "done_reason": call.reason or finish_reason(outcome),
                "total_duration": sum(ns[1:]), "load_duration": ns[0], "prompt_eval_count": prompt,
                "prompt_eval_duration": ns[1], "eval_count": generated, "eval_duration": ns[2]}


def _details(served: Served) -> dict[str, Any]:
    return {"format": "gguf", "family": "gemma", "families": ["gemma"], "parameter_size": "",
            "quantization_level": ""}


def tags(served: Served, size: int) -> dict[str, Any]:
    return {"models": [{"name": served.model, "model": served.model, "modified_at": _now(), "size": size,
                        "digest": "", "details": _details(served)}]}


def show(served: Served) -> dict[str, Any]:
    capabilities = ["completion", "insert"] if served.fim else ["completion"]
    return {"modelfile": f"FROM {served.path}\n", "parameters": f"num_ctx {served.n_ctx}", "template": TEMPLATE,
            "details": _details(served), "model_info": {"general.architecture": "gemma"},
            "capabilities": capabilities, "modified_at": _now()}


def version() -> dict[str, Any]:
    return {"version": API_VERSION}
