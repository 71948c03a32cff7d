"""The APIs cg drives a server through, one object each: what a request looks like, what an
event means, how large the context is, which models are served, how text is tokenized.

Completions: llama-server's native `/completion`, or an OpenAI-compatible `/v1/completions` that
takes token-id prompts (vLLM, SGLang, llama-server's /v1). Tokenizers: llama-server's `/tokenize`
(special parsing can be turned off), or vLLM's (it always parses special tokens: cg splits them).
Everything a server sends is checked for its shape; what does not fit is a ServerError naming the
server and what it sent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cg.engine import Piece, Sampling
from cg.engine.remote.client import Http, shown
from cg.errors import ServerError
from cg.models.special_ids import SpecialIds
from cg.request import Api


def _bad(http: Http, what: str, data: object) -> ServerError:
    return ServerError(f"the server at {http.base} sent {what}: {shown(data)}",
                       "The server answers in a form cg does not know; check its version and the URL.")


def _token_ids(http: Http, value: object) -> tuple[int, ...]:
    """A list of token ids (or llama-server's {"id": N} objects), checked."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _bad(http, "token ids that are not a list", value)
    ids = [t.get("id") if isinstance(t, dict) else t for t in value]
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
        raise _bad(http, "token ids that are not whole numbers", value)
    return tuple(ids)  # type: ignore[arg-type]


def _text(http: Http, event: dict[str, Any], key: str) -> str:
    """event[key] as text: absent is empty, anything but a string (null included) is malformed."""
    value = event.get(key, "")
    if not isinstance(value, str):
        raise _bad(http, "text that is not a string", value)
    return value


def _count(http: Http, value: object, what: str, *, least: int = 1) -> int | None:
    """A whole number >= least the server reports (context size, vocabulary: positive; a
    cached-token count may be 0), or None if absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value < least or value != int(value):
        kind = {0: "non-negative whole number", 1: "positive whole number"}.get(least, f"whole number >= {least}")
        raise _bad(http, f"a {what} that is not a {kind}", value)
    return int(value)


def _object(http: Http, value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(http, f"{what} that is not a JSON object", value)
    return value


def listed_models(http: Http, data: object) -> dict[str, dict[str, Any]]:
    """GET /v1/models: served model id -> its entry."""
    entries = _object(http, data, "a model list").get("data") or []
    if not isinstance(entries, list):
        raise _bad(http, "a model list that is not a list", entries)
    return {m["id"]: m for m in entries if isinstance(m, dict) and isinstance(m.get("id"), str)}


@dataclass(frozen=True)
class LlamaServerApi:
    """llama-server's native API: /completion streaming token ids back, /props for the context."""

    name = Api.LLAMA
    completion_path = "/completion"

    def request(self, model: str, prompt: Sequence[int], max_tokens: int, sampling: Sampling,
                bias: dict[int, float], stops: frozenset[int]) -> dict[str, Any]:
        return {"prompt": list(prompt), "n_predict": max_tokens, "stream": True, "return_tokens": True,
                "cache_prompt": True, "timings_per_token": True,  # the cached count before any stop
                "temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p,
                "min_p": sampling.min_p, "repeat_penalty": sampling.repeat_penalty,
                "seed": sampling.seed, "logit_bias": [[t, b] for t, b in bias.items()]}

    def piece(self, http: Http, event: dict[str, Any], special: SpecialIds) -> tuple[Piece, bool]:
        """(what the event says, whether it is the last one)."""
        ids, text = _token_ids(http, event.get("tokens")), _text(http, event, "content")
        timings = _object(http, event.get("timings"), "timings")  # in every event (timings_per_token)
        cached = _count(http, timings.get("cache_n"), "cached token count", least=0) if timings else None
        if not event.get("stop"):
            return Piece(ids, text, None, cached), False
        stop_id = special.eos if event.get("stop_type") == "eos" else None
        return Piece(ids, text, stop_id, cached), True

    def context(self, http: Http, props: dict[str, Any], entry: dict[str, Any]) -> int | None:
        settings = _object(http, props.get("default_generation_settings"), "generation settings")
        return _count(http, settings.get("n_ctx"), "context size")

    def vocab_size(self, http: Http, entry: dict[str, Any]) -> int | None:
        return _count(http, _object(http, entry.get("meta"), "model details").get("n_vocab"), "vocabulary size")


@dataclass(frozen=True)
class OpenAIApi:
    """/v1/completions with token-id prompts: vLLM (token ids back as logprob tokens), SGLang,
    llama-server's /v1 (logprobs.content[].id)."""

    name = Api.OPENAI
    completion_path = "/completions"

    def request(self, model: str, prompt: Sequence[int], max_tokens: int, sampling: Sampling,
                bias: dict[int, float], stops: frozenset[int]) -> dict[str, Any]:
        return {"model": model, "prompt": list(prompt), "max_tokens": max_tokens, "stream": True,
                "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                "min_p": sampling.min_p, "repetition_penalty": sampling.repeat_penalty, "seed": sampling.seed,
                "stop_token_ids": sorted(stops), "logprobs": 1, "return_tokens_as_token_ids": True,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True},
                **({"logit_bias": {str(t): b for t, b in bias.items()}} if bias else {})}

    def piece(self, http: Http, event: dict[str, Any], special: SpecialIds) -> tuple[Piece, bool]:
        usage = _object(http, event.get("usage"), "usage")  # in every chunk (continuous_usage_stats)
        details = _object(http, usage.get("prompt_tokens_details"), "usage details")
        cached = (_count(http, details.get("cached_tokens"), "cached token count", least=0) or 0) if usage else None
        choices = event.get("choices") or []
        if not isinstance(choices, list):
            raise _bad(http, "choices that are not a list", choices)
        if not choices:
            return Piece(cached=cached), False
        choice = _object(http, choices[0], "a choice")
        ids, text = self._ids(http, choice), _text(http, choice, "text")
        finish = choice.get("finish_reason")
        if finish is None:
            return Piece(ids, text, None, cached), False
        stop_id = choice.get("stop_reason")
        if not isinstance(stop_id, int) or isinstance(stop_id, bool):
            stop_id = special.eos if finish == "stop" else None
        return Piece(ids, text, stop_id, cached), False  # the usage event and [DONE] may follow

    def _ids(self, http: Http, choice: dict[str, Any]) -> tuple[int, ...]:
        if choice.get("token_ids") is not None:
            return _token_ids(http, choice["token_ids"])
        logprobs = _object(http, choice.get("logprobs"), "logprobs")
        if isinstance(logprobs.get("content"), list):
            return _token_ids(http, [c for c in logprobs["content"] if isinstance(c, dict) and "id" in c])
        tokens = logprobs.get("tokens") or []
        if not isinstance(tokens, list):
            raise _bad(http, "logprob tokens that are not a list", tokens)
        out = []
        for token in tokens:
            if isinstance(token, str) and token.startswith("token_id:"):
                out.append(token.split(":", 1)[1])
        try:
            return _token_ids(http, [int(t) for t in out])
        except ValueError:
            raise _bad(http, "logprob tokens that are not token ids", tokens) from None

    def context(self, http: Http, props: dict[str, Any], entry: dict[str, Any]) -> int | None:
        meta = _object(http, entry.get("meta"), "model details")
        return _count(http, entry.get("max_model_len") or meta.get("n_ctx") or None, "context size")

    def vocab_size(self, http: Http, entry: dict[str, Any]) -> int | None:
        return _count(http, _object(http, entry.get("meta"), "model details").get("n_vocab"), "vocabulary size")


CompletionApi = LlamaServerApi | OpenAIApi


@dataclass(frozen=True)
class LlamaServerTokenizer:
    """llama-server's /tokenize and /detokenize (beside /v1, at the server's root)."""

    def tokenize(self, http: Http, model: str, text: str, *, special: bool) -> list[int]:
        data = http.call("POST", "/tokenize", {"content": text, "add_special": False, "parse_special": special})
        return list(_token_ids(http, _object(http, data, "a tokenization").get("tokens")))

    def detokenize(self, http: Http, model: str, tokens: list[int]) -> str | None:
        data = http.call("POST", "/detokenize", {"tokens": tokens}, missing_ok=True)
        text = data.get("content") if isinstance(data, dict) else None
        return text if isinstance(text, str) else None


@dataclass(frozen=True)
class VllmTokenizer:
    """vLLM's /tokenize and /detokenize: it parses special tokens in any text (split_sentinels
    keeps user code from becoming control tokens)."""

    def tokenize(self, http: Http, model: str, text: str, *, special: bool) -> list[int]:
        data = http.call("POST", "/tokenize", {"model": model, "prompt": text, "add_special_tokens": False})
        return list(_token_ids(http, _object(http, data, "a tokenization").get("tokens")))

    def detokenize(self, http: Http, model: str, tokens: list[int]) -> str | None:
        data = http.call("POST", "/detokenize", {"model": model, "tokens": tokens}, missing_ok=True)
        text = data.get("prompt") if isinstance(data, dict) else None
        return text if isinstance(text, str) else None


Tokenizer = LlamaServerTokenizer | VllmTokenizer
