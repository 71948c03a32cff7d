"""The server engine: the model runs on llama.cpp's llama-server (its native API) or on an
OpenAI-compatible completions API that takes token-id prompts (vLLM, SGLang, llama-server's /v1).

cg gets FIM right there as it does locally, because it never sends text for the server to
tokenize: it tokenizes user text through the server's tokenizer with the sentinel splitting the
local engine uses (code that contains `<|fim_prefix|>` stays text), finds the special ids in the
server's vocabulary, sends the prompt as ids, and stops on every stop id: with `stop_token_ids`
where the API has it, and on the token ids it streams back (the stream is closed, which stops
llama-server generating). Servers on their own do neither: llama-server's /tokenize parses
sentinels in user text, and a CodeGemma GGUF from llama.cpp's converter (no fim_sep key) runs
past `<|file_separator|>` on llama-server and vLLM.

Nothing is sent to a slot before the first real completion: a probe would land in a slot and
evict the prompt the server has cached there. A server that refuses token-id prompts says so on
that first request, and is refused then.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Any

from cg.engine import (
    EngineInfo,
    LogitsProcessor,
    Piece,
    PromptProgress,
    Sampling,
    Timings,
    is_instruct_name,
    split_sentinels,
)
from cg.engine.remote.apis import (
    CompletionApi,
    LlamaServerApi,
    LlamaServerTokenizer,
    OpenAIApi,
    Tokenizer,
    VllmTokenizer,
    listed_models,
)
from cg.engine.remote.client import Http, open_server
from cg.errors import ModelNotServedError, ServerRejectedError, UnsupportedServerError, UsageError
from cg.models import special_ids
from cg.request import Api
from cg.settings import DEFAULT_CTX


@dataclass(frozen=True)
class RemoteEngine:
    http: Http  # where completions go (…/v1 for the OpenAI API)
    api: CompletionApi
    root: Http  # the server's root: /tokenize and /detokenize live beside /v1, not in it
    tokenizer: Tokenizer
    model: str
    info: EngineInfo
    protected: dict[int, str]  # sentinel id -> text: what user text must never tokenize into
    load_ms: float = 0.0

    def tokenize_text(self, text: str) -> list[int]:
        """User text through the server's tokenizer, sentinels split so none can be injected."""
        return split_sentinels(text, self._tokenize, self.protected)

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer.tokenize(self.root, self.model, text, special=False)

    def generate(self, prompt: Sequence[int], *, max_tokens: int, sampling: Sampling,
                 logit_bias: dict[int, float] | None, logits_processor: LogitsProcessor | None,
                 timings: Timings, on_prompt: PromptProgress | None, exact: bool,
                 cancel: Callable[[], bool] | None = None) -> Generator[Piece, None, None]:
        if logits_processor is not None:
            raise UsageError("a logits processor runs inside this process; a server cannot take one",
                             "Drop --server to run the model locally.")
        special = self.info.special
        timings.reuse = "server"
        body = self.api.request(self.model, prompt, max_tokens, sampling, logit_bias or {}, special.stop_ids)
        events = self.http.events(self.api.completion_path, body)
        room = max_tokens  # the request says max_tokens, but a server may not listen
        try:
            for event in _refusing_text_prompts(events, self.http):
                if cancel is not None and cancel():
                    return  # closing the stream: the server stops generating
                if event is None:
                    yield Piece()  # a sign of life: the caller may look at the clock
                    continue
                piece, last = self.api.piece(self.http, event, special)
                piece, used = self._within(piece, room)
                room -= used
                yield piece
                if last or room <= 0:
                    return
        finally:
            events.close()

    def _within(self, piece: Piece, room: int) -> tuple[Piece, int]:
        """piece cut to room tokens, and the tokens it holds. Text without ids (a server that
        sends none) is counted through the server's tokenizer, one token at least, so that
        max_tokens ends a stream from a server that ignores it."""
        if piece.ids:
            return (piece if len(piece.ids) <= room else replace(piece, ids=piece.ids[:room], text="")), \
                min(len(piece.ids), room)
        text = piece.text if isinstance(piece.text, str) else ""
        if not text:
            return piece, 0
        count = len(self.tokenize_text(text))
        if count <= room:
            return piece, max(1, count)
        return replace(piece, text=text[:self._longest_within(text, room)]), room

    def _longest_within(self, text: str, room: int) -> int:
        """The longest prefix of text that tokenizes into at most room tokens (a binary search:
        a few tokenizer calls, once per completion)."""
        low, high = 0, len(text)  # text[:low] fits, text[:high + 1] does not
        while low < high:
            middle = (low + high + 1) // 2
            if len(self.tokenize_text(text[:middle])) <= room:
                low = middle
            else:
                high = middle - 1
        return low


def _refusing_text_prompts(events: Generator[dict[str, Any] | None, None, None], http: Http
                           ) -> Generator[dict[str, Any] | None, None, None]:
    """A 4xx to a completion request is a server that does not take prompts as token ids."""
    try:
        yield from events
    except ServerRejectedError as exc:
        raise UnsupportedServerError(
            f"the server at {http.base} does not take prompts as token ids ({exc.message})",
            "cg refuses text prompts: the server would tokenize the sentinels in code (injection) and the FIM "
            "layout differently, and miss stops. Use llama-server, vLLM, or another server that takes token ids."
        ) from None


def connect(url: str, *, api: str | None = None, api_key: str | None = None, model: str | None = None,
            n_ctx: int = DEFAULT_CTX, recorded: dict[str, int] | None = None) -> RemoteEngine:
    """Find out what the server at url is and serves, and describe it. recorded: special ids
    cg's store holds for the served model (None: looked up by the model's name)."""
    start = time.perf_counter()
    completions, http, props = _detect(open_server(url, api_key), Api(api) if api else None)
    root = http.at(http.base.removesuffix("/v1"))
    tokenizer: Tokenizer = LlamaServerTokenizer() if props or _is_llama_server(root) else VllmTokenizer()
    served = _models(http, completions, props)
    name = _choose(served, model, http.base)
    entry = served.get(name) or {}

    def pieces(texts: list[str]) -> dict[str, int]:
        return {t: i for t in texts if (i := _lookup(tokenizer, root, name, t)) is not None}

    if recorded is None:
        from cg.models import store

        recorded = store.recorded_ids(PurePosixPath(name).stem)
    special = special_ids.resolve(lambda _key: None, pieces, recorded)
    if special.bos is None:
        raise UnsupportedServerError(f"the model at {http.base} has no <bos> token cg can find",
                                     "cg needs the model's vocabulary to hold Gemma's special tokens.")
    context = completions.context(http, props, entry) or n_ctx
    info = EngineInfo(name=name, label=f"{PurePosixPath(name).name} at {http.base}", server=http.base, n_ctx=context,
                      n_vocab=completions.vocab_size(http, entry), special=special, bos=special.bos,
                      chat=is_instruct_name(PurePosixPath(name).name), default_window=context)
    return RemoteEngine(http, completions, root, tokenizer, name, info, special.sentinel_ids(),
                        (time.perf_counter() - start) * 1000)


def _lookup(tokenizer: Tokenizer, root: Http, model: str, text: str) -> int | None:
    """The id of a special token's text in the server's vocabulary, checked both ways."""
    ids = tokenizer.tokenize(root, model, text, special=True)
    if len(ids) == 1 and tokenizer.detokenize(root, model, ids) in (text, None):
        return ids[0]
    return None


def _is_llama_server(root: Http) -> bool:
    props = root.call("GET", "/props", missing_ok=True)
    return isinstance(props, dict) and "default_generation_settings" in props


def _detect(http: Http, forced: Api | None) -> tuple[CompletionApi, Http, dict[str, Any]]:
    """(the completion API, where to send it, llama-server's /props or {})."""
    base = http.base
    if forced == Api.OPENAI or (forced is None and base.endswith("/v1")):
        v1 = http if base.endswith("/v1") else http.at(base + "/v1")
        if v1.call("GET", "/models", missing_ok=True) is None:
            raise UnsupportedServerError(f"no OpenAI-compatible API at {v1.base} (GET /models found nothing)",
                                         "Check the URL: vLLM serves http://host:8000/v1.")
        return OpenAIApi(), v1, {}
    props = http.call("GET", "/props", missing_ok=True)
    if isinstance(props, dict) and "default_generation_settings" in props:
        return LlamaServerApi(), http, props
    if forced == Api.LLAMA:
        raise UnsupportedServerError(f"no llama.cpp server API at {base} (GET /props)",
                                     "Check the URL: llama-server serves http://host:8080.")
    return _detect(http, Api.OPENAI)


def _models(http: Http, completions: CompletionApi, props: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Served model id -> its entry in /v1/models (llama-server: its one model)."""
    v1 = http if completions.name == Api.OPENAI else http.at(http.base + "/v1")
    models = listed_models(http, v1.call("GET", "/models", missing_ok=True))
    if completions.name == Api.LLAMA and not models:
        alias = props.get("model_alias") or props.get("model_path") or "model"
        models = {str(alias): {}}
    return models


def _choose(served: dict[str, dict[str, Any]], wanted: str | None, base: str) -> str:
    names = sorted(served)
    if not names:
        raise ModelNotServedError(f"the server at {base} lists no models",
                                  "Check that the server has loaded a model (GET /v1/models).")
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
