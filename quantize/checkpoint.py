"""A Hugging Face checkpoint folder read lazily: config, and safetensors tensors in row blocks.

safetensors is parsed here directly (an 8-byte header length, a JSON header, raw data) so that
bf16 needs no torch, a truncated file is caught before any output is written, and Jlama's
quantized dtypes (Q4, I8, which no other reader takes) can be read: see jlama.py.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import jlama
from .errors import ConversionError
from .readers import READERS
from .tensors import TensorEntry

__all__ = ["Checkpoint", "TensorEntry", "open_checkpoint", "read_header", "read_json"]

@dataclass
class Checkpoint:
    folder: Path
    config: dict[str, Any]
    tensors: dict[str, TensorEntry]

    @property
    def jlama(self) -> str | None:
        """"Q4" or "I8" for a Jlama-quantized checkpoint, else None."""
        kinds = {t.dtype for t in self.tensors.values() if READERS[t.dtype].quantized}
        return "Q4" if "Q4" in kinds else kinds.pop() if kinds else None

    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        return str(archs[0] if archs else self.config.get("model_type", "unknown"))


def open_checkpoint(folder: Path | str) -> Checkpoint:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder} is not a folder", "Pass the folder holding config.json and *.safetensors.")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"config.json is missing in {folder}", "Download the whole checkpoint (cg download).")
    config = read_json(config_path)
    files = _weight_files(folder)
    tensors: dict[str, TensorEntry] = {}
    for path in files:
        for entry in read_header(path):
            tensors[entry.name] = entry
    return Checkpoint(folder, config, jlama.link_scales(tensors))


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map", {})
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise ConversionError(f"shard {missing[0]} listed in model.safetensors.index.json is missing",
                                  "Download the checkpoint again; every shard is needed.")
        return [folder / n for n in names]
    files = sorted([*folder.glob("*.safetensors"), *folder.glob("*.safetensor")])  # Jlama's splitter drops the s
    if not files:
        hint = "cg converts safetensors only; PyTorch .bin checkpoints are not supported."
        raise ConversionError(f"no *.safetensors weights in {folder}", hint)
    return files


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from the checkpoint; anything else is a clear input error."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{path} is not valid JSON ({exc})",
                              "Download the checkpoint's JSON files again.") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path} is not a JSON object", "Download the checkpoint's JSON files again.")
    return data


def read_header(path: Path) -> list[TensorEntry]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise _truncated(path)
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8 or header_len > 100 * 2**20:
            raise _truncated(path)
        raw_header = f.read(header_len)
    try:
        header = json.loads(raw_header)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise _truncated(path) from None
    if not isinstance(header, dict):
        raise _truncated(path)
    base = 8 + header_len
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ConversionError(f"tensor {name} in {path.name} has a malformed header entry",
                                  "Download the file again.") from None
        if dtype not in READERS:
            raise ConversionError(f"tensor {name} in {path.name} has unsupported dtype {dtype}")
        expected = READERS[dtype].data_bytes(math.prod(shape))
        if end - start != expected:
            raise ConversionError(f"tensor {name} in {path.name} holds {end - start} bytes, its {dtype} shape "
                                  f"{list(shape)} needs {expected}", "Download the file again.")
        if base + end > size:
            raise _truncated(path)
        entries.append(TensorEntry(name, dtype, shape, path, base + start, end - start))
    return entries


def _truncated(path: Path) -> ConversionError:
    return ConversionError(f"{path.name} is truncated or not a safetensors file",
                           "Download it again (an interrupted download leaves a short file).")
