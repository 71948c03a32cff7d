"""The engine interface: where a model runs is one choice at the bottom of cg.

Everything above an engine (complete.py, prompts.py, infill.py, evaluate/) works on token ids and
TokenEvents, and never asks which engine it has: the local llama-cpp-python one (local.py: CPU,
or layers on a GPU) or a server (remote.py: llama.cpp's llama-server, or an OpenAI-compatible
completions API that takes token-id prompts, such as vLLM). engines.py builds them.

An engine describes itself once (EngineInfo) and generates Pieces: the token ids and text it
produced. `decode()` is the one loop over them that both share: stop ids, the token limit,
timings, the text of each token.
"""

from __future__ import annotations

import codecs
import re
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Protocol

from .errors import UsageError
from .special_ids import SpecialIds

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Engine", "EngineInfo", "LogitsProcessor", "Piece", "PromptProgress", "Sampling", "SpecialIds",
           "Timings", "TokenEvent", "check_token_ids", "decode", "is_instruct_name", "split_sentinels"]

# logits_processor(input_ids, logits) -> logits, as llama-cpp-python calls it (local engine only)
LogitsProcessor = Callable[["np.ndarray", "np.ndarray"], "np.ndarray"]
PromptProgress = Callable[[int, int], None]  # (tokens evaluated, prompt tokens)
# An instruction-tuned model's name: "-it" as a whole word (codegemma-7b-it-q4_k_m.gguf,
# gemma-2-9b-it.Q4.gguf), not inside another one (model-iter, item).
_INSTRUCT_NAME = re.compile(r"(?:^|[-_.])it(?:$|[-_.])", re.IGNORECASE)


@dataclass(frozen=True)
class Sampling:
    """Greedy by default (temperature 0); repeat penalty 1.0 as Google's GGUF README advises."""

    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class EngineInfo:
    """What an engine is, described once when it is made."""

    name: str  # the model as --json reports it: its file, or the model a server serves
    label: str  # the model in messages: a file name, or MODEL at URL
    server: str | None  # the server's URL; None for the local engine
    n_ctx: int
    n_vocab: int | None  # None: the server does not say (it checks token ids itself)
    special: SpecialIds
    bos: int
    chat: bool  # an instruction model: prompts get Gemma's turn format
    default_window: int  # prompt tokens evaluated when the caller does not say


@dataclass(frozen=True)
class Piece:
    """What an engine produced in one step: token ids and their text (bytes from the local engine,
    decoded here; text from a server), or the end of generation it reports. An empty piece is a
    sign of life from a server that sends keep-alives: the caller gets to look at the clock."""

    ids: tuple[int, ...] = ()
    text: str | bytes = ""
    stop_id: int | None = None  # generation ended on this stop id (a server's summary)
    cached: int | None = None  # prompt tokens the server reused from its own cache


@dataclass(frozen=True)
class TokenEvent:
    token: int | None  # None: text without an id (a server that sends none), or a keep-alive
    text: str  # decoded text ('' for a control token or an incomplete UTF-8 byte)
    stop: bool  # the token is a stop id; its text is never part of the output


@dataclass
class Timings:
    load_ms: float = 0.0
    prompt_ms: float = 0.0
    generation_ms: float = 0.0
    cached_tokens: int = 0  # prompt tokens not evaluated: reused from memory, the disk cache or a server's cache
    spliced_tokens: int = 0  # of those, reused after a change (moved, or after changed tokens)
    evaluated_tokens: int | None = None  # prompt tokens evaluated (None: a server that does not say)
    disk_cache_ms: float = 0.0  # time spent loading from the on-disk prompt cache
    reuse: str = "none"  # none, prefix (exact), splice (after a change), server

    def to_json(self) -> dict[str, Any]:
        return {f.name: round(v, 3) if isinstance(v := getattr(self, f.name), float) else v for f in fields(self)}


class Engine(Protocol):
    """What cg needs of a place that runs the model."""

    @property
    def info(self) -> EngineInfo: ...

    @property
    def load_ms(self) -> float: ...

    def tokenize_text(self, text: str) -> list[int]:
        """User text as ids, special-token parsing off: sentinel text in code stays text."""
        ...

    def generate(self, prompt: Sequence[int], *, max_tokens: int, sampling: Sampling,
                 logit_bias: dict[int, float] | None, logits_processor: LogitsProcessor | None,
                 timings: Timings, on_prompt: PromptProgress | None, exact: bool) -> Generator[Piece, None, None]:
        """Generate after prompt until closed (at most max_tokens). exact: reuse only what gives
        a fresh run's result bit for bit. Closing the generator ends the generation (a server's
        stream is closed); the engine fills the reuse fields of timings."""
        ...


def decode(engine: Engine, prompt: Sequence[int], *, max_tokens: int, sampling: Sampling = Sampling(),
           logit_bias: dict[int, float] | None = None, logits_processor: LogitsProcessor | None = None,
           timings: Timings | None = None, on_prompt: PromptProgress | None = None,
           exact: bool = False) -> Generator[TokenEvent, None, None]:
    """The one decode loop: up to max_tokens tokens after prompt; the last event is a stop token
    or the limit. Closing the generator ends the generation."""
    if logit_bias and engine.info.n_vocab is not None:
        check_token_ids(list(logit_bias), engine.info.n_vocab, "--logit-bias")
    timings = timings if timings is not None else Timings()
    stops = engine.info.special.stop_ids
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    start, first, count = time.perf_counter(), None, 0
    pieces = engine.generate(prompt, max_tokens=max_tokens, sampling=sampling, logit_bias=logit_bias,
                             logits_processor=logits_processor, timings=timings, on_prompt=on_prompt, exact=exact)
    try:
        for piece in pieces:
            now = time.perf_counter()
            if first is None and (piece.ids or piece.text):
                first = now
                timings.prompt_ms = (now - start) * 1000
            if first is not None:
                timings.generation_ms = (now - first) * 1000
            if piece.cached is not None:
                timings.cached_tokens = piece.cached
            text = decoder.decode(piece.text) if isinstance(piece.text, bytes) else piece.text
            for i, token in enumerate(piece.ids):
                if token in stops:
                    yield TokenEvent(token, "", True)
                    return
                count += 1
                yield TokenEvent(token, text if i == len(piece.ids) - 1 else "", False)
                if count >= max_tokens:
                    return
            if not piece.ids:
                yield TokenEvent(None, text, False)
            if piece.stop_id is not None:
                yield TokenEvent(piece.stop_id, "", True)
                return
    finally:
        pieces.close()


def is_instruct_name(name: str) -> bool:
    return bool(_INSTRUCT_NAME.search(name))


def split_sentinels(text: str, tokenize: Callable[[str], list[int]], protected: dict[int, str]) -> list[int]:
    """Tokenize user text so that no protected (sentinel) id comes out of it.

    Tokenizers can match special tokens inside plain text: llama.cpp does for USER_DEFINED
    tokens even with special parsing off, llama-server's /tokenize and Hugging Face tokenizers
    do for special tokens. Where that happens, the sentinel's text is split after its first
    character, so only ordinary tokens can match.
    """
    ids = tokenize(text) if text else []
    if protected.keys().isdisjoint(ids):
        return ids
    texts = set(protected.values())
    pattern = "(" + "|".join(re.escape(t) for t in sorted(texts, key=len, reverse=True)) + ")"
    out: list[int] = []
    for part in re.split(pattern, text):
        if part in texts:
            out += tokenize(part[:1]) + tokenize(part[1:])
        elif part:
            out += tokenize(part)
    return out


def check_token_ids(ids: Sequence[int], n_vocab: int, what: str) -> None:
    """Refuse ids outside the vocabulary (a negative one would index from the end)."""
    bad = [i for i in ids if not 0 <= i < n_vocab]
    if bad:
        raise UsageError(f"{what}: token id {bad[0]} is not in the model's vocabulary (0..{n_vocab - 1})",
                         "Use an id the model has, e.g. 70 for <|file_separator|> in CodeGemma.")
