"""CodeGemma's special tokens: the one table of their texts, ids and GGUF metadata keys.

Used by the converter (which ids to write and type CONTROL), cg's engine (which ids to look up
and stop on), `cg download` (which ids a downloaded GGUF lacks), the synthetic checkpoints and
the tests. The ids are CodeGemma's (Gemma vocabulary); code looks ids up in the loaded vocabulary
first (by metadata key, else by text) and uses these numbers only to build test tokenizers.

The keys are spelled out rather than read from `gguf.Keys` so that importing this table stays
free (no numpy); a test checks them against gguf-py.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpecialToken:
    name: str  # cg's name for it: SpecialIds field, store record key
    text: str
    codegemma_id: int
    gguf_key: str | None  # tokenizer.ggml.* key holding its id
    legacy_keys: tuple[str, ...] = ()  # older converters' keys for the same id
    stop: bool = False  # ends a completion wherever it appears, marked end-of-generation or not
    sentinel: bool = False  # a control token of CodeGemma's prompt formats, found by text if no key names it


SPECIAL_TOKENS: tuple[SpecialToken, ...] = (
    SpecialToken("pad", "<pad>", 0, "tokenizer.ggml.padding_token_id"),
    SpecialToken("eos", "<eos>", 1, "tokenizer.ggml.eos_token_id", stop=True),
    SpecialToken("bos", "<bos>", 2, "tokenizer.ggml.bos_token_id"),
    SpecialToken("unk", "<unk>", 3, "tokenizer.ggml.unknown_token_id"),
    SpecialToken("fim_pre", "<|fim_prefix|>", 67, "tokenizer.ggml.fim_pre_token_id",
                 ("tokenizer.ggml.prefix_token_id",), stop=True, sentinel=True),
    SpecialToken("fim_mid", "<|fim_middle|>", 68, "tokenizer.ggml.fim_mid_token_id",
                 ("tokenizer.ggml.middle_token_id",), stop=True, sentinel=True),
    SpecialToken("fim_suf", "<|fim_suffix|>", 69, "tokenizer.ggml.fim_suf_token_id",
                 ("tokenizer.ggml.suffix_token_id",), stop=True, sentinel=True),
    SpecialToken("fim_sep", "<|file_separator|>", 70, "tokenizer.ggml.fim_sep_token_id", stop=True, sentinel=True),
    SpecialToken("start_turn", "<start_of_turn>", 106, None, sentinel=True),
    SpecialToken("eot", "<end_of_turn>", 107, "tokenizer.ggml.eot_token_id", stop=True, sentinel=True),
)
BY_NAME = {t.name: t for t in SPECIAL_TOKENS}
SENTINELS = tuple(t for t in SPECIAL_TOKENS if t.sentinel)
# Written to a GGUF's metadata and recorded in cg's store: everything a key exists for.
KEYED = tuple(t for t in SPECIAL_TOKENS if t.gguf_key)
# What llama.cpp's converter leaves out and a downloaded GGUF is checked for.
FIM_AND_TURN = tuple(BY_NAME[n] for n in ("fim_pre", "fim_suf", "fim_mid", "fim_sep", "eot"))
STOP_NAMES = tuple(t.name for t in SPECIAL_TOKENS if t.stop)


def metadata_keys(token: SpecialToken) -> tuple[str, ...]:
    """The keys to read the token's id from, newest first."""
    return ((token.gguf_key,) if token.gguf_key else ()) + token.legacy_keys
