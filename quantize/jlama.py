"""Jlama's quantized safetensors (the format of `tjake/codegemma-2b-JQ4` and other Jlama repos).

From Jlama's sources (SafeTensorSupport.quantizeModel, Q4ByteBufferTensor, Q8ByteBufferTensor):
- a quantized tensor W has dtype "Q4" or "I8" and its logical shape [R, C]; its scales are a
  separate F32 tensor "W.qb" of shape [R, C / block] (which may sit in another shard);
- Q4: R*C/2 bytes, blocks of 32 along the last dim, scale = (signed value of largest magnitude)
  / -8, nibble = min(15, trunc(v / scale + 8.5)); element j of a block in the low nibble of byte
  j, element j+16 in its high nibble; value = (nibble - 8) * scale. This is ggml's Q4_0 block
  (quantize_row_q4_0_ref) exactly, except that Q4_0 keeps the scale as f16;
- I8: one int8 per element, value = q * scale; the block size differs between Jlama versions
  (32, 256), so it is read off the scales' shape;
- norms stay in the source dtype; Jlama before 2024-10 could also quantize 1-D norms to Q4
  (scales [C / 32]): those are dequantized.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from .errors import ConversionError

if TYPE_CHECKING:
    import numpy as np

    from .tensors import TensorEntry

Q4_BLOCK = 32
Q4_0_BLOCK_BYTES = 2 + Q4_BLOCK // 2  # ggml's block_q4_0: an f16 scale, then 16 bytes of nibbles
SCALES_SUFFIX = ".qb"


def block_size(entry: TensorEntry) -> int:
    """Values per scale: 32 for Q4 (link_scales checks it), 32 or 256 for I8."""
    assert entry.scales is not None
    return entry.columns // max(1, entry.scales.columns)


def link_scales(tensors: dict[str, TensorEntry]) -> dict[str, TensorEntry]:
    """Attach each quantized tensor's W.qb scales to it; return the model's tensors alone."""
    import dataclasses

    out = {}
    for name, entry in tensors.items():
        if name.endswith(SCALES_SUFFIX):
            if name[: -len(SCALES_SUFFIX)] not in tensors:
                raise ConversionError(f"scales {name} have no tensor {name[: -len(SCALES_SUFFIX)]}",
                                      "The Jlama checkpoint is incomplete; download it again.")
            continue
        if entry.dtype in ("Q4", "I8"):
            scales = tensors.get(name + SCALES_SUFFIX)
            if scales is None:
                raise ConversionError(f"{entry.dtype} tensor {name} has no {name}{SCALES_SUFFIX} scales",
                                      "The Jlama checkpoint is incomplete (every shard is needed); download it again.")
            blocks = scales.columns
            if (scales.dtype != "F32" or scales.shape[:-1] != entry.shape[:-1] or not blocks
                    or entry.columns % blocks or (entry.dtype == "Q4" and entry.columns // blocks != Q4_BLOCK)):
                raise ConversionError(f"{name}{SCALES_SUFFIX} has shape {list(scales.shape)} ({scales.dtype}), which "
                                      f"does not fit {name} {list(entry.shape)}", "Download the checkpoint again.")
            out[name] = dataclasses.replace(entry, scales=scales)
        else:
            out[name] = entry
    return out


def _row_blocks(entry: TensorEntry, rows_per_step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(quantized bytes [rows, bytes per row], scales [rows, blocks]) for a few rows at a time."""
    import numpy as np

    assert entry.scales is not None
    n_rows = max(1, entry.n_elements // entry.columns)
    row_bytes = entry.columns // 2 if entry.dtype == "Q4" else entry.columns
    blocks = entry.scales.columns
    with open(entry.file, "rb") as data, open(entry.scales.file, "rb") as scales:
        for start in range(0, n_rows, rows_per_step):
            count = min(n_rows, start + rows_per_step) - start
            data.seek(entry.offset + start * row_bytes)
            q = np.fromfile(data, dtype=np.uint8 if entry.dtype == "Q4" else np.int8, count=count * row_bytes)
            scales.seek(entry.scales.offset + start * blocks * 4)
            s = np.fromfile(scales, dtype="<f4", count=count * blocks)
            if q.size != count * row_bytes or s.size != count * blocks:
                raise ConversionError(f"{entry.file.name} ended inside tensor {entry.name}",
                                      "Download it again (an interrupted download leaves a short file).")
            yield q.reshape(count, row_bytes), s.reshape(count, blocks)


def dequantized_rows(entry: TensorEntry, chunk_bytes: int) -> Iterator[np.ndarray]:
    """The tensor's exact values (q * scale in f32), a block of rows at a time."""
    import numpy as np

    columns, bs = entry.columns, block_size(entry)
    for q, s in _row_blocks(entry, max(1, chunk_bytes // (columns * 4))):
        if entry.dtype == "Q4":
            blocks = q.reshape(q.shape[0], -1, Q4_BLOCK // 2)
            nibbles = np.concatenate([blocks & 0x0F, blocks >> 4], axis=-1).astype(np.float32) - 8
            values = nibbles * s[..., None]
        else:
            values = q.reshape(q.shape[0], -1, bs).astype(np.float32) * s[..., None]
        values = values.reshape(q.shape[0], columns).astype(np.float32)
        yield values.reshape(-1, *entry.shape[1:]) if len(entry.shape) > 1 else values.reshape(-1)


def q4_0_blocks(entry: TensorEntry, chunk_bytes: int) -> Iterator[tuple[np.ndarray, int]]:
    """ggml Q4_0 blocks (f16 scale, then the 16 nibble bytes as they are) for a block of rows at a
    time, and how many of their scales f16 had to round (0 when the f32 scales came from bf16
    weights: then the copy is lossless)."""
    import numpy as np

    for q, s in _row_blocks(entry, max(1, chunk_bytes // entry.columns)):
        half = s.reshape(-1).astype(np.float16)
        rounded = int(np.count_nonzero(half.astype(np.float32) != s.reshape(-1)))
        blocks = np.concatenate([half.view(np.uint8).reshape(-1, 2), q.reshape(-1, Q4_BLOCK // 2)], axis=1)
        yield blocks.reshape(-1), rounded
