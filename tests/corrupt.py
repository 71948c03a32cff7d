"""Breaking one thing in a copy of a checkpoint: its config.json, a safetensors header, a raw file.

Shared by the hostile-checkpoint tests of plain (tests/test_quantize_hostile.py) and Jlama
(tests/test_jlama.py) checkpoints: both go through the same header and config checks.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

Header = dict[str, Any]


def edit_config(folder: Path, **changes: Any) -> None:
    """Set config.json keys (a value of ... removes the key); NaN and Infinity written as JSON allows."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def read_header(path: Path) -> tuple[Header, bytes]:
    """A safetensors file's header and its data (everything after the header)."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + size]), data[8 + size:]


def write_raw(path: Path, raw_header: bytes, body: bytes) -> None:
    path.write_bytes(struct.pack("<Q", len(raw_header)) + raw_header + body)


def edit_header(path: Path, change: Callable[[Header], None]) -> None:
    """Rewrite a safetensors file's JSON header in place; the data stays byte for byte."""
    header, body = read_header(path)
    change(header)
    write_raw(path, json.dumps(header).encode(), body)


def two_same_size(header: Header, dtype: str | None = None) -> tuple[str, str]:
    """Two tensors of one byte size (and dtype, if given): one can be pointed at the other's bytes."""
    by_size: dict[int, str] = {}
    for name, info in sorted(header.items()):
        if name == "__metadata__" or (dtype and info["dtype"] != dtype):
            continue
        start, end = info["data_offsets"]
        if end - start in by_size:
            return by_size[end - start], name
        by_size[end - start] = name
    raise AssertionError("no two tensors of one size")
