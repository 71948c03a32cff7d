"""CodeGemma's special tokens in a loaded vocabulary: the one resolver every engine and the store use.

For each token of cg_core's table, in this order: its GGUF metadata key (or a legacy key), else
its exact piece in the vocabulary, else the id cg's store recorded when the model was installed
(for GGUFs that lack both). Engines differ only in how they read metadata and pieces: the local
engine reads the GGUF's header, a server its tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from cg.models.gguf_header import GGUFHeaderError, open_header
from cg_core.tokens import BY_NAME, SENTINELS, metadata_keys

# Found by piece when no metadata key names them: <bos>, <eos> and the prompt-format sentinels.
BY_PIECE = (BY_NAME["bos"], BY_NAME["eos"], *SENTINELS)


@dataclass(frozen=True)
class SpecialIds:
    """Ids of the special tokens (cg_core/tokens.py names them) in the loaded vocabulary."""

    bos: int | None = None
    eos: int | None = None
    fim_pre: int | None = None
    fim_suf: int | None = None
    fim_mid: int | None = None
    fim_sep: int | None = None
    start_turn: int | None = None
    eot: int | None = None
    extra_stops: frozenset[int] = frozenset()  # what llama.cpp itself treats as end of generation

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

    def sentinel_ids(self) -> dict[int, str]:
        """Sentinel id -> its text: what user text must never tokenize into."""
        return {token: t.text for t in SENTINELS if (token := getattr(self, t.name)) is not None}


NAMES = tuple(f.name for f in fields(SpecialIds) if f.name in BY_NAME)


def resolve(metadata: Callable[[str], int | None], pieces: Callable[[list[str]], Mapping[str, int]],
            recorded: Mapping[str, int] | None = None, extra_stops: frozenset[int] = frozenset()) -> SpecialIds:
    """Special ids from metadata keys, else exact vocabulary pieces, else ids recorded in the store.

    metadata(key) -> an id or None; pieces(texts) -> {text: id} for the texts found."""
    found: dict[str, int] = {}
    for name in NAMES:
        for key in metadata_keys(BY_NAME[name]):
            value = metadata(key)
            if value is not None and value >= 0:
                found[name] = value
                break
    wanted = {t.text: t.name for t in BY_PIECE if t.name not in found}
    for text, token in pieces(list(wanted)).items():
        found[wanted[text]] = token
    for name, value in (recorded or {}).items():
        if name in NAMES and name not in found and isinstance(value, int) and value >= 0:
            found[name] = value
    return SpecialIds(**found, extra_stops=extra_stops)


def of_gguf(path: Path | str, recorded: Mapping[str, int] | None = None, extra_stops: frozenset[int] = frozenset(),
            metadata: Callable[[str], int | None] | None = None) -> tuple[SpecialIds, set[str]]:
    """A GGUF file's special ids, and the names its metadata gave (the rest came from pieces or
    the store). metadata: a faster reader of its keys where one is at hand (a loaded model's);
    else the header is read. A header cg cannot read gives what the store recorded."""
    try:
        header, data = open_header(path)
    except (OSError, GGUFHeaderError):
        return resolve(lambda _k: None, lambda _t: {}, recorded, extra_stops), set()
    try:
        if metadata is None:
            scalars = header.scalars()

            def metadata(key: str) -> int | None:
                value = scalars.get(key)
                return value if isinstance(value, int) and not isinstance(value, bool) else None

        lookup = metadata
        from_meta = {name for name in NAMES if any(lookup(k) is not None for k in metadata_keys(BY_NAME[name]))}
        return resolve(lookup, header.find_pieces, recorded, extra_stops), from_meta
    except GGUFHeaderError:
        return resolve(lambda _k: None, lambda _t: {}, recorded, extra_stops), set()
    finally:
        data.close()
