"""A Hugging Face checkpoint folder read lazily: config, and safetensors tensors in row blocks.

safetensors is parsed here directly (an 8-byte header length, a JSON header, raw data) so that
bf16 needs no torch, a truncated file is caught before any output is written, and Jlama's
quantized dtypes (Q4, I8, which no other reader takes) can be read: see jlama.py.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import jlama
from .errors import ConversionError

if TYPE_CHECKING:
    import numpy as np

_DTYPES = {"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2), "F64": ("<f8", 8)}
CHUNK_BYTES = 64 * 2**20  # rows converted at a time: peak memory stays near this, not the tensor


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors dtype: F32, F16, BF16; or Jlama's Q4, I8
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset of the data in file
    nbytes: int
    scales: TensorEntry | None = None  # Jlama's W.qb (F32) for a Q4 / I8 tensor

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def columns(self) -> int:
        """The last dimension: values per row (1 for a scalar)."""
        return self.shape[-1] if self.shape else 1

    def rows(self) -> Iterator[np.ndarray]:
        """The tensor as float32 blocks of whole rows, read block by block.

        Plain reads, not a memory map: mapped pages count toward the process's resident memory
        until unmapped, so a mapped 2 GB embedding would show as 2 GB of RSS.
        """
        import numpy as np

        if self.dtype in jlama.QUANTIZED:
            yield from jlama.dequantized_rows(self, CHUNK_BYTES)
            return
        np_dtype, size = _DTYPES[self.dtype]
        row = self.columns
        n_rows = max(1, self.n_elements // row)
        step = max(1, CHUNK_BYTES // (row * size))
        with open(self.file, "rb") as f:
            for start in range(0, n_rows, step):
                count = (min(n_rows, start + step) - start) * row
                f.seek(self.offset + start * row * size)
                block = np.fromfile(f, dtype=np_dtype, count=count)
                if block.size != count:
                    raise ConversionError(f"{self.file.name} ended inside tensor {self.name}",
                                          "Download it again (an interrupted download leaves a short file).")
                block = _to_f32(block, self.dtype)
                yield block.reshape(-1, *self.shape[1:]) if len(self.shape) > 1 else block


def _to_f32(block: np.ndarray, dtype: str) -> np.ndarray:
    import numpy as np

    if dtype == "BF16":
        # bf16 is the top half of an IEEE float32.
        return (block.astype(np.uint32) << 16).view(np.float32)
    return block.astype(np.float32)


@dataclass
class Checkpoint:
    folder: Path
    config: dict[str, Any]
    tensors: dict[str, TensorEntry]

    @property
    def jlama(self) -> str | None:
        """"Q4" or "I8" for a Jlama-quantized checkpoint, else None."""
        kinds = {t.dtype for t in self.tensors.values() if t.dtype in jlama.QUANTIZED}
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
        if dtype not in _DTYPES and dtype not in jlama.QUANTIZED:
            raise ConversionError(f"tensor {name} in {path.name} has unsupported dtype {dtype}")
        n = math.prod(shape)
        expected = jlama.data_bytes(dtype, n) if dtype in jlama.QUANTIZED else n * _DTYPES[dtype][1]
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
