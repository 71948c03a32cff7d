"""Checkpoints in Jlama's quantized layout, written here from Jlama's Java sources (an independent
implementation of the format cg reads):

- Q4ByteBufferTensor.processBlock: per block of 32, max = the value of largest magnitude (first
  one, `absv > amax`, amax from Float.MIN_VALUE), scale = max / -8f, iscale = 1 / scale (0 for a
  zero scale), nibble = min(15, (byte)(v * iscale + 8.5f)); byte j = nibble j | nibble (j+16) << 4;
- Q8ByteBufferTensor.processBlock: max = largest |v|, iscale = -128f / max, scale = 1 / iscale,
  q = (byte) min(127, Math.round(v * iscale));
- SafeTensorSupport.quantizeModel: every tensor but norms (name contains "norm") and those whose
  first dimension is 1 is quantized; W is written, then W.qb (its F32 scales); the header is
  Jackson's compact JSON of {dtype, shape, data_offsets}, no __metadata__, no padding; config.json
  and tokenizer.json are copied, no tokenizer.model;
- SafeTensorSplitter: model-%05d-of-%05d.safetensor (no trailing "s") and model.safetensors.index.json.

Arithmetic in float32, as Java does it.
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np

F32_MIN = np.float32(1.4e-45)  # Java's Float.MIN_VALUE


def _block_max(blocks: np.ndarray, signed: bool) -> np.ndarray:
    magnitude = np.abs(blocks)
    index = magnitude.argmax(axis=1)  # the first of equal maxima, like `absv > amax`
    chosen = blocks[np.arange(len(blocks)), index] if signed else magnitude[np.arange(len(blocks)), index]
    return np.where(magnitude.max(axis=1) > F32_MIN, chosen, F32_MIN).astype(np.float32)


def quantize_q4(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(packed nibbles [R, C/2] uint8, scales [R, C/32] float32) of a float32 [R, C] (or [C]) tensor."""
    shape = values.shape
    blocks = values.astype(np.float32).reshape(-1, 32)
    scale = (_block_max(blocks, signed=True) / np.float32(-8)).astype(np.float32)
    with np.errstate(divide="ignore"):
        iscale = np.where(scale != 0, np.float32(1) / scale, np.float32(0)).astype(np.float32)
    f = (blocks * iscale[:, None]).astype(np.float32) + np.float32(8.5)
    q = np.minimum(15, np.trunc(f).astype(np.int32)).astype(np.uint8)
    packed = q[:, :16] | (q[:, 16:] << 4)
    return packed.reshape(*shape[:-1], shape[-1] // 2), scale.reshape(*shape[:-1], shape[-1] // 32)


def quantize_i8(values: np.ndarray, block: int = 32) -> tuple[np.ndarray, np.ndarray]:
    shape = values.shape
    blocks = values.astype(np.float32).reshape(-1, block)
    iscale = (np.float32(-128) / _block_max(blocks, signed=False)).astype(np.float32)
    scale = np.where(iscale != 0, np.float32(1) / iscale, np.float32(0)).astype(np.float32)
    f = (blocks * iscale[:, None]).astype(np.float32)
    q = np.minimum(127, np.floor(f.astype(np.float64) + 0.5)).astype(np.int8)  # Math.round: ties up
    return q.reshape(shape), scale.reshape(*shape[:-1], shape[-1] // block)


def dequantize_q4(packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    blocks = packed.reshape(-1, 16)
    q = np.concatenate([blocks & 0x0F, blocks >> 4], axis=1).astype(np.float32) - 8
    return (q * scales.reshape(-1, 1)).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def _quantized(name: str, shape: tuple[int, ...], old_layout: bool) -> bool:
    if "norm" in name:
        return old_layout  # Jlama before 2024-10 quantized 1-D norms too
    return shape[0] != 1


def write(source: Path, folder: Path, *, kind: str = "Q4", shards: int = 1, old_layout: bool = False,
          i8_block: int = 32) -> Path:
    """source: a float checkpoint with tokenizer.json (and tokenizer_config.json) beside it."""
    folder.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(source / name, folder / name)
    (folder / "README.md").write_text("Quantized Version of a tiny CodeGemma, optimized for use with Jlama\n")
    tensors = load_float_safetensors(source / "model.safetensors")
    entries: list[tuple[str, str, tuple[int, ...], bytes]] = []
    for name, value in tensors.items():
        if _quantized(name, value.shape, old_layout):
            if kind == "Q4":
                data, scales = quantize_q4(value)
            else:
                data, scales = quantize_i8(value, i8_block)
            entries.append((name, kind, value.shape, data.tobytes()))
            entries.append((name + ".qb", "F32", scales.shape, scales.astype("<f4").tobytes()))
        else:
            entries.append((name, "F32", value.shape, value.astype("<f4").tobytes()))
    if shards == 1:
        _write_file(folder / "model.safetensors", entries)
        return folder
    # Every tensor's scales go in the next chunk: a .qb never sits beside its W.
    chunks: list[list[tuple[str, str, tuple[int, ...], bytes]]] = [[] for _ in range(shards)]
    for i, entry in enumerate(entries):
        chunks[(i // 2 + (i % 2)) % shards].append(entry)
    weight_map = {}
    for n, chunk in enumerate(chunks, start=1):
        name = f"model-{n:05d}-of-{shards:05d}.safetensor"
        _write_file(folder / name, chunk)
        weight_map |= {entry[0]: name for entry in chunk}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def load_float_safetensors(path: Path) -> dict[str, np.ndarray]:
    """F32 / BF16 tensors as float32 (bf16 is the top half of a float32)."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        data = raw[8 + size + start:8 + size + end]
        if info["dtype"] == "BF16":
            value = (np.frombuffer(data, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            value = np.frombuffer(data, "<f4")
        out[name] = value.reshape(info["shape"])
    return out


def _write_file(path: Path, entries: list[tuple[str, str, tuple[int, ...], bytes]]) -> None:
    header, offset = {}, 0
    for name, dtype, shape, data in entries:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, _, _, data in entries:
            f.write(data)
