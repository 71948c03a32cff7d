"""A GGUF file's metadata and vocabulary pieces, read straight from its header (no gguf-py, which
parses the whole vocabulary into numpy objects first).

Used to find special tokens by their exact piece: a GGUF from llama.cpp's converter may type
`<|file_separator|>` as a NORMAL token, and then tokenizing its text does not give its id back,
while the piece is right there in `tokenizer.ggml.tokens`.

Also checks a whole file before cg installs it (`check`): every key, every tensor's description,
and that each tensor's data lies inside the file, so a truncated or crafted download is refused
with a reason instead of registered.

Format (GGUF v2/v3, little-endian): magic, version u32, tensor count u64, key-value count u64,
then per key a string key (u64 length + bytes), a u32 type and the value; arrays are an element
type u32, a count u64 and the elements. Then per tensor: a string name, n_dims u32, n_dims u64
sizes, a ggml type u32 and a u64 offset into the data section, which starts at the next multiple
of `general.alignment` (32 when absent).
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_STRING, _ARRAY = 8, 9
VERSIONS = (2, 3)
# llama.cpp reads no array of arrays at all; the reader allows a few levels (gguf-py writes
# them) and refuses deeper ones, which a walk could not finish (a crafted file nests thousands).
MAX_NESTING = 4
MAX_DIMS = 4  # GGML_MAX_DIMS
_DEFAULT_ALIGNMENT = 32
_ALIGNMENT_KEY = "general.alignment"
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
TOKENS_KEY = "tokenizer.ggml.tokens"


class GGUFHeaderError(ValueError):
    """Not a GGUF file cg can read the header of (truncated, another version, garbage)."""


@dataclass(frozen=True)
class _Value:
    key: str
    type: int
    offset: int  # where the value starts (for an array: its element type)


class GGUFHeader:
    """The key-value section of one GGUF file, walked lazily."""

    def __init__(self, data: bytes | mmap.mmap):
        self.data = data
        if data[:4] != b"GGUF":
            raise GGUFHeaderError("not a GGUF file")
        (version,) = self._unpack("<I", 4)
        if version not in VERSIONS:
            raise GGUFHeaderError(f"GGUF version {version} is not supported (cg reads versions 2 and 3)")
        self.n_tensors, self.n_kv = self._unpack("<QQ", 8)
        # Each key takes at least 12 bytes (an empty name and a type), each tensor 24.
        if 24 + 12 * self.n_kv + 24 * self.n_tensors > len(data):
            raise GGUFHeaderError(f"the header announces {self.n_kv} keys and {self.n_tensors} tensors, "
                                  f"more than a {len(data)}-byte file holds")

    def _unpack(self, fmt: str, offset: int) -> tuple[int, ...]:
        try:
            return struct.unpack_from(fmt, self.data, offset)
        except struct.error:
            raise GGUFHeaderError("the header is truncated") from None

    def _string(self, offset: int) -> tuple[bytes, int]:
        (n,) = self._unpack("<Q", offset)
        end = offset + 8 + n
        if end > len(self.data):
            raise GGUFHeaderError("the header is truncated")
        return bytes(self.data[offset + 8:end]), end

    def _skip(self, kind: int, offset: int, depth: int = 0) -> int:
        if kind == _STRING:
            return self._string(offset)[1]
        if kind == _ARRAY:
            if depth >= MAX_NESTING:
                raise GGUFHeaderError(f"arrays nested more than {MAX_NESTING} deep")
            element, count = self._unpack("<IQ", offset)
            offset += 12
            # The least each element takes: a count the rest of the file cannot hold is refused
            # before any walk (2**60 strings would otherwise be read one by one).
            least = _SIZES.get(element, 8 if element == _STRING else 12)
            if offset + count * least > len(self.data):
                raise GGUFHeaderError("the header is truncated")
            if element in _SIZES:
                return offset + count * _SIZES[element]
            for _ in range(count):
                offset = self._skip(element, offset, depth + 1)
            return offset
        if kind not in _SIZES:
            raise GGUFHeaderError(f"unknown value type {kind}")
        if offset + _SIZES[kind] > len(self.data):
            raise GGUFHeaderError("the header is truncated")
        return offset + _SIZES[kind]

    def values(self) -> Iterator[_Value]:
        for value, _end in self._walk():
            yield value

    def _walk(self) -> Iterator[tuple[_Value, int]]:
        """Each key-value and the offset where the next one starts."""
        offset = 24
        for _ in range(self.n_kv):
            key, offset = self._string(offset)
            (kind,) = self._unpack("<I", offset)
            value = _Value(key.decode("utf-8", "replace"), kind, offset + 4)
            offset = self._skip(kind, value.offset)
            yield value, offset

    def check(self) -> None:
        """Every key and tensor description reads, and every tensor's data lies inside the file
        (what llama.cpp checks when it loads the file; a truncated download fails here)."""
        offset, alignment = 24, _DEFAULT_ALIGNMENT
        for value, offset in self._walk():  # noqa: B007 - the last offset is where tensors start
            if value.key == _ALIGNMENT_KEY:
                alignment = _alignment(self, value)
            if value.type == _ARRAY and self._unpack("<I", value.offset)[0] == _ARRAY:
                raise GGUFHeaderError(f"key {value.key!r} is an array of arrays, which llama.cpp does not read")
        _check_tensors(self, offset, alignment)

    def scalars(self) -> dict[str, int | float | bool | str]:
        """Every scalar value by key (arrays left out)."""
        out: dict[str, int | float | bool | str] = {}
        for v in self.values():
            if v.type == _STRING:
                out[v.key] = self._string(v.offset)[0].decode("utf-8", "replace")
            elif v.type in _FORMATS:
                out[v.key] = self._unpack(_FORMATS[v.type], v.offset)[0]
        return out

    def find_pieces(self, texts: list[str]) -> dict[str, int]:
        """The ids of the vocabulary pieces exactly equal to each text (those found)."""
        array = next((v for v in self.values() if v.key == TOKENS_KEY), None)
        if array is None or array.type != _ARRAY:
            return {}
        element, count = self._unpack("<IQ", array.offset)
        if element != _STRING:
            return {}
        start = array.offset + 12
        end = self._array_end_bound(start)
        found = {}
        for text in texts:
            raw = text.encode("utf-8")
            needle = struct.pack("<Q", len(raw)) + raw
            hit = self.data.find(needle, start, end)
            while hit >= 0:  # a hit that is not an entry's start (or lies past the array) is no piece
                index = self._index_at(start, count, hit)
                if index is not None:
                    found[text] = index
                    break
                hit = self.data.find(needle, hit + 1, end)
        return found

    def _array_end_bound(self, start: int) -> int:
        """Where the search for a piece may stop: the next tokenizer key's name lies past the
        array (no piece holds that text), so absent pieces cost a scan of the vocabulary, not of
        the whole model file. Without such a key: the end of the file."""
        hint = self.data.find(b"tokenizer.ggml.", start)
        return hint if hint >= 0 else len(self.data)

    def _index_at(self, start: int, count: int, target: int) -> int | None:
        """The index of the array entry starting at byte `target`, walking entries up to it."""
        offset = start
        for i in range(count):
            if offset == target:
                return i
            if offset > target:
                return None
            offset += 8 + self._unpack("<Q", offset)[0]
        return None


def _alignment(header: GGUFHeader, value: _Value) -> int:
    if value.type != 4:  # u32, as the format says
        raise GGUFHeaderError(f"{_ALIGNMENT_KEY} is not a u32")
    (alignment,) = header._unpack("<I", value.offset)
    if alignment == 0 or alignment & (alignment - 1):
        raise GGUFHeaderError(f"{_ALIGNMENT_KEY} is {alignment}, not a power of two")
    return int(alignment)


def _check_tensors(header: GGUFHeader, offset: int, alignment: int) -> None:
    """The tensor descriptions from offset on; each tensor's data must lie inside the file."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    sizes = {t.value: size for t, size in GGML_QUANT_SIZES.items() if isinstance(t, GGMLQuantizationType)}
    tensors = []
    for _ in range(header.n_tensors):
        name, offset = header._string(offset)
        (n_dims,) = header._unpack("<I", offset)
        if n_dims > MAX_DIMS:
            raise GGUFHeaderError(f"tensor {_name(name)} has {n_dims} dimensions (at most {MAX_DIMS})")
        dims = header._unpack(f"<{n_dims}Q", offset + 4)
        kind, start = header._unpack("<IQ", offset + 4 + 8 * n_dims)
        offset += 16 + 8 * n_dims
        if kind not in sizes:
            raise GGUFHeaderError(f"tensor {_name(name)} has an unknown type {kind}")
        tensors.append((name, dims, sizes[kind], start))
    data_start = -(-offset // alignment) * alignment
    end = len(header.data)
    for name, dims, (block, size), start in tensors:
        elements = 1
        for d in dims:
            elements *= d
        if dims and dims[0] % block:
            raise GGUFHeaderError(f"tensor {_name(name)}'s rows do not fill whole blocks of {block}")
        if data_start + start + elements // block * size > end:
            raise GGUFHeaderError(f"tensor {_name(name)}'s data lies past the end of the file ({end} bytes): "
                                  "the file is truncated")


def _name(raw: bytes) -> str:
    return repr(raw[:80].decode("utf-8", "replace"))


def check_file(path: Path | str) -> None:
    """Raise GGUFHeaderError unless the file at path is a whole GGUF llama.cpp can read."""
    header, data = open_header(path)
    try:
        header.check()
    finally:
        data.close()


def open_header(path: Path | str) -> tuple[GGUFHeader, mmap.mmap]:
    """The header of the GGUF at path and the map it reads (close it when done)."""
    with open(path, "rb") as f:
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:
            raise GGUFHeaderError("the file is empty") from None
    try:
        return GGUFHeader(data), data
    except GGUFHeaderError:
        data.close()
        raise
