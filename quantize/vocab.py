"""SentencePiece tokenizer (or its tokenizer.json) + tokenizer config -> GGUF vocabulary and special ids.

A checkpoint without tokenizer.model (Jlama's repos carry tokenizer.json alone) gets the very
vocabulary tokenizer.model would give: the pieces and ids of tokenizer.json's SentencePiece-style
BPE model, and SentencePiece BPE's scores, which its trainer sets to minus the piece's rank among
the learned pieces (0 for control, unknown, user-defined and byte pieces).

Follows llama.cpp's `_create_vocab_sentencepiece` (token types, added tokens, padding to
vocab_size) and goes one step further for CodeGemma: the FIM sentinels, <|file_separator|> and
the turn tokens are found by text, written as tokenizer.ggml.fim_*_token_id / eot_token_id, and
typed CONTROL. llama.cpp's own converter never writes fim_sep ("No handler for special token
type fsep"), so its GGUFs run on into the next file; and a USER_DEFINED sentinel would be
matched inside user code even with special parsing off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
from gguf import TokenType

from cg_core.tokens import BY_NAME, KEYED, SENTINELS

from .checkpoint import read_json
from .config import bad_field, section, show, text, token_id
from .errors import ConversionError


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


@dataclass
class _Pieces:
    """What the tokenizer file itself says, before the tokenizer config's added tokens."""

    tokens: list[bytes]
    scores: list[float]
    types: list[TokenType]
    ids: dict[str, int]  # bos / eos / unk / pad as the tokenizer file names them


def _padded(size: int) -> _Pieces:
    """size slots; those the tokenizer does not fill stay [PADn] (as llama.cpp's converter pads)."""
    return _Pieces([f"[PAD{i}]".encode() for i in range(size)], [-10000.0] * size, [TokenType.UNUSED] * size, {})


def _from_sentencepiece(model: Path, vocab_size: int | None) -> _Pieces:
    from sentencepiece import SentencePieceProcessor

    sp = SentencePieceProcessor()
    try:
        sp.LoadFromFile(str(model))
    except (RuntimeError, OSError) as exc:  # sentencepiece's parse errors are RuntimeErrors
        reason = " ".join(str(exc).split())[:120]  # sentencepiece's message, on one line
        raise ConversionError(f"{model.name} in {model.parent} is not a SentencePiece model ({reason})",
                              "Download the checkpoint's tokenizer.model again.") from None
    if sp.vocab_size() < 1:
        raise ConversionError(f"{model.name} in {model.parent} holds no tokens",
                              "Download the checkpoint's tokenizer.model again.")
    out = _padded(vocab_size or sp.vocab_size())
    for i in range(min(len(out.tokens), sp.vocab_size())):
        out.tokens[i] = sp.IdToPiece(i).encode("utf-8")
        out.scores[i] = sp.GetScore(i)
        out.types[i] = (TokenType.UNKNOWN if sp.IsUnknown(i) else TokenType.CONTROL if sp.IsControl(i)
                        else TokenType.UNUSED if sp.IsUnused(i) else TokenType.BYTE if sp.IsByte(i)
                        else TokenType.NORMAL)
    out.ids = {name: i for name, i in (("bos", sp.bos_id()), ("eos", sp.eos_id()), ("unk", sp.unk_id()),
                                       ("pad", sp.pad_id())) if i >= 0}
    return out


_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


def _from_tokenizer_json(path: Path, vocab_size: int | None, config: dict[str, Any]) -> _Pieces:
    """The SentencePiece view of a tokenizer.json written from a SentencePiece BPE model."""
    data = _read_json(path)
    model = section("model", data.get("model"), path.name)
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict) or not model["vocab"]:
        raise ConversionError(f"{path} is not a SentencePiece-style BPE tokenizer (model type "
                              f"{show(model.get('type'))})", "cg reads Gemma's tokenizer.json, or a tokenizer.model.")
    pieces = {piece: token_id(f"model.vocab {show(piece)}", i, path.name) for piece, i in model["vocab"].items()}
    by_id = {i: piece for piece, i in pieces.items()}
    added_ids = set()
    added_tokens = data.get("added_tokens") or []
    if not isinstance(added_tokens, list):
        raise bad_field("added_tokens", added_tokens, "not a list", path.name)
    for added in added_tokens:
        if not isinstance(added, dict) or not isinstance(added.get("content"), str):
            raise bad_field("added_tokens", added, "not a token (an object with its content and id)", path.name)
        added_ids.add(token_id(f"added_tokens {show(added['content'])}", added.get("id"), path.name))
        by_id.setdefault(added["id"], added["content"])
    out = _padded(vocab_size or max(by_id) + 1)
    ids = {}
    for name in ("bos", "eos", "unk", "pad"):
        content = _token_content(config.get(f"{name}_token")) or f"<{name}>"
        if content in pieces:
            ids[name] = pieces[content]
    if isinstance(model.get("unk_token"), str) and model["unk_token"] in pieces:
        ids["unk"] = pieces[model["unk_token"]]
    # Meta pieces (control, unknown, user-defined = the added tokens; bytes) score 0; the learned
    # ones -rank, ranked by id from the first of them.
    byte_ids = ({i for i, piece in by_id.items() if _BYTE_PIECE.fullmatch(piece)} if model.get("byte_fallback")
                else set())
    meta = added_ids | set(ids.values()) | byte_ids
    base = min((i for i in by_id if i not in meta), default=0)
    control = {ids[n] for n in ("bos", "eos", "pad") if n in ids}
    for i, piece in by_id.items():
        if i >= len(out.tokens):
            continue
        out.tokens[i] = piece.encode("utf-8")
        out.scores[i] = 0.0 if i in meta else -float(i - base)
        out.types[i] = (TokenType.UNKNOWN if i == ids.get("unk") else TokenType.CONTROL if i in control
                        else TokenType.BYTE if i in byte_ids else TokenType.NORMAL)
    out.ids = ids
    return out


def load_vocab(folder: Path, vocab_size: int | None) -> Vocab:
    config = _read_json(folder / "tokenizer_config.json")
    if (folder / "tokenizer.model").is_file():
        pieces = _from_sentencepiece(folder / "tokenizer.model", vocab_size)
    elif (folder / "tokenizer.json").is_file():
        pieces = _from_tokenizer_json(folder / "tokenizer.json", vocab_size, config)
    else:
        raise ConversionError(f"tokenizer.model is missing in {folder} (and there is no tokenizer.json)",
                              "Gemma checkpoints ship a SentencePiece tokenizer.model; download it too.")
    tokens, scores, types = pieces.tokens, pieces.scores, pieces.types
    _apply_added_tokens(folder, config, tokens, scores, types)
    vocab = Vocab(tokens, scores, types, add_bos=_flag(config, "add_bos_token", True),
                  add_eos=_flag(config, "add_eos_token", False))
    vocab.special = _special_ids(pieces.ids, vocab, config, _read_json(folder / "special_tokens_map.json"))
    for sentinel in SENTINELS:
        token = vocab.id_of(sentinel.text)
        if token is not None:
            vocab.types[token] = TokenType.CONTROL
    return vocab


def _flag(config: dict[str, Any], key: str, default: bool) -> bool:
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):  # "false" would be true to bool()
        raise bad_field(key, value, "not true or false", "tokenizer_config.json")
    return value


def _read_json(path: Path) -> dict[str, Any]:
    """An optional tokenizer file: {} where the checkpoint has none."""
    return read_json(path) if path.is_file() else {}


def _apply_added_tokens(folder: Path, config: dict[str, Any], tokens: list[bytes], scores: list[float],
                        types: list[TokenType]) -> None:
    size = len(tokens)
    for content, value in _read_json(folder / "added_tokens.json").items():
        token = token_id(show(content), value, "added_tokens.json")
        if token < size:
            tokens[token], scores[token], types[token] = content.encode("utf-8"), -1000.0, TokenType.USER_DEFINED
    where = "tokenizer_config.json"
    for key, data in section("added_tokens_decoder", config.get("added_tokens_decoder"), where).items():
        if not (key.isascii() and key.isdigit() and len(key) <= 10):
            raise bad_field("added_tokens_decoder", key, "not a token id", where)
        token = token_id(f"added_tokens_decoder {show(key)}", int(key), where)
        if not isinstance(data, dict):
            raise bad_field(f"added_tokens_decoder {show(key)}", data, "not an object", where)
        content = text(f"added_tokens_decoder {show(key)} content", data.get("content"), where)
        if token >= size:
            continue
        if data.get("special") or looks_special(content):
            types[token] = TokenType.CONTROL
        else:
            content = content.replace("\u2581", " ")  # llama.cpp pre-normalizes user-defined spaces
            types[token] = TokenType.USER_DEFINED
        scores[token], tokens[token] = -1000.0, content.encode("utf-8")


def _special_ids(fallback: dict[str, int], vocab: Vocab, config: dict[str, Any],
                 special_map: dict[str, Any]) -> dict[str, int]:
    special = {}
    for name in ("bos", "eos", "unk", "pad"):
        text = _token_content(config.get(f"{name}_token")) or _token_content(special_map.get(f"{name}_token"))
        token = vocab.id_of(text) if text else None
        if token is None:
            token = fallback.get(name)
        if token is not None:
            special[name] = token
    for sentinel in KEYED:
        token = vocab.id_of(sentinel.text) if sentinel.sentinel else None
        if token is not None:
            special[sentinel.name] = token
    return special


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
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
