"""The engine interface: where a model runs is one choice at the bottom of cg.

Everything above an engine (complete.py, infill.py, evaluate/) works on token ids and
TokenEvents, and never asks which engine it has: the local llama-cpp-python one (local.py: CPU,
or layers on a GPU) or a server (server.py: llama.cpp's llama-server, or an OpenAI-compatible
completions API that takes token-id prompts, such as vLLM). This module holds the interface and
what both share: the special ids, sampling, events, timings and the sentinel-safe tokenization.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Protocol

from quantize.tokens import BY_NAME, SENTINELS, metadata_keys

from .errors import UsageError

if TYPE_CHECKING:
    import numpy as np

# logits_processor(input_ids, logits) -> logits, as llama-cpp-python calls it (local engine only)
LogitsProcessor = Callable[["np.ndarray", "np.ndarray"], "np.ndarray"]
PromptProgress = Callable[[int, int], None]  # (tokens evaluated, prompt tokens)
# An instruction-tuned model's name: "-it" as a whole word (codegemma-7b-it-q4_k_m.gguf,
# gemma-2-9b-it.Q4.gguf), not inside another one (model-iter, item).
_INSTRUCT_NAME = re.compile(r"(?:^|[-_.])it(?:$|[-_.])", re.IGNORECASE)


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens (quantize/tokens.py names them) in the loaded vocabulary."""

    bos: int | None = None
    eos: int | None = None
    fim_pre: int | None = None
    fim_suf: int | None = None
    fim_mid: int | None = None
    fim_sep: int | None = None
    start_turn: int | None = None
    eot: int | None = None
    extra_stops: frozenset[int] = frozenset()

    @property
    def has_fim(self) -> bool:
        return None not in (self.fim_pre, self.fim_suf, self.fim_mid)

    def fim_triple(self) -> tuple[int, int, int]:
        """(prefix, suffix, middle) sentinel ids; only for a model that has them."""
        if self.fim_pre is None or self.fim_suf is None or self.fim_mid is None:
            raise ValueError("the model has no FIM tokens")
        return self.fim_pre, self.fim_suf, self.fim_mid

    @property
    def stop_ids(self) -> frozenset[int]:
        """<eos>, every FIM sentinel, <|file_separator|> and <end_of_turn>, marked EOG or not."""
        ids = {getattr(self, t.name) for t in BY_NAME.values() if t.stop}
        return frozenset(i for i in ids if i is not None) | self.extra_stops

    def named(self) -> dict[str, int]:
        """The ids found, by name (what cg's store records)."""
        return {f.name: v for f in fields(self) if isinstance(v := getattr(self, f.name), int)}


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
class TokenEvent:
    token: int
    text: str  # decoded text of this token ('' for a control token or an incomplete UTF-8 byte)
    stop: bool  # the token is a stop id; its text is never part of the output


@dataclass
class Timings:
    load_ms: float = 0.0
    prompt_ms: float = 0.0
    generation_ms: float = 0.0
    cached_tokens: int = 0  # prompt tokens not evaluated: reused from memory or the prompt cache
    disk_cache_ms: float = 0.0  # time spent loading from the on-disk prompt cache


class Engine(Protocol):
    """What cg needs of a place that runs the model."""

    special: SpecialIds
    load_ms: float

    @property
    def name(self) -> str:
        """The model as --json reports it: its file, or the model a server serves."""
        ...

    @property
    def label(self) -> str:
        """The model in messages: a file name, or MODEL at URL."""
        ...

    @property
    def server(self) -> str | None:
        """The server's URL, or None for the local engine."""
        ...

    @property
    def n_ctx(self) -> int: ...

    @property
    def n_vocab(self) -> int: ...

    @property
    def is_chat(self) -> bool: ...

    @property
    def default_window(self) -> int:
        """Prompt tokens evaluated when the caller does not say."""
        ...

    @property
    def bos(self) -> int: ...

    def tokenize_text(self, text: str) -> list[int]:
        """User text as ids, special-token parsing off: sentinel text in code stays text."""
        ...

    def stream(self, prompt: Sequence[int], *, max_tokens: int, sampling: Sampling = Sampling(),
               logit_bias: dict[int, float] | None = None, logits_processor: LogitsProcessor | None = None,
               timings: Timings | None = None, on_prompt: PromptProgress | None = None,
               ) -> Generator[TokenEvent, None, None]:
        """Decode up to max_tokens after prompt; the last event is a stop token or the limit.
        Closing the generator ends the generation (a server's stream is closed)."""
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


def find_special_ids(from_metadata: Callable[[str], int | None], by_text: Callable[[str], int | None],
                     recorded: dict[str, int], extra_stops: frozenset[int] = frozenset()) -> SpecialIds:
    """Special ids from metadata keys, else the vocabulary by token text, else ids recorded in
    cg's store (for GGUFs that lack them)."""
    found: dict[str, int] = {}
    for name in (f.name for f in fields(SpecialIds) if f.name in BY_NAME):
        for key in metadata_keys(BY_NAME[name]):
            value = from_metadata(key)
            if value is not None and value >= 0:
                found[name] = value
                break
    for token in (BY_NAME["bos"], BY_NAME["eos"], *SENTINELS):
        if token.name not in found:
            value = by_text(token.text)
            if value is not None:
                found[token.name] = value
    for name, value in recorded.items():
        if name in SpecialIds.__dataclass_fields__ and name not in found:
            found[name] = int(value)
    return SpecialIds(**found, extra_stops=extra_stops)


def check_token_ids(ids: Sequence[int], n_vocab: int, what: str) -> None:
    """Refuse ids outside the vocabulary (a negative one would index from the end)."""
    bad = [i for i in ids if not 0 <= i < n_vocab]
    if bad:
        raise UsageError(f"{what}: token id {bad[0]} is not in the model's vocabulary (0..{n_vocab - 1})",
                         "Use an id the model has, e.g. 70 for <|file_separator|> in CodeGemma.")
