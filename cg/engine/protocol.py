"""The engine interface: where a model runs is one choice at the bottom of cg.

Everything above an engine (complete.py, infill.py, prompt/, evaluate/, serve/) works on token
ids, Pieces and Events, and never asks which engine it has: the local llama.cpp one (engine/local/:
CPU, or layers on a GPU) or a server (engine/remote/: llama.cpp's llama-server, or an
OpenAI-compatible completions API that takes token-id prompts, such as vLLM). factory.py builds them.

An engine describes itself once (EngineInfo) and generates Pieces: the token ids and text it
produced. decode.py's `decode()` is the one loop over them that every engine shares.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from cg.models.special_ids import SpecialIds
from cg.request import LogitsProcessor, Sampling

__all__ = ["Completion", "Cutter", "Engine", "EngineInfo", "Event", "LogitsProcessor", "Piece", "PromptProgress",
           "Sampling", "SpecialIds", "Timings", "is_instruct_name", "split_sentinels"]

PromptProgress = Callable[[int, int], None]  # (tokens evaluated, prompt tokens)
# An instruction-tuned model's name: "-it" as a whole word (codegemma-7b-it-q4_k_m.gguf,
# gemma-2-9b-it.Q4.gguf), not inside another one (model-iter, item).
_INSTRUCT_NAME = re.compile(r"(?:^|[-_.])it(?:$|[-_.])", re.IGNORECASE)


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


@dataclass
class Timings:
    load_ms: float = 0.0
    prompt_ms: float = 0.0
    generation_ms: float = 0.0
    cached_tokens: int = 0  # prompt tokens not evaluated: reused from memory, the disk cache or a server's cache
    spliced_tokens: int = 0  # of those, reused after a change (moved, or after changed tokens)
    evaluated_tokens: int | None = None  # prompt tokens evaluated (None: a server that does not say)
    disk_cache_ms: float = 0.0  # time spent loading from the on-disk prompt cache
    reuse: str = "none"  # none, prefix (exact), splice (after a change), refresh (a splice refused: the
    #                      state was SPLICE_DEPTH splices deep, its exact prefix reused), server

    def to_json(self) -> dict[str, Any]:
        return {f.name: round(v, 3) if isinstance(v := getattr(self, f.name), float) else v for f in fields(self)}


@dataclass
class Completion:
    """What one completion gave: its text, why it ended, its counts and timings."""

    text: str
    stop_reason: str  # stop_token, max_tokens, or the cut that ended it (end_of_block, max_lines, ...)
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    model: str
    fim: bool = True
    prompt_ids: list[int] = field(default_factory=list, repr=False)
    server: str | None = None  # the server's URL when one ran the model
    context: list[str] = field(default_factory=list)  # the other files given (--context, auto's imports)
    truncated: bool = False  # text was left out of the prompt to fit its window

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "stop_reason": self.stop_reason, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "timings": self.timings.to_json(), "model": self.model,
                "fim": self.fim, "server": self.server, "context": self.context, "truncated": self.truncated}


@dataclass(frozen=True)
class Event:
    """One step of the one stream every caller reads (the CLI, cg serve, infill, eval): text
    that is final and can be shown now ('' while a cut may still take it back), the token that
    produced it (None for a server's text without ids), and on the last event the finish reason
    and the whole Completion."""

    text: str
    token: int | None = None
    finish_reason: str | None = None
    result: Completion | None = None


class Cutter(Protocol):
    """What ends a completion by its text (output/cuts.py's TextCutter): fed text as it comes,
    it hands back what no later text can take back."""

    @property
    def done(self) -> bool: ...

    @property
    def reason(self) -> str | None: ...

    def feed(self, piece: str) -> str: ...

    def mark_time_limit(self) -> None: ...

    def end_for_time(self) -> None: ...

    def finish(self) -> str: ...


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
                 timings: Timings, on_prompt: PromptProgress | None, exact: bool,
                 cancel: Callable[[], bool] | None = None) -> Generator[Piece, None, None]:
        """Generate after prompt until closed (at most max_tokens). exact: reuse only what gives
        a fresh run's result bit for bit. Closing the generator ends the generation (a server's
        stream is closed); the engine fills the reuse fields of timings. cancel, asked between
        two steps (a prompt chunk, a token, a server's event), ends it at once when true: what
        `cg serve` does when the next keystroke replaces a request."""
        ...


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
