"""SentencePiece tokenizer + tokenizer config -> GGUF vocabulary and special ids.

Follows llama.cpp's `_create_vocab_sentencepiece` (token types, added tokens, padding to
vocab_size) and goes one step further for CodeGemma: the FIM sentinels, <|file_separator|> and
the turn tokens are found by text, written as tokenizer.ggml.fim_*_token_id / eot_token_id, and
typed CONTROL. llama.cpp's own converter never writes fim_sep ("No handler for special token
type fsep"), so its GGUFs run on into the next file; and a USER_DEFINED sentinel would be
matched inside user code even with special parsing off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
from gguf import TokenType

from .errors import ConversionError
from .tokens import BY_NAME, KEYED, SENTINELS


@dataclass
class Vocab:
    tokens: list[bytes]
    scores: list[float]
    types: list[TokenType]
    special: dict[str, int] = field(default_factory=dict)  # tokens.KEYED names -> ids
    add_bos: bool = True
    add_eos: bool = False

    def id_of(self, text: str) -> int | None:
        try:
            return self.tokens.index(text.encode("utf-8"))
        except ValueError:
            return None


def looks_special(text: str) -> bool:
    """llama.cpp's does_token_look_special, for tokens a config forgets to mark special."""
    return (text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
            or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<unused") and text.endswith(">")))


def load_vocab(folder: Path, vocab_size: int | None) -> Vocab:
    from sentencepiece import SentencePieceProcessor

    model = folder / "tokenizer.model"
    if not model.is_file():
        raise ConversionError(f"tokenizer.model is missing in {folder}",
                              "Gemma checkpoints ship a SentencePiece tokenizer.model; download it too.")
    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(model))
    size = vocab_size or sp.vocab_size()
    tokens = [f"[PAD{i}]".encode() for i in range(size)]
    scores = [-10000.0] * size
    types = [TokenType.UNUSED] * size
    for i in range(min(size, sp.vocab_size())):
        tokens[i] = sp.IdToPiece(i).encode("utf-8")
        scores[i] = sp.GetScore(i)
        types[i] = (TokenType.UNKNOWN if sp.IsUnknown(i) else TokenType.CONTROL if sp.IsControl(i)
                    else TokenType.UNUSED if sp.IsUnused(i) else TokenType.BYTE if sp.IsByte(i) else TokenType.NORMAL)
    config = _read_json(folder / "tokenizer_config.json")
    _apply_added_tokens(folder, config, tokens, scores, types)
    vocab = Vocab(tokens, scores, types, add_bos=bool(config.get("add_bos_token", True)),
                  add_eos=bool(config.get("add_eos_token", False)))
    vocab.special = _special_ids(sp, vocab, config, _read_json(folder / "special_tokens_map.json"))
    for sentinel in SENTINELS:
        token = vocab.id_of(sentinel.text)
        if token is not None:
            vocab.types[token] = TokenType.CONTROL
    return vocab


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path.name} in {path.parent} is not valid JSON ({exc})",
                              "Download the checkpoint's tokenizer files again.") from None
    return data if isinstance(data, dict) else {}


def _apply_added_tokens(folder: Path, config: dict[str, Any], tokens: list[bytes], scores: list[float],
                        types: list[TokenType]) -> None:
    size = len(tokens)
    for text, token in _read_json(folder / "added_tokens.json").items():
        if token < size:
            tokens[token], scores[token], types[token] = text.encode("utf-8"), -1000.0, TokenType.USER_DEFINED
    for key, data in config.get("added_tokens_decoder", {}).items():
        token, text = int(key), data["content"]
        if token >= size:
            continue
        if data.get("special") or looks_special(text):
            types[token] = TokenType.CONTROL
        else:
            text = text.replace("\u2581", " ")  # llama.cpp pre-normalizes user-defined spaces
            types[token] = TokenType.USER_DEFINED
        scores[token], tokens[token] = -1000.0, text.encode("utf-8")


def _special_ids(sp: Any, vocab: Vocab, config: dict[str, Any], special_map: dict[str, Any]) -> dict[str, int]:
    special = {}
    for name, sp_id in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id()), ("pad", sp.pad_id())):
        text = _token_content(config.get(f"{name}_token")) or _token_content(special_map.get(f"{name}_token"))
        token = vocab.id_of(text) if text else None
        if token is None and sp_id >= 0:
            token = sp_id
        if token is not None:
            special[name] = token
    for sentinel in KEYED:
        token = vocab.id_of(sentinel.text) if sentinel.sentinel else None
        if token is not None:
            special[sentinel.name] = token
    return special


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def write_vocab(writer: gguf.GGUFWriter, vocab: Vocab) -> None:
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    for name, token in vocab.special.items():
        key = BY_NAME[name].gguf_key
        assert key is not None
        writer.add_uint32(key, token)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    writer.add_add_space_prefix(False)
