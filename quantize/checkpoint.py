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
from .config import bad_field, show, text
from .errors import ConversionError
from .readers import READERS
from .tensors import TensorEntry

__all__ = ["Checkpoint", "TensorEntry", "open_checkpoint", "read_header", "read_json"]

# Gemma's tokenizer.json, the largest JSON file of a checkpoint, is 17-33 MB.
MAX_JSON_BYTES = 256 * 2**20

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
        archs = self.config.get("architectures")
        if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
            raise bad_field("architectures", archs, "not a list of names")
        if archs:
            return str(archs[0])
        if self.config.get("model_type") is None:
            raise ConversionError("config.json has no architectures (nor a model_type)",
                                  "The checkpoint's config.json is incomplete; download it again.")
        return text("model_type", self.config["model_type"])

    @property
    def name_or_path(self) -> str | None:
        """The model's hub name as config.json records it (the GGUF's general.name)."""
        value = self.config.get("_name_or_path")
        return None if value is None else text("_name_or_path", value)


def open_checkpoint(folder: Path | str) -> Checkpoint:
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"{folder} is not a folder", "Pass the folder holding config.json and *.safetensors.")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"config.json is missing in {folder}", "Download the whole checkpoint (cg download).")
    config = read_json(config_path)
    tensors: dict[str, TensorEntry] = {}
    for path in _weight_files(folder):
        for entry in read_header(path):
            if entry.name in tensors:
                raise ConversionError(f"tensor {show(entry.name, 100)} is in both {tensors[entry.name].file.name} "
                                      f"and {path.name}", "Remove the file that does not belong to the checkpoint.")
            tensors[entry.name] = entry
    return Checkpoint(folder, config, jlama.link_scales(tensors))


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = _shard_names(index)
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


def _shard_names(index: Path) -> list[str]:
    """The files an index's weight_map names: plain file names in its folder, never a path out of it."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise bad_field("weight_map", weight_map, "not an object of tensor names to files", index.name)
    for name in weight_map.values():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise bad_field("weight_map", name, "not the name of a file in the checkpoint folder", index.name)
    return sorted(set(weight_map.values()))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from the checkpoint, keys unique; anything else is a clear input error."""
    if path.stat().st_size > MAX_JSON_BYTES:  # read whole, so its size is the memory it takes
        raise ConversionError(f"{path} is {path.stat().st_size} bytes, more than a checkpoint's JSON file holds "
                              f"({MAX_JSON_BYTES >> 20} MiB at most)", "Download the checkpoint's JSON files again.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, _DuplicateKey) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else exc
        raise ConversionError(f"{path} is not valid JSON ({reason})",
                              "Download the checkpoint's JSON files again.") from None
    if not isinstance(data, dict):
        raise ConversionError(f"{path} is not a JSON object", "Download the checkpoint's JSON files again.")
    return data


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of two equal keys; which one the writer meant would be a guess.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"it names {show(key, 100)} twice")
        out[key] = value
    return out


def read_header(path: Path) -> list[TensorEntry]:
    """The tensors of a safetensors file, every header field checked against the file before any
    data is read: dtype, shape, offsets (ints, in order, inside the file, not overlapping, the
    bytes the dtype and shape need)."""
    if not path.is_file():  # a FIFO would block the read below forever
        raise ConversionError(f"{path.name} is not a regular file", "Replace it with the downloaded weights.")
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
        header = json.loads(raw_header, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise ConversionError(f"the header of {path.name}: {exc}", "Download the file again.") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _truncated(path) from None
    if not isinstance(header, dict):
        raise _truncated(path)
    base = 8 + header_len
    entries = [_entry(path, name, info, base) for name, info in header.items() if name != "__metadata__"]
    _check_layout(path, entries, size)
    return entries


def _entry(path: Path, name: str, info: Any, base: int) -> TensorEntry:
    where = f"tensor {show(name, 100)} in {path.name}"
    if not isinstance(info, dict):
        raise ConversionError(f"{where} has a malformed header entry {show(info)}", "Download the file again.")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in READERS:
        raise ConversionError(f"{where} has unsupported dtype {show(dtype)}",
                              "cg reads " + ", ".join(READERS) + " tensors.")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise ConversionError(f"{where} has shape {show(shape)}, not a list of sizes", "Download the file again.")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise ConversionError(f"{where} has data_offsets {show(offsets)}, not [start, end] with 0 <= start <= end",
                              "Download the file again.")
    (start, end), expected = offsets, READERS[dtype].data_bytes(math.prod(shape))
    if end - start != expected:
        raise ConversionError(f"{where} has data_offsets {offsets}: {end - start} bytes, its {dtype} shape "
                              f"{shape} needs {expected}", "Download the file again.")
    return TensorEntry(name, dtype, tuple(shape), path, base + start, end - start)


def _is_int(value: Any) -> bool:
    return type(value) is int  # JSON's true and 2.0 are no offsets


def _check_layout(path: Path, entries: list[TensorEntry], size: int) -> None:
    """Each tensor's bytes inside the file and its own: two tensors on one range would be read as
    two weights from the same bytes."""
    end, last = 0, None
    for entry in sorted(entries, key=lambda e: (e.offset, e.nbytes)):
        if last is not None and entry.offset < end:
            raise ConversionError(f"tensors {show(last.name, 100)} and {show(entry.name, 100)} in {path.name} "
                                  "overlap (their data_offsets share bytes)", "Download the file again.")
        if entry.offset + entry.nbytes > size:
            raise _truncated(path, f" (tensor {show(entry.name, 100)}'s data_offsets end at byte "
                                   f"{entry.offset + entry.nbytes} of {size})")
        if entry.offset + entry.nbytes >= end:
            end, last = entry.offset + entry.nbytes, entry


def _truncated(path: Path, detail: str = "") -> ConversionError:
    return ConversionError(f"{path.name} is truncated or not a safetensors file{detail}",
                           "Download it again (an interrupted download leaves a short file).")
